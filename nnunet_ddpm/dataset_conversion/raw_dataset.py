"""Shared pieces of the dataset writers: errors users can act on, the target folder's checks, 2D slice files.

Every writer builds its dataset in ``<target>.partial`` (``nnunet_ddpm.files.folder_written_atomically``) and renames
it into place at the end, so that a failed or interrupted run never leaves a dataset that nnU-Net would half-read.
"""
import os
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import isdir, join, subdirs

# nnU-Net's convention for 2D data stored as 3D files: a large out-of-plane spacing makes the planner choose 2D
# patches (with spacing 1 it would transpose the axes and plan a [1, N] patch).
OUT_OF_PLANE_SPACING = 999.0


class DatasetConversionError(Exception):
    """Bad input to a dataset writer; the message says what is wrong and what to do. Nothing was written."""


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 < int(dataset_id) < 1000:
        raise DatasetConversionError(f"Dataset id {dataset_id} is outside 1..999, the range nnU-Net's "
                                     f"'DatasetXXX_Name' folders allow.")
    if not name or "_" in name or "/" in name or " " in name:
        raise DatasetConversionError(f"Dataset name {name!r} must be non-empty without '_', '/' or spaces "
                                     f"(nnU-Net splits 'DatasetXXX_Name' at the first '_').")
    return f"Dataset{int(dataset_id):03d}_{name}"


def check_target_free(raw_folder: str, dataset_id: int, name: str, overwrite: bool) -> str:
    """The target folder ``raw_folder/DatasetXXX_Name``; refuse an existing one (unless ``overwrite``) and any
    other dataset with the same id, which nnU-Net could not tell apart."""
    folder_name = dataset_folder_name(dataset_id, name)
    target = join(raw_folder, folder_name)
    prefix = f"Dataset{int(dataset_id):03d}_"
    others = [d for d in (subdirs(raw_folder, prefix=prefix, join=False) if isdir(raw_folder) else [])
              if d != folder_name and not d.endswith(".partial")]
    if others:
        raise DatasetConversionError(f"{raw_folder} already has a dataset with id {dataset_id}: {others[0]}. "
                                     f"nnU-Net finds datasets by id, so choose another id or remove that folder.")
    if os.path.exists(target) and not overwrite:
        raise DatasetConversionError(f"The target dataset {target} exists. Choose another id or name, or pass "
                                     f"--overwrite (overwrite=True) to replace it.")
    return target


def write_slice(array: np.ndarray, path: str, spacing: Sequence[float] = (1.0, 1.0),
                dtype: Optional[type] = None) -> None:
    """Write a 2D array (H, W) as a one-slice volume with in-plane spacing (row, column) in millimetres.

    SimpleITK orders spacing (x, y, z) = (column, row, out of plane).
    """
    array = np.asarray(array if dtype is None else array.astype(dtype, copy=False))
    image = sitk.GetImageFromArray(array[None])
    image.SetSpacing((float(spacing[1]), float(spacing[0]), OUT_OF_PLANE_SPACING))
    sitk.WriteImage(image, path)


def write_volume(array: np.ndarray, path: str, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
    """Write a 3D array (Z, Y, X) with spacing given in array order."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(image, path)
