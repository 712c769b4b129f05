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


def _placeholder_segmentation(data_shape) -> np.ndarray:
    """(1, *spatial) zeros as a broadcast view: no memory, no file."""
    return np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data_shape[1:]))


class nnUNetDatasetBlosc2ImagesOnly(nnUNetDatasetBlosc2):
    def load_case(self, identifier):
        data = blosc2.open(urlpath=join(self.source_folder, identifier + '.b2nd'), mode='r',
                           dparams={'nthreads': 1}, **self.mmap_kwargs)
        properties = load_pickle(join(self.source_folder, identifier + '.pkl'))
        return data, _placeholder_segmentation(data.shape), None, properties


class nnUNetDatasetNumpyImagesOnly(nnUNetDatasetNumpy):
    def load_case(self, identifier):
        npy_file = join(self.source_folder, identifier + '.npy')
        data = np.load(npy_file, mmap_mode='r') if isfile(npy_file) else \
            np.load(join(self.source_folder, identifier + '.npz'))['data']
        properties = load_pickle(join(self.source_folder, identifier + '.pkl'))
        return data, _placeholder_segmentation(data.shape), None, properties


_IMAGES_ONLY = {nnUNetDatasetBlosc2: nnUNetDatasetBlosc2ImagesOnly, nnUNetDatasetNumpy: nnUNetDatasetNumpyImagesOnly}


def images_only(dataset_class: Type[nnUNetBaseDataset]) -> Type[nnUNetBaseDataset]:
    """The images-only variant of the dataset class that nnU-Net inferred for a preprocessed folder."""
    if dataset_class in _IMAGES_ONLY.values():
        return dataset_class
    if dataset_class not in _IMAGES_ONLY:
        raise TypeError(f"No images-only loader for {dataset_class.__name__}; supported: "
                        f"{', '.join(c.__name__ for c in _IMAGES_ONLY)}")
    return _IMAGES_ONLY[dataset_class]
