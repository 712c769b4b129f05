"""Preprocessed nnU-Net datasets seen without their segmentations.

DDPM pretraining must never read labels (and unlabeled cases have none). These subclasses of nnU-Net's dataset
classes open only the image array and the properties file, and hand nnU-Net's data loader an all-zero placeholder
segmentation so that its cropping and spatial transforms run unchanged.
"""
from typing import Type

import blosc2
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_pickle
from nnunetv2.training.dataloading.nnunet_dataset import (nnUNetBaseDataset, nnUNetDatasetBlosc2,
                                                          nnUNetDatasetNumpy)


def _image_properties(folder: str, identifier: str) -> dict:
    """The case's properties without the label-derived foreground locations (unlabeled cases have none)."""
    properties = load_pickle(join(folder, identifier + '.pkl'))
    properties['class_locations'] = None
    return properties


def _placeholder_segmentation(data_shape) -> np.ndarray:
    """(1, *spatial) zeros as a broadcast view: no memory, no file."""
    return np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data_shape[1:]))


class nnUNetDatasetBlosc2ImagesOnly(nnUNetDatasetBlosc2):
    def load_case(self, identifier):
        data = blosc2.open(urlpath=join(self.source_folder, identifier + '.b2nd'), mode='r',
                           dparams={'nthreads': 1}, **self.mmap_kwargs)
        return data, _placeholder_segmentation(data.shape), None, _image_properties(self.source_folder, identifier)


class nnUNetDatasetNumpyImagesOnly(nnUNetDatasetNumpy):
    def load_case(self, identifier):
        npy_file = join(self.source_folder, identifier + '.npy')
        data = np.load(npy_file, mmap_mode='r') if isfile(npy_file) else \
            np.load(join(self.source_folder, identifier + '.npz'))['data']
        return data, _placeholder_segmentation(data.shape), None, _image_properties(self.source_folder, identifier)


_IMAGES_ONLY = {nnUNetDatasetBlosc2: nnUNetDatasetBlosc2ImagesOnly, nnUNetDatasetNumpy: nnUNetDatasetNumpyImagesOnly}


def images_only(dataset_class: Type[nnUNetBaseDataset]) -> Type[nnUNetBaseDataset]:
    """The images-only variant of the dataset class that nnU-Net inferred for a preprocessed folder."""
    if dataset_class in _IMAGES_ONLY.values():
        return dataset_class
    if dataset_class not in _IMAGES_ONLY:
        raise TypeError(f"No images-only loader for {dataset_class.__name__}; supported: "
                        f"{', '.join(c.__name__ for c in _IMAGES_ONLY)}")
    return _IMAGES_ONLY[dataset_class]


class CombinedImagesDataset:
    """Several images-only datasets as one (the labelled dataset's images and its unlabeled images).

    Offers what nnU-Net's data loader uses: ``identifiers`` and ``load_case``.
    """

    def __init__(self, datasets):
        self.datasets = list(datasets)
        self.identifiers = [i for d in self.datasets for i in d.identifiers]
        if len(set(self.identifiers)) != len(self.identifiers):
            raise ValueError("Case identifiers repeat across the combined datasets")
        self._dataset_of = {i: d for d in self.datasets for i in d.identifiers}

    def load_case(self, identifier):
        return self._dataset_of[identifier].load_case(identifier)
