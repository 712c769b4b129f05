"""Refuse an image file that does not decode completely, before anything is built from it.

SimpleITK reads a NIfTI file cut short (a copy or download interrupted) without an error: the missing voxels come back
as zeros, and the image looks valid. Every image the plugin reads goes through ``check_image_complete`` first.
"""
import gzip
import math
import os
import struct
import zlib

import SimpleITK as sitk

_CHUNK = 1 << 22


class IncompleteImageError(ValueError):
    """An image file is unreadable or holds fewer voxels than its header declares; the message names it."""


def check_image_complete(path: str) -> None:
    """Raise IncompleteImageError unless ``path`` is an image whose voxel data is all there.

    The header must be readable (SimpleITK); a gzip stream (``.gz``) must decompress to its end with a valid checksum;
    for NIfTI (``.nii``, ``.nii.gz``) the bytes after the header's ``vox_offset`` must cover every voxel the header
    declares. Formats that may compress inside the file (``.mha``, ``.nrrd``, ``.png``) are decoded by their own
    readers, which fail on missing data, so only their header is checked here.
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
    compressed = name.endswith(".gz")
    if not compressed and not name.endswith(".nii"):
        return
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            header = f.read(544)
            size = len(header)
            while chunk := f.read(_CHUNK):
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as e:  # EOFError: stream cut short; BadGzipFile (an OSError): bad CRC
        raise IncompleteImageError(f"Image {path} is truncated or corrupt ({type(e).__name__}: {e}). Replace the "
                                   f"file with a complete copy.") from None
    if ".nii" not in name:
        return
    component_bytes = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID()).GetSizeOfPixelComponent()
    declared = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * component_bytes
    present = size - _nifti_data_offset(header)
    if present < declared:
        raise IncompleteImageError(f"Image {path} is truncated: its header declares {declared} bytes of voxel data, "
                                   f"the file holds {max(present, 0)}. Replace the file with a complete copy.")


def _nifti_data_offset(header: bytes) -> int:
    """``vox_offset`` of a NIfTI-1 (348-byte header, float32 at byte 108) or NIfTI-2 (540, int64 at 168) header."""
    for order in "<>":
        if len(header) >= 4 and struct.unpack(order + "i", header[:4])[0] == 348:
            return int(struct.unpack(order + "f", header[108:112])[0])
        if len(header) >= 176 and struct.unpack(order + "i", header[:4])[0] == 540:
            return struct.unpack(order + "q", header[168:176])[0]
    return 0
