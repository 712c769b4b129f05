"""One patient's input to ``nnUNetv2_ddpm_segment_patient``: channel images and a sparse annotation, checked.

Every check here runs before anything is written or trained, so that a wrong file costs seconds, not a pretraining:
geometry of every channel and the annotation (size, spacing, origin, direction), which slices are annotated (a list of
indices, or nnU-Net's ignore-label convention: unannotated voxels carry one value), slice indices inside the volume,
annotated slices with foreground when the user asked for tumour slices, and the label values.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_ddpm.dataset_conversion.image_integrity import (IncompleteImageError, check_image_complete,
                                                             declared_label_values, geometry_differences)
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})\.(nii\.gz|nii|nrrd|mha)$")


class PatientInputError(ValueError):
    """Bad input; the message says what was given, what is allowed and what to do. Nothing was written."""


@dataclass
class PatientInput:
    image_files: List[str]
    annotation_file: str
    reference: sitk.Image = field(repr=False)  # first channel: the geometry every output copies
    images: np.ndarray = field(repr=False)  # (C, *volume) float32, array order as SimpleITK / nnU-Net read it
    annotation: np.ndarray = field(repr=False)  # (*volume) integer labels (ignore value where unannotated)
    axis: int
    annotated: List[int]  # annotated slice indices along ``axis``
    slice_range: Tuple[int, int]  # [start, stop) of the slices to segment and to pretrain on
    channel_names: Dict[str, str]
    labels: dict  # nnU-Net dataset.json labels (possibly regions)
    regions_class_order: Optional[list] = None

    @property
    def num_slices(self) -> int:
        return self.images.shape[1 + self.axis]

    @property
    def spacing(self) -> Tuple[float, ...]:
        """Spacing in array order."""
        return tuple(self.reference.GetSpacing()[::-1])


def resolve_image_files(inputs: Sequence[str]) -> List[str]:
    """The channel files in channel order: given files as they are, or a folder with one case's ``CASE_XXXX`` files."""
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        folder = inputs[0]
        matches = [(m.group(1), int(m.group(2)), f) for f in sorted(os.listdir(folder))
                   if (m := _CHANNEL_FILE.match(f))]
        cases = sorted({case for case, _, _ in matches})
        if len(cases) != 1:
            raise PatientInputError(
                f"{folder} must hold the channel files of exactly one case (CASE_0000.nii.gz, CASE_0001.nii.gz, ...); "
                f"found {len(cases)} cases{': ' + ', '.join(cases[:5]) if cases else ''}. Give the files with -i "
                f"instead.")
        channels = sorted((index, os.path.join(folder, f)) for _, index, f in matches)
        if [i for i, _ in channels] != list(range(len(channels))):
            raise PatientInputError(f"{folder}: channel indices {[i for i, _ in channels]} are not 0, 1, 2, ...")
        return [f for _, f in channels]
    missing = [f for f in inputs if not os.path.isfile(f)]
    if missing:
        raise PatientInputError(f"Image file(s) not found: {', '.join(missing)}")
    return [os.path.abspath(f) for f in inputs]


def _read(path: str, pixel_type=None) -> sitk.Image:
    """A file that passed ``check_image_complete`` (read_patient checks every file first)."""
    try:
        return sitk.ReadImage(path, pixel_type) if pixel_type is not None else sitk.ReadImage(path)
    except RuntimeError as e:
        raise PatientInputError(f"Cannot read {path}: {str(e).strip().splitlines()[-1]}") from None


def annotated_slices(annotation: np.ndarray, axis: int, slices: Optional[Sequence[int]],
                     ignore_value: Optional[int]) -> List[int]:
    """Annotated slice indices: the given ones, or the slices without any voxel of ``ignore_value``."""
    num_slices = annotation.shape[axis]
    if ignore_value is not None and ignore_value == 0:
        raise PatientInputError("--ignore-value 0 is the background label; unannotated voxels need a value that is "
                                "not a label (nnU-Net's convention: the highest value, e.g. 255).")
    per_slice_ignored = None if ignore_value is None else \
        np.moveaxis(annotation == ignore_value, axis, 0).reshape(num_slices, -1).sum(1)
    if slices:
        outside = sorted(i for i in set(slices) if not 0 <= i < num_slices)
        if outside:
            raise PatientInputError(f"Slice indices {outside} are outside the volume: it has {num_slices} slices along "
                                    f"axis {axis} (valid: 0 to {num_slices - 1}).")
        chosen = sorted(set(slices))
        if per_slice_ignored is not None:
            clashing = [i for i in chosen if per_slice_ignored[i]]
            if clashing:
                raise PatientInputError(
                    f"The annotated slices {clashing} contain the ignore value {ignore_value} (unannotated voxels). "
                    f"An annotated slice must be labelled completely; check --slices and --ignore-value.")
        return chosen
    if ignore_value is None:
        raise PatientInputError("Say which slices are annotated: --slices I J K (the annotation's labels on those "
                                "slices are used, everything else is ignored) or --ignore-value V (nnU-Net's "
                                "ignore-label convention: unannotated voxels carry V).")
    slice_size = annotation.size // num_slices
    partial = [i for i in range(num_slices) if 0 < per_slice_ignored[i] < slice_size]
    if partial:
        raise PatientInputError(
            f"Slices {partial[:10]} are partly annotated (some voxels carry the ignore value {ignore_value}, others "
            f"do not). This command learns from whole annotated slices; label those slices completely or mark them "
            f"entirely with {ignore_value}.")
    chosen = [i for i in range(num_slices) if per_slice_ignored[i] == 0]
    if len(chosen) == num_slices:
        raise PatientInputError(f"The ignore value {ignore_value} does not occur in the annotation, so every slice "
                                f"would count as annotated. Give the value that marks unannotated slices, or --slices.")
    return chosen


def infer_labels(values: Sequence[int]) -> dict:
    """Plain labels 0..max of the annotated values (nnU-Net needs consecutive label values)."""
    return {"background": 0, **{f"label_{v}": v for v in range(1, int(max(values, default=0)) + 1)}}


def read_patient(image_inputs: Sequence[str], annotation_file: str, axis: int = 0,
                 slices: Optional[Sequence[int]] = None, ignore_value: Optional[int] = None,
                 slice_range: Optional[Sequence[int]] = None, require_foreground: bool = False,
                 dataset_json: Optional[str] = None) -> PatientInput:
    """Read and check everything; raises PatientInputError with a message for the user."""
    if axis not in (0, 1, 2):
        raise PatientInputError(f"--axis must be 0, 1 or 2 (an array axis of the 3D volume), got {axis}.")
    image_files = resolve_image_files(image_inputs)
    bad_files = []
    for path in image_files + [annotation_file]:  # all named at once, before any is read
        if not os.path.isfile(path):
            bad_files.append(f"File not found: {path}")
            continue
        try:
            check_image_complete(path)
        except IncompleteImageError as e:
            bad_files.append(str(e))
    if bad_files:
        raise PatientInputError(f"{len(bad_files)} of {len(image_files) + 1} input files cannot be used:\n  " +
                                "\n  ".join(bad_files))
    channels = [_read(f, sitk.sitkFloat32) for f in image_files]
    annotation_image = _read(annotation_file)
    reference = channels[0]
    for path, image in zip(image_files + [annotation_file], channels + [annotation_image]):
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise PatientInputError(f"{path} is not a 3D single-channel volume (dimension {image.GetDimension()}, "
                                    f"{image.GetNumberOfComponentsPerPixel()} components); give one file per channel.")
    for path, image in zip(image_files[1:] + [annotation_file], channels[1:] + [annotation_image]):
        differences = geometry_differences(reference, image)
        if differences:
            raise PatientInputError(f"{path} does not lie on the grid of {image_files[0]}: " + "; ".join(differences) +
                                    ". Every channel and the annotation must share one geometry (resample them "
                                    "onto the first channel's grid first).")
    annotation = sitk.GetArrayFromImage(annotation_image)
    if not np.issubdtype(annotation.dtype, np.integer):
        if not np.all(np.mod(annotation, 1) == 0):
            raise PatientInputError(f"{annotation_file} holds non-integer values; a label volume is needed.")
        annotation = annotation.astype(np.int64)
    if annotation.min() < 0:
        raise PatientInputError(f"{annotation_file} holds negative values ({annotation.min()}); labels are >= 0.")
    images = np.stack([sitk.GetArrayFromImage(c) for c in channels]).astype(np.float32)
    num_slices = images.shape[1 + axis]
    start, stop = slice_range if slice_range else (0, num_slices)
    if not 0 <= start < stop <= num_slices:
        raise PatientInputError(f"--slice-range {start} {stop} must satisfy 0 <= START < STOP <= {num_slices} (the "
                                f"volume has {num_slices} slices along axis {axis}).")
    chosen = annotated_slices(annotation, axis, slices, ignore_value)
    if not chosen:
        raise PatientInputError("No annotated slice: the annotation has no slice without the ignore value. Label at "
                                "least one slice completely.")
    outside_range = [i for i in chosen if not start <= i < stop]
    if outside_range:
        raise PatientInputError(f"Annotated slices {outside_range} lie outside --slice-range {start} {stop}; widen "
                                f"the range.")
    stack = np.moveaxis(annotation, axis, 0)
    content = np.moveaxis(images, axis + 1, 1).reshape(images.shape[0], num_slices, -1).any(axis=(0, 2))
    empty = [i for i in chosen if not content[i]]
    if empty:
        raise PatientInputError(f"Annotated slices {empty} are zero in every channel (outside the body); nnU-Net "
                                f"cannot normalise them. Annotate slices that show the patient.")
    if require_foreground:
        without = [i for i in chosen if not (stack[i] > 0).any()]
        if without:
            raise PatientInputError(f"--require-foreground: annotated slices {without} have no foreground label. "
                                    f"Annotate slices that contain the tumour, or leave out --require-foreground.")
    values = sorted(int(v) for v in np.unique(stack[chosen]))
    if dataset_json:
        declared = load_json(dataset_json)
        labels, order = declared["labels"], declared.get("regions_class_order")
        names = declared.get("channel_names", declared.get("modality"))
        if names is not None and len(names) != len(image_files):
            raise PatientInputError(f"{dataset_json} declares {len(names)} channels, {len(image_files)} images were "
                                    f"given.")
        unknown = sorted(set(values) - declared_label_values(labels))
        if unknown:
            raise PatientInputError(f"Annotated slices hold label values {unknown} that {dataset_json} does not "
                                    f"declare (its labels: {labels}).")
    else:
        labels, order, names = infer_labels(values), None, None
    names = {str(k): v for k, v in names.items()} if names else {str(c): f"channel_{c}" for c in
                                                                range(len(image_files))}
    return PatientInput(image_files, os.path.abspath(annotation_file), reference, images, annotation, axis, chosen,
                        (start, stop), names, labels, order)
