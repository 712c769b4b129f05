"""The one input check of every tool that reads images: refuse bad files before anything is built from them.

Users bring thousands of files they did not make; a bad one must be named before anything is written, never turned
silently into training data. Three ways a file looks valid to SimpleITK and is not:

* a NIfTI file cut short (a copy or download interrupted) is read without an error, the missing voxels as zeros;
* NaN and Inf voxels: SimpleITK's NIfTI reader turns them into 0 (a channel of NaN arrives as a constant zero
  channel), other formats (``.mha``) hand them on to nnU-Net's normalisation;
* channels of one case on different grids, or label values the dataset does not declare, are read without a word
  and fail (or are dropped) steps later.

``check_image_complete`` checks one file; ``check_cases`` checks every case of a tool's input and names every bad file
in one message, so that a user fixes them all in one round. The unlabeled-image preprocessing, the slicer, the BraTS
importer and the patient tool all go through here.
"""
import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

_CHUNK = 1 << 22
# header values are floats written by many tools; these tolerances accept rounding, not a different grid
SPACING_ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-4
# NIfTI datatype codes of floating-point voxels (float32, float64) and their numpy types
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


class InputCheckError(ValueError):
    """Bad input files found before anything was written; the message names every one and what to do."""


class IncompleteImageError(InputCheckError):
    """An image file is unreadable, holds fewer voxels than its header declares, or holds NaN or Inf values; the
    message names it."""


def check_image_complete(path: str) -> None:
    """Raise IncompleteImageError unless ``path`` is an image whose voxel data is all there and finite.

    The header must be readable (SimpleITK); a gzip stream (``.gz``) must decompress to its end with a valid checksum;
    for NIfTI (``.nii``, ``.nii.gz``) the bytes after the header's ``vox_offset`` must cover every voxel the header
    declares, and floating-point voxels are checked for NaN and Inf in those bytes (SimpleITK's reader would hide them
    as 0). Formats that may compress inside the file (``.mha``, ``.nrrd``, ``.png``) are decoded by their own readers,
    which fail on missing data; their floating-point voxels are checked after reading.
    """
    if not os.path.isfile(path):
        raise IncompleteImageError(f"Image file {path} does not exist.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise IncompleteImageError(f"Cannot read image {path}: {str(e).strip().splitlines()[-1]}. Replace the "
                                   f"file with a complete copy.") from None
    name = path.lower()
    if ".nii" not in name:
        if name.endswith(".gz"):
            _read_stream(path, keep=False)
        if reader.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32,
                                   sitk.sitkVectorFloat64):
            _check_finite(path, sitk.GetArrayFromImage(sitk.ReadImage(path)))
        return
    data = _read_stream(path, keep=True)
    offset, datatype, big_endian = _nifti_layout(data[:544])
    component_bytes = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID()).GetSizeOfPixelComponent()
    declared = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * component_bytes
    present = len(data) - offset
    if present < declared:
        raise IncompleteImageError(f"Image {path} is truncated: its header declares {declared} bytes of voxel data, "
                                   f"the file holds {max(present, 0)}. Replace the file with a complete copy.")
    if datatype in _NIFTI_FLOAT_TYPES:
        dtype = np.dtype(_NIFTI_FLOAT_TYPES[datatype]).newbyteorder(">" if big_endian else "<")
        _check_finite(path, np.frombuffer(data, dtype, declared // dtype.itemsize, offset))


def _read_stream(path: str, keep: bool) -> bytes:
    """The file's (decompressed) bytes, read to the end so that a cut or corrupt gzip stream is found."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    chunks = []
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                if keep:
                    chunks.append(chunk)
    except (EOFError, OSError, zlib.error) as e:  # EOFError: stream cut short; BadGzipFile (an OSError): bad CRC
        raise IncompleteImageError(f"Image {path} is truncated or corrupt ({type(e).__name__}: {e}). Replace the "
                                   f"file with a complete copy.") from None
    return b"".join(chunks)


def _check_finite(path: str, voxels: np.ndarray) -> None:
    finite = np.isfinite(voxels)
    if not finite.all():
        bad = voxels[~finite]
        nan, inf = int(np.isnan(bad).sum()), int(np.isinf(bad).sum())
        raise IncompleteImageError(
            f"Image {path} holds {nan} NaN and {inf} Inf values (of {voxels.size} voxels): nnU-Net's reader would "
            f"turn them into 0 (NIfTI) or into a broken normalisation. Replace them with a real intensity (e.g. 0 "
            f"outside the body) or leave the case out.")


def _nifti_layout(header: bytes):
    """(``vox_offset``, datatype code, big-endian?) of a NIfTI-1 (348-byte header) or NIfTI-2 (540) header."""
    for order in "<>":
        if len(header) >= 4 and struct.unpack(order + "i", header[:4])[0] == 348:
            return (int(struct.unpack(order + "f", header[108:112])[0]), struct.unpack(order + "h", header[70:72])[0],
                    order == ">")
        if len(header) >= 176 and struct.unpack(order + "i", header[:4])[0] == 540:
            return struct.unpack(order + "q", header[168:176])[0], struct.unpack(order + "h", header[12:14])[0], \
                order == ">"
    return 0, None, False


def geometry_differences(reference, other) -> List[str]:
    """What differs between two grids (size, spacing, origin, direction) in words; empty if nothing. Takes images or
    ``ImageFileReader``s whose information was read (both have the same getters)."""
    differences = []
    if tuple(reference.GetSize()) != tuple(other.GetSize()):
        differences.append(f"size {tuple(other.GetSize())} instead of {tuple(reference.GetSize())}")
    for name, tolerance in (("spacing", SPACING_ORIGIN_TOLERANCE_MM), ("origin", SPACING_ORIGIN_TOLERANCE_MM),
                            ("direction", DIRECTION_TOLERANCE)):
        mine, theirs = (np.array(getattr(image, f"Get{name.capitalize()}")()) for image in (reference, other))
        if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=0, atol=tolerance):
            differences.append(f"{name} {tuple(np.round(theirs, 4))} instead of {tuple(np.round(mine, 4))}")
    return differences


def label_members(value) -> Tuple[int, ...]:
    """The label values of one dataset.json ``labels`` entry: a plain label's value, or the members of a region."""
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def label_masks(labels: dict) -> Dict[str, Tuple[int, ...]]:
    """{name: label values forming it} of a dataset.json ``labels`` entry, background left out (a plain label is one
    value, a region several)."""
    return {name: members for name, value in labels.items() if (members := label_members(value)) != (0,)}


def declared_label_values(labels: dict) -> set:
    """Every label value a dataset.json ``labels`` entry declares (plain labels and the members of regions)."""
    return {v for value in labels.values() for v in label_members(value)}


@dataclass
class CaseFiles:
    """One case's files as a tool reads them: channel images (and grids such as a brain mask), an optional label
    file, and the label values it may hold (None: not checked)."""

    images: Sequence[str]
    label: Optional[str] = None
    label_values: Optional[Collection[int]] = None


def case_problems(case: CaseFiles) -> List[str]:
    """Every problem of one case, one line each naming the file: files that do not decode completely or are not
    finite, files on another grid than the first channel, label values outside ``label_values``."""
    files = list(case.images) + ([case.label] if case.label else [])
    problems = []
    for path in files:
        try:
            check_image_complete(path)
        except IncompleteImageError as e:
            problems.append(str(e))
    if problems:
        return problems
    readers = []
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        readers.append(reader)
    for path, reader in zip(files[1:], readers[1:]):
        differences = geometry_differences(readers[0], reader)
        if differences:
            problems.append(f"{path} does not lie on the grid of {files[0]}: " + "; ".join(differences) +
                            ". All channels (and the label) of a case must share one grid: resample them onto the "
                            "first channel's grid, or leave the case out.")
    if case.label and case.label_values is not None:
        values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(case.label)))
        unknown = [v.item() for v in values if v != int(v) or int(v) not in case.label_values]
        if unknown:
            problems.append(f"{case.label} holds label values {unknown} that are not declared (allowed: "
                            f"{sorted(case.label_values)}). Fix the label file, declare the label in dataset.json, "
                            f"or leave the case out.")
    return problems


def check_cases(cases: Mapping[str, CaseFiles], what: str = "input") -> None:
    """Check every case (``case_problems``) before anything is written; raise InputCheckError naming every bad file."""
    per_case = [case_problems(case) for case in cases.values()]
    problems = [p for found in per_case for p in found]
    if problems:
        bad_cases = sum(1 for found in per_case if found)
        raise InputCheckError(f"{bad_cases} of {len(cases)} cases of the {what} cannot be used; nothing was "
                              f"written:\n  " + "\n  ".join(problems))
