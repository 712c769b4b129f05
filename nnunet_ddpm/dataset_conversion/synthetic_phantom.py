"""Synthetic multi-channel "tumour phantom" datasets in nnU-Net raw format, for the demo and the tests.

A brain-like ellipse (ellipsoid in 3D) with a tumour of nested sub-regions: oedema around an enhancing rim around a
necrotic core. Each channel shows the regions with a different contrast, with a smooth bias field and noise. Every
case varies in shape, position, size and contrast; everything is seeded.
"""
import os
from typing import Dict

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p, save_json

LABELS = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
# mean intensity of (brain, edema, necrosis, enhancing) per channel, loosely T1, T1c, FLAIR-like
CHANNEL_CONTRASTS = (
    ("T1", (1.0, 0.8, 0.5, 0.9)),
    ("T1c", (1.0, 0.9, 0.6, 2.0)),
    ("FLAIR", (1.0, 1.8, 1.2, 1.5)),
    ("T2", (1.0, 1.6, 2.0, 1.3)),
)


def phantom_case(shape, num_channels: int, rng: np.random.Generator):
    """One case: images (C, *shape) float32 and labels (*shape) uint8."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing='ij'))
    dims = (slice(None),) + (None,) * len(shape)

    def ellipsoid(center, radii):
        return (((grid - np.asarray(center)[dims]) / np.asarray(radii)[dims]) ** 2).sum(0)

    brain = ellipsoid(rng.uniform(-0.05, 0.05, len(shape)), rng.uniform(0.7, 0.9, len(shape))) <= 1
    tumour_center = rng.uniform(-0.35, 0.35, len(shape))
    size = rng.uniform(0.15, 0.4)
    tumour_radii = size * rng.uniform(0.8, 1.2, len(shape))
    distance = ellipsoid(tumour_center, tumour_radii)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(distance <= 2.2) & brain] = LABELS["edema"]
    labels[(distance <= 1.0) & brain] = LABELS["enhancing"]
    labels[(distance <= 0.45) & brain] = LABELS["necrosis"]
    bias = 1 + 0.15 * sum(rng.uniform(-1, 1) * grid[d] for d in range(len(shape)))
    images = np.zeros((num_channels, *shape), dtype=np.float32)
    for c in range(num_channels):
        _, contrast = CHANNEL_CONTRASTS[c % len(CHANNEL_CONTRASTS)]
        jitter = rng.uniform(0.85, 1.15, 4)
        image = np.where(brain, contrast[0] * jitter[0], 0.0)
        for label, value, j in zip((1, 2, 3), contrast[1:], jitter[1:]):
            image = np.where(labels == label, value * j, image)
        images[c] = image * bias + rng.normal(0, 0.08, shape) * brain
    return images, labels


def _write(array: np.ndarray, path: str, is_2d: bool):
    # 2D cases are stored as one-slice volumes with nnU-Net's large out-of-plane spacing
    image = sitk.GetImageFromArray(array[None] if is_2d else array)
    image.SetSpacing((1.0, 1.0, 999.0) if is_2d else (1.0, 1.0, 1.0))
    sitk.WriteImage(image, path)


def write_phantom_dataset(raw_folder: str, dataset_id: int, name: str = "Phantom", num_cases: int = 8,
                          size=(48, 48), num_channels: int = 3, seed: int = 0, num_test_cases: int = 0) -> str:
    """Write ``Dataset{id:03d}_{name}`` with ``num_cases`` labelled training cases (imagesTr/labelsTr) and
    ``num_test_cases`` held-out cases (imagesTs/labelsTs); returns the dataset folder."""
    is_2d = len(size) == 2
    folder = os.path.join(raw_folder, f"Dataset{dataset_id:03d}_{name}")
    rng = np.random.default_rng(seed)
    for part, count, offset in (("Tr", num_cases, 0), ("Ts", num_test_cases, num_cases)):
        if part == "Ts" and count == 0:
            continue
        maybe_mkdir_p(os.path.join(folder, f"images{part}"))
        maybe_mkdir_p(os.path.join(folder, f"labels{part}"))
        for i in range(offset, offset + count):
            images, labels = phantom_case(tuple(size), num_channels, rng)
            case = f"phantom_{i:03d}"
            for c in range(num_channels):
                _write(images[c], os.path.join(folder, f"images{part}", f"{case}_{c:04d}.nii.gz"), is_2d)
            _write(labels, os.path.join(folder, f"labels{part}", f"{case}.nii.gz"), is_2d)
    channel_names: Dict[str, str] = {str(c): CHANNEL_CONTRASTS[c % len(CHANNEL_CONTRASTS)][0]
                                     for c in range(num_channels)}
    save_json({"channel_names": channel_names, "labels": LABELS, "numTraining": num_cases,
               "file_ending": ".nii.gz", "name": name,
               "description": "Synthetic tumour phantom written by nnunet_ddpm"},
              os.path.join(folder, "dataset.json"), sort_keys=False)
    return folder
