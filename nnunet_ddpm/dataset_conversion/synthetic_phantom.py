"""Synthetic multi-channel "tumour phantom" datasets in nnU-Net raw format: the data of the demo and the tests.

Why a phantom: tests, the demo and newcomers need data that exists without a download, and it must be hard enough
that labels matter (a model trained on two cases is clearly worse than one trained on twenty; see
``tools/phantom_difficulty.py`` and documentation/datasets.md for the measured numbers).

Each case is a head (scalp, grey matter rim, white matter, two ventricles) with one tumour whose sub-regions are
nested like a glioma's: oedema around an enhancing rim around a necrotic core (BraTS-like; the label values equal
those of nnU-Net's Dataset137_BraTS21 conversion: 1 oedema, 2 necrosis, 3 enhancing). What makes it hard:

- irregular tumours (union of a few blobs with a wobbling boundary) of varying size, position and sub-region
  proportions, sometimes without necrosis;
- per patient and channel a random tissue contrast, sometimes a weak tumour contrast in a channel, a scanner-like
  intensity scale and offset, a multiplicative bias field, texture, partial-volume blur and noise;
- distractors that are not tumour: CSF ventricles (brighter than oedema in T2) and small lesions that look like
  oedema in FLAIR (white-matter hyperintensities) or like enhancement in T1c.

Numpy only and fast (a 64 x 64 case in a few milliseconds). Every case has its own generator seeded by
(seed, case index), so a case does not change when other parts of the dataset are added.
"""
import argparse
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, save_json

from nnunet_ddpm.dataset_conversion.raw_dataset import (DatasetConversionError, check_target_free, write_slice,
                                                         write_volume)
from nnunet_ddpm.files import folder_written_atomically
from nnunet_ddpm.folders import output_folder_or_nnunet

LABELS = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
# the BraTS evaluation regions over these labels, written like nnU-Net's Dataset137_BraTS21 conversion
REGION_LABELS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)

# tissue index of the tissue map; 0 is air (always exactly 0 in every channel, so nnU-Net's nonzero crop works)
SCALP, GREY, WHITE, CSF, EDEMA, NECROSIS, ENHANCING, WMH, ENHANCING_MIMIC = range(1, 10)
# mean intensity per tissue (index 1..9 above) relative to white matter, loosely like the MRI sequences
CHANNEL_CONTRASTS = (
    ("T1", (1.5, 0.80, 1.0, 0.35, 0.78, 0.45, 0.85, 0.85, 0.95)),
    ("T1c", (1.4, 0.80, 1.0, 0.35, 0.82, 0.50, 1.75, 0.85, 1.70)),
    ("FLAIR", (0.7, 1.15, 1.0, 0.30, 1.65, 1.20, 1.40, 1.60, 1.05)),
    ("T2", (0.8, 1.20, 1.0, 2.00, 1.60, 1.90, 1.35, 1.50, 1.10)),
)
TUMOUR_TISSUES = np.array([EDEMA, NECROSIS, ENHANCING])


def channel_names(num_channels: int) -> Dict[str, str]:
    """{"0": "T1", ...}; channels beyond the four sequences repeat them with a suffix."""
    names = {}
    for c in range(num_channels):
        base, repeat = CHANNEL_CONTRASTS[c % len(CHANNEL_CONTRASTS)][0], c // len(CHANNEL_CONTRASTS)
        names[str(c)] = base if repeat == 0 else f"{base}_{repeat + 1}"
    return names


def _smooth_field(grid: np.ndarray, rng: np.random.Generator, waves: int = 6, frequency: float = 1.5) -> np.ndarray:
    """A random smooth field of about unit variance: a sum of plane waves of low spatial frequency."""
    field = np.zeros(grid.shape[1:])
    for _ in range(waves):
        k = rng.normal(0, frequency * np.pi / 2, grid.shape[0])
        field += np.cos(np.tensordot(k, grid, axes=1) + rng.uniform(0, 2 * np.pi))
    return field / np.sqrt(waves / 2)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels) over the spatial axes: the partial-volume effect of a scanner."""
    radius = int(np.ceil(2.5 * sigma))
    weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weights /= weights.sum()
    for axis in range(image.ndim):
        moved = np.moveaxis(image, axis, 0)
        padded = np.concatenate([np.repeat(moved[:1], radius, 0), moved, np.repeat(moved[-1:], radius, 0)])
        blurred = sum(w * padded[j:j + moved.shape[0]] for j, w in enumerate(weights))
        image = np.moveaxis(blurred, 0, axis)
    return image


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation with the face neighbours (4 in 2D, 6 in 3D); nothing wraps around the border."""
    out = mask.copy()
    for axis in range(mask.ndim):
        lead = [slice(None)] * mask.ndim
        trail = [slice(None)] * mask.ndim
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        out[tuple(lead)] |= mask[tuple(trail)]
        out[tuple(trail)] |= mask[tuple(lead)]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def _distance(grid: np.ndarray, centre, radii) -> np.ndarray:
    """Ellipsoidal distance: 1 on the surface of the ellipsoid with these centre and radii."""
    dims = (slice(None),) + (None,) * (grid.ndim - 1)
    return np.sqrt((((grid - np.asarray(centre)[dims]) / np.asarray(radii)[dims]) ** 2).sum(0))


def _tissue_map(grid: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Tissue index per voxel (see the constants above) and the labels (``LABELS``)."""
    ndim = grid.shape[0]
    head_centre = rng.uniform(-0.05, 0.05, ndim)
    head_radii = rng.uniform(0.78, 0.93, ndim)
    head_distance = _distance(grid, head_centre, head_radii) * (1 + 0.03 * _smooth_field(grid, rng))
    brain_edge, white_edge = rng.uniform(0.85, 0.9), rng.uniform(0.68, 0.78)
    tissue = np.zeros(grid.shape[1:], dtype=np.uint8)
    tissue[head_distance <= 1] = SCALP
    brain = head_distance <= brain_edge
    tissue[brain] = GREY
    # a wobbling grey / white boundary, loosely like gyri
    tissue[brain & (head_distance * (1 + 0.08 * _smooth_field(grid, rng, frequency=3)) <= white_edge)] = WHITE
    # two ventricles beside the midline of the last axis
    half_gap = rng.uniform(0.06, 0.14)
    ventricle_radii = head_radii * rng.uniform(0.06, 0.16, ndim)
    for side in (-1, 1):
        centre = head_centre + rng.normal(0, 0.02, ndim)
        centre[-1] += side * half_gap
        tissue[brain & (_distance(grid, centre, ventricle_radii * rng.uniform(0.8, 1.2, ndim)) <= 1)] = CSF

    # the tumour: a union of 1-4 blobs around a point well inside the brain, with a wobbling boundary
    direction = rng.normal(size=ndim)
    centre = head_centre + head_radii * 0.55 * rng.uniform() ** (1 / ndim) * direction / np.linalg.norm(direction)
    size = rng.uniform(0.1, 0.3)
    blobs = [(centre, size * rng.uniform(0.8, 1.2, ndim))]
    blobs += [(centre + rng.normal(0, 0.6 * size, ndim), size * rng.uniform(0.4, 0.9, ndim))
              for _ in range(rng.integers(0, 4))]
    tumour_distance = np.min([_distance(grid, c, r) for c, r in blobs], axis=0)
    tumour_distance *= 1 + 0.12 * _smooth_field(grid, rng, frequency=4)
    necrosis_extent = rng.uniform(0.3, 0.75) if rng.uniform() < 0.8 else 0.0
    oedema_extent = rng.uniform(1.25, 2.4)
    # nested at the voxel level, whatever the resolution: the core stays one voxel inside the brain, the necrosis
    # one voxel inside the core (an enhancing rim), and at least one voxel of oedema surrounds the core
    inner_brain = _erode(brain)
    core = inner_brain & (tumour_distance <= 1)
    if not core.any():  # a blob smaller than a voxel
        core[np.unravel_index(np.argmin(np.where(inner_brain, tumour_distance, np.inf)), core.shape)] = True
    oedema_distance = tumour_distance * (1 + 0.25 * _smooth_field(grid, rng, frequency=3))
    oedema = brain & ((oedema_distance <= oedema_extent) | _dilate(core))
    necrosis = _erode(core) & (tumour_distance <= necrosis_extent)

    # distractors: small lesions outside the tumour, oedema-like in FLAIR or enhancing-like in T1c
    for _ in range(rng.integers(0, 4)):
        direction = rng.normal(size=ndim)
        lesion_centre = head_centre + head_radii * 0.7 * rng.uniform() * direction / np.linalg.norm(direction)
        lesion = brain & ~oedema & (_distance(grid, lesion_centre, rng.uniform(0.03, 0.09, ndim)) <= 1)
        tissue[lesion] = WMH if rng.uniform() < 0.6 else ENHANCING_MIMIC

    labels = np.zeros(tissue.shape, dtype=np.uint8)
    labels[oedema] = LABELS["edema"]
    labels[core] = LABELS["enhancing"]
    labels[necrosis] = LABELS["necrosis"]
    for label, tissue_index in ((1, EDEMA), (2, NECROSIS), (3, ENHANCING)):
        tissue[labels == label] = tissue_index
    return tissue, labels


def phantom_case(shape: Sequence[int], num_channels: int, rng: np.random.Generator):
    """One case: images (C, *shape) float32, exactly 0 outside the head, and labels (*shape) uint8."""
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    angle = rng.uniform(-0.3, 0.3)  # in-plane head rotation (last two axes)
    rotated = grid.copy()
    rotated[-2] = np.cos(angle) * grid[-2] - np.sin(angle) * grid[-1]
    rotated[-1] = np.sin(angle) * grid[-2] + np.cos(angle) * grid[-1]
    tissue, labels = _tissue_map(rotated, rng)
    head = tissue > 0
    blur_sigma = rng.uniform(0.5, 1.2)
    noise_sigma = rng.uniform(0.03, 0.1)
    images = np.zeros((num_channels, *shape), dtype=np.float32)
    for c in range(num_channels):
        contrast = np.array((0.0,) + CHANNEL_CONTRASTS[c % len(CHANNEL_CONTRASTS)][1])
        contrast[1:] *= rng.uniform(0.82, 1.18, len(contrast) - 1)
        if rng.uniform() < 0.4:  # this sequence shows the tumour only faintly
            contrast[TUMOUR_TISSUES] = contrast[WHITE] + (contrast[TUMOUR_TISSUES] - contrast[WHITE]) * \
                                       rng.uniform(0.15, 0.6)
        image = contrast[tissue] * (1 + 0.06 * _smooth_field(grid, rng, frequency=6))
        image = _blur(image, blur_sigma)
        image *= np.exp(rng.uniform(0.1, 0.35) * _smooth_field(grid, rng, waves=3, frequency=0.7))  # bias field
        image += rng.normal(0, noise_sigma, shape)
        scale = rng.uniform(0.5, 2.0)  # scanner-like intensity scale and offset
        images[c] = np.where(head, scale * (image + rng.uniform(0, 0.3)), 0)
    return images, labels


def write_phantom_dataset(raw_folder: str, dataset_id: int, name: str = "Phantom", num_cases: int = 8,
                          size=(48, 48), num_channels: int = 3, seed: int = 0, num_test_cases: int = 0,
                          num_unlabeled_cases: int = 0, regions: bool = False, overwrite: bool = True) -> str:
    """Write ``Dataset{id:03d}_{name}`` into ``raw_folder``; returns the dataset folder.

    ``num_cases`` labelled cases (imagesTr/labelsTr), ``num_test_cases`` held-out cases (imagesTs/labelsTs) and
    ``num_unlabeled_cases`` images without labels (imagesUnlabeled, see ``unlabeled_images.py``), named
    ``phantom_000, phantom_001, ...`` in that order. ``size`` of length 2 gives 2D slices (one-slice volumes with
    out-of-plane spacing 999), of length 3 volumes. ``regions`` writes the BraTS evaluation regions (whole tumour,
    tumour core, enhancing tumour) as region-based labels. An existing dataset is replaced unless ``overwrite`` is
    False; the dataset is written to ``<folder>.partial`` first and moved into place when complete.
    """
    if len(size) not in (2, 3) or min(size) < 4:
        raise DatasetConversionError(f"size must be 2 or 3 numbers of at least 4 pixels, got {tuple(size)}")
    if num_channels < 1 or min(num_cases, num_test_cases, num_unlabeled_cases) < 0:
        raise DatasetConversionError(f"Need at least one channel and no negative case counts (got num_channels="
                                     f"{num_channels}, cases {num_cases}/{num_test_cases}/{num_unlabeled_cases}).")
    maybe_mkdir_p(raw_folder)
    folder = check_target_free(raw_folder, dataset_id, name, overwrite)
    is_2d = len(size) == 2
    parts = [("imagesTr", "labelsTr", num_cases), ("imagesTs", "labelsTs", num_test_cases),
             ("imagesUnlabeled", None, num_unlabeled_cases)]
    with folder_written_atomically(folder) as partial:
        index = 0
        for image_folder, label_folder, count in parts:
            if count == 0 and image_folder != "imagesTr":
                continue
            for sub in (image_folder, label_folder):
                if sub:
                    maybe_mkdir_p(join(partial, sub))
            for _ in range(count):
                images, labels = phantom_case(size, num_channels, np.random.default_rng([seed, index]))
                case = f"phantom_{index:03d}"
                for c in range(num_channels):
                    _write(images[c], join(partial, image_folder, f"{case}_{c:04d}.nii.gz"), is_2d)
                if label_folder:
                    _write(labels, join(partial, label_folder, f"{case}.nii.gz"), is_2d)
                index += 1
        extra = {"regions_class_order": REGIONS_CLASS_ORDER} if regions else {}
        save_json({"channel_names": channel_names(num_channels), "labels": REGION_LABELS if regions else LABELS,
                   **extra, "numTraining": num_cases, "file_ending": ".nii.gz", "name": name,
                   "description": f"Synthetic tumour phantom written by nnunet_ddpm (seed {seed}, size "
                                  f"{'x'.join(map(str, size))})"},
                  join(partial, "dataset.json"), sort_keys=False)
    return folder


def _write(array: np.ndarray, path: str, is_2d: bool) -> None:
    if is_2d:
        write_slice(array, path)
    else:
        write_volume(array, path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """nnUNetv2_ddpm_make_phantom: a synthetic tumour phantom as an nnU-Net raw dataset in $nnUNet_raw."""
    parser = argparse.ArgumentParser(description="Write a synthetic multi-channel tumour phantom as an nnU-Net raw "
                                                 "dataset (imagesTr/labelsTr, optional imagesTs/labelsTs and "
                                                 "imagesUnlabeled) into $nnUNet_raw.")
    parser.add_argument("-d", type=int, required=True, help="dataset id")
    parser.add_argument("-n", default="Phantom", help="dataset name (default: %(default)s)")
    parser.add_argument("--cases", type=int, default=20, help="labelled training cases (default: %(default)s)")
    parser.add_argument("--test", type=int, default=0, help="held-out cases with labels (default: %(default)s)")
    parser.add_argument("--unlabeled", type=int, default=0, help="images without labels (default: %(default)s)")
    parser.add_argument("--size", type=int, nargs="+", default=[64, 64],
                        help="2 numbers for 2D slices, 3 for volumes (default: %(default)s)")
    parser.add_argument("--channels", type=int, default=4, help="T1, T1c, FLAIR, T2, ... (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--regions", action="store_true",
                        help="region-based labels: whole tumour, tumour core, enhancing tumour (like BraTS)")
    parser.add_argument("--raw", default=None, help="raw folder (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id and name")
    args = parser.parse_args(argv)
    raw = output_folder_or_nnunet("nnUNetv2_ddpm_make_phantom", args.raw, "nnUNet_raw", "--raw")
    try:
        folder = write_phantom_dataset(raw, args.d, args.n, args.cases, tuple(args.size), args.channels, args.seed,
                                       args.test, args.unlabeled, args.regions, args.overwrite)
    except DatasetConversionError as e:
        sys.exit(f"nnUNetv2_ddpm_make_phantom: {e}")
    print(f"Wrote {folder}: {args.cases} training, {args.test} test and {args.unlabeled} unlabeled cases of "
          f"{' x '.join(map(str, args.size))} pixels, {args.channels} channels")


if __name__ == "__main__":
    main()
