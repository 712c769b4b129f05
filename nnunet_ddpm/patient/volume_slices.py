"""From one patient's volume to a 2D slice dataset, and from predicted slices back to the volume.

The slices are cut and resampled with the slicer's functions (``slice_dataset.py``, nnU-Net's own resampling), so a
patient's slices look exactly like those of ``nnUNetv2_ddpm_slice_dataset``. Annotated slices become training cases
(imagesTr/labelsTr); the others go to imagesUnlabeled, so that the DDPM pretraining sees every slice of the patient;
every slice to segment goes to imagesTs. Slices that are zero in every channel (outside the body) are left out:
nnU-Net cannot normalise them, and they are background in the output.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import isfile, join, maybe_mkdir_p, save_json

from nnunet_ddpm.dataset_conversion.raw_dataset import write_slice
from nnunet_ddpm.dataset_conversion.slice_dataset import resample_slices, resampled_spacing, slices_with_content
from nnunet_ddpm.dataset_conversion.unlabeled_images import UNLABELED_IMAGES
from nnunet_ddpm.files import folder_written_atomically
from nnunet_ddpm.patient.inputs import PatientInput

CASE_PREFIX = "patient"
PATIENT_RECORD = "patient.json"


def case_name(index: int) -> str:
    return f"{CASE_PREFIX}_s{index:03d}"


def plan_slices(patient: PatientInput) -> Dict[str, List[int]]:
    """Which slices are trained on, pretrained on, segmented, or are empty background."""
    stack = np.moveaxis(patient.images, patient.axis + 1, 1)
    content = slices_with_content(stack)
    start, stop = patient.slice_range
    segmented = [i for i in range(start, stop) if content[i]]
    return {"annotated": list(patient.annotated),
            "unannotated": [i for i in segmented if i not in patient.annotated],
            "segmented": segmented,
            "empty": [i for i in range(start, stop) if not content[i]]}


def write_patient_dataset(patient: PatientInput, target: str, size: Optional[Sequence[int]], order: int = 1,
                          name: str = "Patient", extra_record: Optional[dict] = None) -> dict:
    """Write the nnU-Net raw dataset ``target`` (atomically); returns the record also saved as ``patient.json``."""
    images = np.moveaxis(patient.images, patient.axis + 1, 1)  # (C, slices, H, W)
    labels = np.moveaxis(patient.annotation, patient.axis, 0)[None]  # (1, slices, H, W)
    in_plane_spacing = [s for i, s in enumerate(patient.spacing) if i != patient.axis]
    size = tuple(size or images.shape[2:])
    spacing = resampled_spacing(in_plane_spacing, images.shape[2:], size)
    slices = plan_slices(patient)
    with folder_written_atomically(target) as partial:
        for sub in ("imagesTr", "labelsTr", "imagesTs", UNLABELED_IMAGES):
            maybe_mkdir_p(join(partial, sub))
        resampled = resample_slices(images[:, slices["segmented"]], size, order=order)
        position = {index: k for k, index in enumerate(slices["segmented"])}
        annotated_labels = resample_slices(labels[:, slices["annotated"]], size, is_seg=True)
        label_dtype = np.uint8 if annotated_labels.max() < 256 else np.uint16
        for k, index in enumerate(slices["annotated"]):
            write_slice(annotated_labels[0, k], join(partial, "labelsTr", case_name(index) + ".nii.gz"), spacing,
                        label_dtype)
        for index in slices["segmented"]:
            folders = ["imagesTs", "imagesTr" if index in patient.annotated else UNLABELED_IMAGES]
            for c in range(images.shape[0]):
                for folder in folders:
                    write_slice(resampled[c, position[index]],
                                join(partial, folder, f"{case_name(index)}_{c:04d}.nii.gz"), spacing)
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(partial, dict(patient.channel_names), dict(patient.labels), len(slices["annotated"]),
                              ".nii.gz", regions_class_order=patient.regions_class_order, dataset_name=name,
                              description=f"2D slices (axis {patient.axis}) of {patient.image_files[0]} with the "
                                          f"annotated slices of {patient.annotation_file}; written by "
                                          f"nnUNetv2_ddpm_segment_patient", converted_by="nnunet_ddpm")
        record = {"image_files": patient.image_files, "annotation_file": patient.annotation_file,
                  "axis": patient.axis, "volume_shape": list(patient.annotation.shape), "size": list(size),
                  "in_plane_size": list(images.shape[2:]), "spacing": list(spacing), "order": order,
                  "slice_range": list(patient.slice_range), "labels": patient.labels, **slices, **(extra_record or {})}
        save_json(record, join(partial, PATIENT_RECORD), sort_keys=False)
    return record


def _stack_back(slices_2d: np.ndarray, record: dict, is_seg: bool, dtype) -> np.ndarray:
    """(n, h, w) predicted slices of ``record['segmented']`` -> the full volume in the input's array order."""
    resampled = resample_slices(slices_2d[None], record["in_plane_size"], is_seg=is_seg, order=1)[0]
    shape = list(record["volume_shape"])
    axis = record["axis"]
    volume = np.zeros([shape[axis]] + [s for i, s in enumerate(shape) if i != axis], dtype=dtype)
    volume[record["segmented"]] = resampled.astype(dtype) if is_seg else np.clip(resampled, 0, None).astype(dtype)
    return np.moveaxis(volume, 0, axis)


def read_slice(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))[0]


def segmentation_volume(prediction_folder: str, record: dict) -> np.ndarray:
    """The predicted label volume, nearest-neighbour back to the input grid; empty slices background."""
    predicted = np.stack([read_slice(join(prediction_folder, case_name(i) + ".nii.gz")) for i in record["segmented"]])
    return _stack_back(predicted, record, is_seg=True, dtype=np.uint8 if predicted.max() < 256 else np.uint16)


def uncertainty_volume(prediction_folder: str, record: dict, region_based: bool) -> Optional[np.ndarray]:
    """Normalised entropy in percent (0-100) from the saved probabilities, linearly back to the input grid; None
    without probability files."""
    from nnunet_ddpm.inference.uncertainty import normalised_entropy
    files = [join(prediction_folder, case_name(i) + ".npz") for i in record["segmented"]]
    if not all(isfile(f) for f in files):
        return None
    entropy = np.stack([normalised_entropy(np.load(f)["probabilities"], region_based)[0] for f in files])
    return np.rint(100 * np.clip(_stack_back(entropy.astype(np.float32), record, False, np.float32), 0, 1)
                   ).astype(np.uint8)


def write_like(array: np.ndarray, reference: sitk.Image, path: str) -> None:
    """Write ``array`` (input array order) with exactly the reference image's geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    sitk.WriteImage(image, path)
