"""``nnUNetv2_ddpm_slice_dataset``: the paper's 2D slice dataset from any 3D nnU-Net raw dataset.

Alshenoudy et al. (AIAI 2023) train and test on axial slices of BraTS 2021 resized to 128 x 128. This command makes
such a dataset from any 3D nnU-Net raw dataset (BraTS 2021 after nnU-Net's Dataset137_BraTS21 conversion, MSD Task01
after ``nnUNetv2_convert_MSD_dataset``, your own): every chosen slice becomes a case ``<source case>_sNNN`` in
standard nnU-Net format, a one-slice volume with out-of-plane spacing 999 so that nnU-Net plans 2D patches.
Images are resampled with nnU-Net's own resampling (spline order 1 by default, like the paper's bilinear resize),
labels with nearest neighbour; in-plane spacing becomes old extent / new size. Channel names, labels and regions
(``regions_class_order``) are carried over. Slices of one patient stay together: ``case_groups.json`` maps every
training case to its source volume for ``nnUNetv2_ddpm_make_splits --groups``, and held-out patients go whole to
imagesTs/labelsTs.

Everything is checked before anything is written; the dataset is built in ``<target>.partial`` and moved into place
when complete.
"""
import argparse
import multiprocessing
import os
import sys
from dataclasses import asdict
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, maybe_mkdir_p, \
    save_json

from nnunet_ddpm.dataset_conversion.image_integrity import (CaseFiles, case_problems, declared_label_values,
                                                             label_masks)
from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError, check_target_free, write_slice
from nnunet_ddpm.dataset_conversion.slice_rules import PAPER_SLICES, SliceRule
from nnunet_ddpm.dataset_conversion.unlabeled_images import UNLABELED_IMAGES, unlabeled_cases
from nnunet_ddpm.files import folder_written_atomically
from nnunet_ddpm.folders import output_folder_or_nnunet, require_nnunet_folders
from nnunet_ddpm.splits.grouped_folds import GROUPS_FILE

SLICING_RECORD = "slicing.json"
# nnU-Net's Dataset137_BraTS21 regions over its labels 1 oedema, 2 necrosis / non-enhancing, 3 enhancing; MSD
# Task01 (1 edema, 2 non-enhancing tumor, 3 enhancing tumour) has the same values
BRATS_REGIONS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
BRATS_REGIONS_CLASS_ORDER = (1, 2, 3)
_HEADER_READABLE = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


# ----------------------------------------------------------------------------------------------------------------
# checks: all of them run before anything is written


def read_source(source_folder: str) -> Tuple[dict, Dict[str, dict]]:
    """The source's dataset.json and its training cases {case: {'images': [...], 'label': file}}."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    if not isdir(source_folder):
        raise DatasetConversionError(f"The source {source_folder} is not a folder. Give an nnU-Net raw dataset "
                                     f"(a DatasetXXX_Name folder, or its name or id in $nnUNet_raw).")
    missing = [p for p in ("dataset.json", "imagesTr", "labelsTr") if not os.path.exists(join(source_folder, p))]
    if missing:
        raise DatasetConversionError(
            f"{source_folder} is not an nnU-Net raw dataset: {', '.join(missing)} missing (expected dataset.json, "
            f"imagesTr/CASE_XXXX<ending>, labelsTr/CASE<ending>). Convert it first, e.g. with nnU-Net's "
            f"dataset_conversion scripts or nnUNetv2_convert_MSD_dataset.")
    dataset_json = load_json(join(source_folder, "dataset.json"))
    absent = [k for k in ("labels", "file_ending") if k not in dataset_json]
    if "channel_names" not in dataset_json and "modality" not in dataset_json:
        absent.append("channel_names")
    if absent:
        raise DatasetConversionError(f"{source_folder}/dataset.json has no {', '.join(absent)}; it is not an nnU-Net "
                                     f"v2 dataset.json (see nnU-Net's generate_dataset_json).")
    cases = get_filenames_of_train_images_and_targets(source_folder, dataset_json)
    if not cases:
        raise DatasetConversionError(f"No training cases in {source_folder}/imagesTr with file ending "
                                     f"{dataset_json['file_ending']}.")
    return dataset_json, dict(sorted(cases.items()))


def check_cases(cases: Dict[str, dict], num_channels: int, file_ending: str, axis: int,
                fixed_indices: Optional[Sequence[int]], label_values: Optional[Collection[int]] = None,
                unlabeled: Optional[Dict[str, List[str]]] = None) -> Dict[str, Tuple[int, ...]]:
    """Every case has all channels and a label on one 3D grid, the label holds only ``label_values`` (the values
    dataset.json declares; None: not checked), and the fixed slice indices lie inside it.

    The shared input check (``image_integrity.case_problems``) reads every file: complete, finite, one grid, declared
    labels. ``unlabeled``: {volume: channel files} of the source's imagesUnlabeled, checked in the same pass so that
    one message names every bad file. Returns {case: array shape}.
    """
    shapes, problems = {}, []
    for case, files in cases.items():
        if len(files["images"]) != num_channels:
            problems.append(f"{case}: {len(files['images'])} image files, the dataset has {num_channels} channels")
            continue
        if not isfile(files["label"]):
            problems.append(f"{case}: label file {files['label']} missing")
            continue
        found = case_problems(CaseFiles(files["images"], files["label"], label_values))
        if found:
            problems += [f"{case}: {message}" for message in found]
            continue
        if not file_ending.lower().endswith(_HEADER_READABLE):
            continue
        shape = _header_shape(files["label"])
        if len(shape) != 3:
            problems.append(f"{case}: {len(shape)}-dimensional files; the slicer needs 3D volumes (split 4D "
                            f"MSD images with nnUNetv2_convert_MSD_dataset first)")
        else:
            shapes[case] = shape
            outside = [i for i in (fixed_indices or ()) if i >= shape[axis]]
            if outside:
                problems.append(f"{case}: slice indices {outside} outside the volume, which has {shape[axis]} slices "
                                f"along axis {axis} (valid: 0 to {shape[axis] - 1})")
    for case, files in (unlabeled or {}).items():
        problems += [f"{case} ({UNLABELED_IMAGES}): {message}" for message in case_problems(CaseFiles(files))]
    if problems:
        raise DatasetConversionError(f"{len(problems)} problem(s) in {len(cases)} source cases; nothing was "
                                     f"written:\n  " + "\n  ".join(problems))
    return shapes


def _header_shape(path: str) -> Tuple[int, ...]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DatasetConversionError(f"Cannot read {path}: {str(e).strip().splitlines()[-1]}") from None
    return tuple(reader.GetSize()[::-1])


def choose_test_patients(patients: Sequence[str], test_patients: Optional[Sequence[str]], num_test_patients: int,
                         seed: int) -> List[str]:
    """Whole patients held out for imagesTs/labelsTs: the named ones, or ``num_test_patients`` drawn with ``seed``."""
    if test_patients:
        unknown = sorted(set(test_patients) - set(patients))
        if unknown:
            raise DatasetConversionError(f"Test patients {unknown[:5]} are not source cases "
                                         f"(e.g. {list(patients)[:3]}).")
        chosen = sorted(set(test_patients))
    else:
        if not 0 <= num_test_patients < len(patients):
            raise DatasetConversionError(f"Cannot hold out {num_test_patients} of {len(patients)} patients: at least "
                                         f"one must remain for training.")
        chosen = sorted(np.random.default_rng(seed).permutation(sorted(patients))[:num_test_patients].tolist())
    if len(chosen) >= len(patients):
        raise DatasetConversionError("All patients are held out; at least one must remain for training.")
    return chosen


def target_labels(dataset_json: dict, brats_regions: bool) -> Tuple[dict, Optional[tuple]]:
    """Labels and regions_class_order of the slice dataset: the source's, or the BraTS regions on request."""
    labels = dataset_json["labels"]
    if not brats_regions:
        return labels, dataset_json.get("regions_class_order")
    values = sorted(int(v) for v in labels.values() if not isinstance(v, (list, tuple)))
    if len(values) != len(labels) or values != [0, 1, 2, 3]:
        raise DatasetConversionError(f"--brats-regions needs plain labels 0, 1, 2, 3 (oedema, necrosis / "
                                     f"non-enhancing, enhancing, as in MSD Task01); the source has {labels}.")
    return dict(BRATS_REGIONS), BRATS_REGIONS_CLASS_ORDER


# ----------------------------------------------------------------------------------------------------------------
# conversion of one case (runs in worker processes)


def resample_slices(stack: np.ndarray, size: Sequence[int], is_seg: bool = False, order: int = 1) -> np.ndarray:
    """Resample a stack of slices (C, slices, H, W) in-plane to ``size`` (rows, columns) with nnU-Net's own resampling:
    images with spline ``order``, segmentations nearest neighbour (no new label values); slices stay separate."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg
    if tuple(stack.shape[2:]) == tuple(size):
        return stack
    resampled = resample_data_or_seg(stack, (stack.shape[1], *size), is_seg=is_seg, axis=0,
                                     order=0 if is_seg else order, do_separate_z=True)
    return resampled if is_seg else resampled.astype(np.float32)


def resampled_spacing(spacing: Sequence[float], old_size: Sequence[int], size: Sequence[int]) -> List[float]:
    """In-plane spacing after resampling to ``size``: the physical extent stays the same."""
    return [s * old / new for s, old, new in zip(spacing, old_size, size)]


def slices_with_content(images: np.ndarray) -> np.ndarray:
    """(slices,) bool for images (C, slices, H, W): False where every channel is zero (outside the head). nnU-Net
    cannot normalise such a slice (its z-score inside the nonzero mask would divide by zero)."""
    return (images != 0).any(axis=(0, 2, 3))


def _write_unlabeled_slices(images: np.ndarray, indices: List[int], spacing: List[float], job: dict) -> None:
    """Slices (C, slices, H, W)[indices] as unlabeled pretraining images ``<case>_sNNN_XXXX.nii.gz``."""
    if not indices:
        return
    stack = images[:, indices].astype(np.float32)
    size = tuple(job["size"] or stack.shape[2:])
    spacing = resampled_spacing(spacing, stack.shape[2:], size)
    stack = resample_slices(stack, size, order=job["order"])
    for k, index in enumerate(indices):
        for c in range(stack.shape[0]):
            write_slice(stack[c, k], join(job["unlabeled_folder"], f"{job['case']}_s{index:03d}_{c:04d}.nii.gz"),
                        spacing)


def slice_case(job: dict) -> dict:
    """Read one source case, cut the chosen slices, resample them and write them; returns counts for the summary."""
    io = job["reader_writer"]()
    images, properties = io.read_images(job["images"])
    if job["label"] is None:  # an unlabeled source volume: only pretraining images
        images = np.moveaxis(images, job["axis"] + 1, 1)
        spacing = [s for i, s in enumerate(properties["spacing"]) if i != job["axis"]]
        has_content = slices_with_content(images)
        indices = [i for i in range(0, images.shape[1], job["unlabeled_step"]) if has_content[i]]
        _write_unlabeled_slices(images, indices, spacing, job)
        return {"case": job["case"], "slices": [], "empty_skipped": [], "pixels": 0, "label_pixels": {},
                "label_slices": {}, "unlabeled_slices": indices}
    labels, _ = io.read_seg(job["label"])
    if images.shape[1:] != labels.shape[1:] or images.ndim != 4:
        raise DatasetConversionError(f"{job['case']}: image shape {images.shape[1:]} and label shape "
                                     f"{labels.shape[1:]} differ (or are not 3D); fix the source case.")
    axis = job["axis"]
    images, labels = np.moveaxis(images, axis + 1, 1), np.moveaxis(labels, axis + 1, 1)  # (C, slices, H, W)
    spacing = [s for i, s in enumerate(properties["spacing"]) if i != axis]
    foreground = (labels[0] > 0).sum(axis=(1, 2))
    has_content = slices_with_content(images)
    chosen = job["rule"].select(foreground, has_content)
    outside = [i for i in chosen if i >= images.shape[1]]
    if outside:
        raise DatasetConversionError(f"{job['case']}: slice indices {outside} outside the volume ({images.shape[1]} "
                                     f"slices along axis {axis}).")
    empty = [i for i in chosen if not has_content[i]]
    chosen = [i for i in chosen if has_content[i]]
    result = {"case": job["case"], "slices": chosen, "empty_skipped": empty, "pixels": 0, "label_pixels": {},
              "label_slices": {}, "unlabeled_slices": []}
    if job["unlabeled_step"] and (job["part"] == "Tr" or job["unlabeled_test_patients"]):
        # a training patient's chosen slices are training images already; a test patient's are not
        result["unlabeled_slices"] = [i for i in range(0, images.shape[1], job["unlabeled_step"])
                                      if has_content[i] and (i not in chosen or job["part"] == "Ts")]
        _write_unlabeled_slices(images, result["unlabeled_slices"], spacing, job)
    if not chosen:
        return result
    images, labels = images[:, chosen].astype(np.float32), labels[:, chosen]
    size = tuple(job["size"] or images.shape[2:])
    spacing = resampled_spacing(spacing, images.shape[2:], size)
    images, labels = resample_slices(images, size, order=job["order"]), resample_slices(labels, size, is_seg=True)
    label_dtype = np.uint8 if labels.max() < 256 else np.uint16
    for k, index in enumerate(chosen):
        name = f"{job['case']}_s{index:03d}"
        for c in range(images.shape[0]):
            write_slice(images[c, k], join(job["image_folder"], f"{name}_{c:04d}.nii.gz"), spacing)
        write_slice(labels[0, k], join(job["label_folder"], f"{name}.nii.gz"), spacing, label_dtype)
    result["pixels"] = int(labels[0].size)
    for name, values in job["label_members"].items():
        member = np.isin(labels[0], values)
        result["label_pixels"][name] = int(member.sum())
        result["label_slices"][name] = int(member.any(axis=(1, 2)).sum())
    return result


# ----------------------------------------------------------------------------------------------------------------
# the whole dataset


def slice_dataset(source_folder: str, raw_folder: str, dataset_id: int, name: str, *,
                  rule: SliceRule = SliceRule(), axis: int = 0, size: Optional[Sequence[int]] = (128, 128),
                  order: int = 1, test_patients: Optional[Sequence[str]] = None, num_test_patients: int = 0, seed: int = 0,
                  brats_regions: bool = False, overwrite: bool = False, num_processes: int = 1,
                  progress: bool = True, unlabeled_step: Optional[int] = None,
                  unlabeled_test_patients: bool = False) -> dict:
    """Write ``raw_folder/Dataset{dataset_id:03d}_{name}``, the 2D slice dataset of ``source_folder``; returns the
    summary (also stored in the dataset's ``slicing.json``).

    ``axis``: the array axis to slice, as nnU-Net's readers return volumes (0 = the slowest-varying file axis,
    axial for BraTS and MSD). ``size``: (rows, columns) after resampling, or None to keep the source's.
    ``order``: spline order for images (labels always nearest). Held-out patients: ``test_patients`` by source case
    name, or ``num_test_patients`` drawn with ``seed``. ``unlabeled_step``: every K-th other slice (with image
    content) of the training patients, and of the source's ``imagesUnlabeled`` volumes, goes to ``imagesUnlabeled``
    as a pretraining image; test patients give none unless ``unlabeled_test_patients`` (the transductive setting of
    a user who pretrains on every scan, those to be segmented included): then every K-th slice of theirs, their
    test slices among them if the step hits them.
    """
    if unlabeled_test_patients and not unlabeled_step:
        raise DatasetConversionError("unlabeled_test_patients needs unlabeled_step: give the step of the slices.")
    if unlabeled_step is not None and unlabeled_step < 1:
        raise DatasetConversionError(f"unlabeled_step must be a positive number of slices, got {unlabeled_step}.")
    if axis not in (0, 1, 2):
        raise DatasetConversionError(f"axis must be 0, 1 or 2 (an array axis of the 3D volume), got {axis}.")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise DatasetConversionError(f"size must be two positive numbers (rows, columns), got {list(size)}.")
    if not 0 <= order <= 5:
        raise DatasetConversionError(f"order must be a spline order 0..5, got {order}.")
    source_folder = os.path.abspath(source_folder)
    dataset_json, cases = read_source(source_folder)
    maybe_mkdir_p(raw_folder)
    target = check_target_free(raw_folder, dataset_id, name, overwrite)
    if os.path.abspath(target) == source_folder:
        raise DatasetConversionError("The target is the source dataset; choose another id or name.")
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    unlabeled_source = join(source_folder, UNLABELED_IMAGES)
    try:
        unlabeled_volumes = unlabeled_cases(unlabeled_source, dataset_json) if unlabeled_step and \
            isdir(unlabeled_source) else {}
    except ValueError as e:
        raise DatasetConversionError(str(e)) from None
    # label values dataset.json does not declare would be written and then dropped from every statistic
    check_cases(cases, len(channels), dataset_json["file_ending"], axis, rule.fixed_indices(),
                declared_label_values(dataset_json["labels"]), unlabeled_volumes)
    held_out = set(choose_test_patients(list(cases), test_patients, num_test_patients, seed))
    labels, regions_class_order = target_labels(dataset_json, brats_regions)
    members = label_masks(labels)
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    first_case = next(iter(cases.values()))
    try:
        reader_writer = determine_reader_writer_from_dataset_json(dataset_json, first_case["images"][0], verbose=False)
    except RuntimeError as e:
        raise DatasetConversionError(f"nnU-Net has no reader for {first_case['images'][0]}: {e}") from None

    with folder_written_atomically(target) as partial:
        jobs = []
        for case, files in cases.items():
            part = "Ts" if case in held_out else "Tr"
            jobs.append({"case": case, "images": files["images"], "label": files["label"],
                         "reader_writer": reader_writer, "axis": axis, "rule": rule, "size": size, "order": order,
                         "label_members": members, "part": part, "unlabeled_step": unlabeled_step,
                         "unlabeled_test_patients": unlabeled_test_patients,
                         "image_folder": join(partial, f"images{part}"),
                         "label_folder": join(partial, f"labels{part}"),
                         "unlabeled_folder": join(partial, UNLABELED_IMAGES)})
        for part in {job["part"] for job in jobs}:
            maybe_mkdir_p(join(partial, f"images{part}"))
            maybe_mkdir_p(join(partial, f"labels{part}"))
        if unlabeled_step:
            maybe_mkdir_p(join(partial, UNLABELED_IMAGES))
            for case, files in unlabeled_volumes.items():
                jobs.append({"case": case, "images": files, "label": None, "reader_writer": reader_writer,
                             "axis": axis, "size": size, "order": order, "part": "Unlabeled",
                             "unlabeled_step": unlabeled_step, "unlabeled_folder": join(partial, UNLABELED_IMAGES)})
        results = _run(jobs, num_processes, progress)
        part_of = {job["case"]: job["part"] for job in jobs}
        groups = {f"{r['case']}_s{i:03d}": r["case"] for r in results if part_of[r["case"]] == "Tr"
                  for i in r["slices"]}
        if not groups:
            raise DatasetConversionError(f"The rule ({rule.describe()}) chose no slice of any training patient; "
                                         f"choose other slices.")
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(partial, dict(channels), dict(labels), len(groups), ".nii.gz",
                              regions_class_order=regions_class_order, dataset_name=name,
                              description=f"2D slices ({rule.describe()}, axis {axis}) of {source_folder}, "
                                          f"written by nnUNetv2_ddpm_slice_dataset",
                              converted_by="nnunet_ddpm",
                              license=dataset_json.get("licence", dataset_json.get("license", "see the source")))
        save_json(dict(sorted(groups.items())), join(partial, GROUPS_FILE), sort_keys=False)
        summary = _summary(target, results, part_of, members)
        save_json({"source": source_folder, "rule": asdict(rule), "axis": axis, "size": list(size) if size else None,
                   "order": order, "test_patients": sorted(held_out),
                   "slices": {r["case"]: r["slices"] for r in results}, "summary": summary},
                  join(partial, SLICING_RECORD), sort_keys=False)
    return summary


def _run(jobs: List[dict], num_processes: int, progress: bool) -> List[dict]:
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="Slicing volumes", unit="volume", disable=not progress)
    if num_processes <= 1:
        results = []
        for job in jobs:
            results.append(slice_case(job))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = []
            for result in pool.imap_unordered(slice_case, jobs):
                results.append(result)
                bar.update()
    bar.close()
    return sorted(results, key=lambda r: r["case"])


def _summary(target: str, results: List[dict], part_of: Dict[str, str], members: dict) -> dict:
    summary = {"folder": target, "unlabeled_images": sum(len(r["unlabeled_slices"]) for r in results)}
    for part, title in (("Tr", "training"), ("Ts", "test")):
        mine = [r for r in results if part_of[r["case"]] == part]
        pixels = sum(r["pixels"] for r in mine)
        summary[title] = {
            "cases": sum(len(r["slices"]) for r in mine),
            "patients": sum(1 for r in mine if r["slices"]),
            "patients_without_slices": [r["case"] for r in mine if not r["slices"]],
            "empty_slices_skipped": sum(len(r["empty_skipped"]) for r in mine),
            "labels": {name: {"pixel_fraction": sum(r["label_pixels"].get(name, 0) for r in mine) / max(pixels, 1),
                              "cases_with": sum(r["label_slices"].get(name, 0) for r in mine)} for name in members}}
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"Wrote {summary['folder']}"] + \
        ([f"unlabeled pretraining images: {summary['unlabeled_images']}"] if summary.get("unlabeled_images") else [])
    for title in ("training", "test"):
        part = summary[title]
        if part["cases"] == 0 and not part["patients_without_slices"]:
            continue
        lines.append(f"{title}: {part['cases']} cases from {part['patients']} patients"
                     + (f"; {len(part['patients_without_slices'])} patients without a chosen slice"
                        if part["patients_without_slices"] else "")
                     + (f"; {part['empty_slices_skipped']} all-zero slices skipped"
                        if part["empty_slices_skipped"] else ""))
        for label, numbers in part["labels"].items():
            lines.append(f"  {label:<24} {numbers['pixel_fraction']:7.2%} of pixels, in {numbers['cases_with']} "
                         f"of {part['cases']} cases")
    return "\n".join(lines)


def resolve_source(source: str) -> str:
    """A folder, or a dataset name or id in $nnUNet_raw."""
    if os.path.isdir(source):
        return source
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    if not nnUNet_raw.is_set():
        raise DatasetConversionError(f"{source} is not a folder and nnUNet_raw is not set to look it up.")
    try:
        return join(str(nnUNet_raw), maybe_convert_to_dataset_name(source))
    except RuntimeError as e:
        raise DatasetConversionError(f"{source} is neither a folder nor a dataset name or id in $nnUNet_raw "
                                     f"({nnUNet_raw}): {e}") from None


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Turn a 3D nnU-Net raw dataset into a 2D slice dataset (one-slice volumes, out-of-plane spacing "
                    "999) with patient groups for nnUNetv2_ddpm_make_splits. Default: the paper's rule, axial slices "
                    "70, 75, ..., 100 resized to 128 x 128 (Alshenoudy et al. 2023).")
    parser.add_argument("-s", required=True, help="source: a raw dataset folder, or its name or id in $nnUNet_raw")
    parser.add_argument("-d", type=int, required=True, help="id of the new dataset")
    parser.add_argument("-n", required=True, help="name of the new dataset (no '_')")
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--slices", type=int, nargs="+", default=None,
                       help=f"slice indices (default: the paper's {list(PAPER_SLICES)})")
    rules.add_argument("--every", type=int, metavar="K", help="every K-th slice (from --start)")
    rules.add_argument("--foreground", action="store_true",
                       help="the slices with foreground (every --step-th from --start, at least --min-foreground "
                            "labelled pixels)")
    rules.add_argument("--stratified", type=int, metavar="N",
                       help="N slices per volume, --foreground-fraction of them with foreground, the rest without")
    parser.add_argument("--start", type=int, default=0, help="first slice for --every/--foreground/--stratified")
    parser.add_argument("--step", type=int, default=1, help="step for --foreground/--stratified (default: 1)")
    parser.add_argument("--min-foreground", type=int, default=1, help="labelled pixels a foreground slice needs")
    parser.add_argument("--foreground-fraction", type=float, default=0.5, help="for --stratified (default: 0.5)")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2),
                        help="array axis to slice as nnU-Net reads the volume; 0 is axial for BraTS/MSD (default)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("ROWS", "COLUMNS"),
                      help="in-plane size after resampling (default: 128 128)")
    size.add_argument("--keep-size", action="store_true", help="keep the source's in-plane size and spacing")
    parser.add_argument("--order", type=int, default=1, help="spline order for images (default 1, bilinear; "
                                                             "labels always nearest)")
    test = parser.add_mutually_exclusive_group()
    test.add_argument("--num-test-patients", type=int, default=0, help="hold out this many whole patients, drawn "
                                                                       "with --seed, into imagesTs/labelsTs")
    test.add_argument("--test-patients", nargs="+", help="hold out these source cases (patients)")
    parser.add_argument("--seed", type=int, default=0, help="for --num-test-patients (default: 0)")
    parser.add_argument("--brats-regions", action="store_true",
                        help="write BraTS regions (whole tumor 1,2,3; tumor core 2,3; enhancing 3) for a source with "
                             "plain labels 0-3 such as MSD Task01")
    parser.add_argument("--unlabeled-step", type=int, default=None, metavar="K",
                        help="also write every K-th other slice of the training patients (and of the source's "
                             "imagesUnlabeled volumes) to imagesUnlabeled, for the DDPM pretraining")
    parser.add_argument("--unlabeled-test-patients", action="store_true",
                        help="with --unlabeled-step: the test patients' slices go to imagesUnlabeled too (transductive: "
                             "pretraining on every scan, those to be segmented included)")
    parser.add_argument("--raw", default=None, help="where to write the new dataset (default: $nnUNet_raw)")
    parser.add_argument("-np", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target dataset")
    args = parser.parse_args(argv)
    try:  # SliceRule checks its numbers
        if args.every:
            rule = SliceRule("every", step=args.every, start=args.start)
        elif args.foreground:
            rule = SliceRule("foreground", step=args.step, start=args.start, min_foreground=args.min_foreground)
        elif args.stratified:
            rule = SliceRule("stratified", step=args.step, start=args.start, min_foreground=args.min_foreground,
                             per_case=args.stratified, foreground_fraction=args.foreground_fraction)
        else:
            rule = SliceRule("indices", indices=tuple(args.slices or PAPER_SLICES))
    except ValueError as e:
        parser.error(str(e))
    program = "nnUNetv2_ddpm_slice_dataset"
    require_nnunet_folders(program, read=() if os.path.isdir(args.s) else ("nnUNet_raw",))  # -s names a dataset
    raw = output_folder_or_nnunet(program, args.raw, "nnUNet_raw", "--raw")
    try:
        summary = slice_dataset(resolve_source(args.s), raw, args.d, args.n, rule=rule, axis=args.axis,
                                size=None if args.keep_size else args.size, order=args.order,
                                test_patients=args.test_patients, num_test_patients=args.num_test_patients,
                                seed=args.seed, brats_regions=args.brats_regions, overwrite=args.overwrite,
                                num_processes=args.np, unlabeled_step=args.unlabeled_step,
                                unlabeled_test_patients=args.unlabeled_test_patients)
    except DatasetConversionError as e:
        sys.exit(f"{program}: {e}")
    print(format_summary(summary))
    print(f"Next: nnUNetv2_plan_and_preprocess -d {args.d} -c 2d, then nnUNetv2_ddpm_make_splits -d {args.d} "
          f"--groups {join(summary['folder'], GROUPS_FILE)}")


if __name__ == "__main__":
    main()
