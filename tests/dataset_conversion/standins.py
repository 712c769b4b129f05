"""Small stand-ins of the 3D datasets users bring, built from the phantom: no download needed.

- BraTS 2021 after nnU-Net's Dataset137_BraTS21 conversion: cases BraTS2021_xxxxx, channels T1/T1ce/T2/Flair,
  labels converted from BraTS's 0/1/2/4 by nnU-Net's own function, region-based dataset.json. The head fills the
  middle slices of a 155-slice volume, like a brain in a BraTS volume, so the paper's slices 70..100 cut through it.
- MSD Task01_BrainTumour as downloaded: 4D images, dataset.json with 'modality', 'training', 'test', for
  nnUNetv2_convert_MSD_dataset.
"""
import os

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, save_json

from nnunet_ddpm.dataset_conversion.synthetic_phantom import phantom_case

BRATS_SLICES, HEAD_SLICES, HEAD_START = 155, 56, 57  # head in slices 57..112 of 155


def _volume(array, path, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array, isVector=False)  # a 4D array is a 4D image, not vectors
    image.SetSpacing(spacing)
    sitk.WriteImage(image, path)


def brats_volume(index: int, in_plane: int, seed: int = 0):
    """(4 channels, 155, in_plane, in_plane) images and labels in the phantom's convention (1 oedema, 2 necrosis,
    3 enhancing)."""
    images, labels = phantom_case((HEAD_SLICES, in_plane, in_plane), 4, np.random.default_rng([seed, index]))
    full_images = np.zeros((4, BRATS_SLICES, in_plane, in_plane), np.float32)
    full_labels = np.zeros((BRATS_SLICES, in_plane, in_plane), np.uint8)
    full_images[:, HEAD_START:HEAD_START + HEAD_SLICES] = images
    full_labels[HEAD_START:HEAD_START + HEAD_SLICES] = labels
    return full_images, full_labels


def write_brats21_standin(raw_folder: str, dataset_id: int, num_patients: int = 6, in_plane: int = 40) -> str:
    """A BraTS 2021 dataset as nnU-Net's Dataset137_BraTS21 script writes it."""
    from nnunetv2.dataset_conversion.Dataset137_BraTS21 import copy_BraTS_segmentation_and_convert_labels_to_nnUNet
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    folder = join(raw_folder, f"Dataset{dataset_id:03d}_BraTS2021")
    # the labels as the BraTS site gives them (BraTS2021_xxxxx_seg.nii.gz), beside the raw folder
    download = join(os.path.dirname(os.path.abspath(raw_folder)), f"BraTS2021_download_{dataset_id}")
    for sub in ("imagesTr", "labelsTr"):
        maybe_mkdir_p(join(folder, sub))
    maybe_mkdir_p(download)
    to_brats = np.array([0, 2, 1, 4], np.uint8)  # phantom 1 oedema, 2 necrosis, 3 enhancing -> BraTS 2, 1, 4
    for i in range(num_patients):
        case = f"BraTS2021_{i:05d}"
        images, labels = brats_volume(i, in_plane)
        for c in range(4):
            _volume(images[c], join(folder, "imagesTr", f"{case}_{c:04d}.nii.gz"))
        _volume(to_brats[labels], join(download, f"{case}_seg.nii.gz"))
        copy_BraTS_segmentation_and_convert_labels_to_nnUNet(join(download, f"{case}_seg.nii.gz"),
                                                             join(folder, "labelsTr", f"{case}.nii.gz"))
    generate_dataset_json(folder, channel_names={0: 'T1', 1: 'T1ce', 2: 'T2', 3: 'Flair'},
                          labels={'background': 0, 'whole tumor': (1, 2, 3), 'tumor core': (2, 3),
                                  'enhancing tumor': (3,)},
                          num_training_cases=num_patients, file_ending='.nii.gz', regions_class_order=(1, 2, 3))
    return folder


def write_msd_task01_standin(parent: str, num_training: int = 4, num_test: int = 1, shape=(20, 32, 32)) -> str:
    """``Task01_BrainTumour`` as the Medical Segmentation Decathlon distributes it (4D NIfTI images)."""
    folder = join(parent, "Task01_BrainTumour")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        maybe_mkdir_p(join(folder, sub))
    for i in range(num_training + num_test):
        case = f"BRATS_{i + 1:03d}.nii.gz"
        images, labels = phantom_case(shape, 4, np.random.default_rng([1, i]))
        part = "Tr" if i < num_training else "Ts"
        _volume(images, join(folder, f"images{part}", case), (1.0, 1.0, 1.0, 1.0))  # 4D: channels slowest
        if part == "Tr":
            _volume(labels, join(folder, "labelsTr", case))
    save_json({"name": "BRATS", "tensorImageSize": "4D",
               "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
               "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
               "numTraining": num_training, "numTest": num_test,
               "training": [{"image": f"./imagesTr/BRATS_{i + 1:03d}.nii.gz",
                             "label": f"./labelsTr/BRATS_{i + 1:03d}.nii.gz"} for i in range(num_training)],
               "test": [f"./imagesTs/BRATS_{i + 1:03d}.nii.gz" for i in range(num_training, num_training + num_test)]},
              join(folder, "dataset.json"))
    assert os.path.isdir(folder)
    return folder


def write_tiny_raw_dataset(folder: str, volumes, labels, spacing=(1.0, 1.0, 1.0), dataset_json=None):
    """A raw dataset from arrays: volumes {case: (C, Z, Y, X)}, labels {case: (Z, Y, X)}."""
    for sub in ("imagesTr", "labelsTr"):
        maybe_mkdir_p(join(folder, sub))
    for case, images in volumes.items():
        for c, image in enumerate(images):
            _volume(image.astype(np.float32), join(folder, "imagesTr", f"{case}_{c:04d}.nii.gz"), spacing[::-1])
        _volume(labels[case].astype(np.uint8), join(folder, "labelsTr", f"{case}.nii.gz"), spacing[::-1])
    num_channels = len(next(iter(volumes.values())))
    save_json(dataset_json or {"channel_names": {str(c): f"ch{c}" for c in range(num_channels)},
                               "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": len(volumes),
                               "file_ending": ".nii.gz"}, join(folder, "dataset.json"))
    return folder
