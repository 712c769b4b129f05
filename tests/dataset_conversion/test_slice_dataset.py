"""The slicer on stand-ins of BraTS 2021 (nnU-Net's Dataset137 layout, sliced by the command and round-tripped through
nnUNetv2_plan_and_preprocess) and MSD Task01 (converted by nnUNetv2_convert_MSD_dataset); rules, resampling and bad
input in-process.

Only one dataset is planned: nnU-Net's fingerprint draws 1e8 intensity samples per channel whatever the dataset's
size, about 10 s per channel here.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError
from nnunet_ddpm.dataset_conversion.slice_dataset import slice_dataset
from nnunet_ddpm.dataset_conversion.slice_rules import PAPER_SLICES, SliceRule
from tests.dataset_conversion.standins import (write_brats21_standin, write_msd_task01_standin,
                                               write_tiny_raw_dataset)

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

REPO = Path(__file__).resolve().parents[2]
BRATS3D, BRATS2D, MSD3D, MSD2D = 980, 981, 982, 983
TEST_PATIENTS = ["BraTS2021_00001", "BraTS2021_00004"]


def _module(nnunet, module, *args, ok=True):
    """Run ``python -m nnunet_ddpm.dataset_conversion.<module>`` from this checkout, as the console script does."""
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return nnunet.run(sys.executable, "-m", f"nnunet_ddpm.dataset_conversion.{module}", *args, ok=ok,
                      training=False, extra_env=env)


def _cases(folder: Path, sub: str):
    return sorted(f.name[:-len(".nii.gz")] for f in (folder / sub).glob("*.nii.gz"))


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def planned(nnunet):
    """The BraTS 2021 stand-in sliced by the command with the paper's rule, planned and preprocessed."""
    write_brats21_standin(str(nnunet.raw), BRATS3D, num_patients=6, in_plane=40)
    result = _module(nnunet, "slice_dataset", "-s", BRATS3D, "-d", BRATS2D, "-n", "BraTSSlices", "--size", 32, 32,
                     "--test-patients", *TEST_PATIENTS)
    nnunet.plan_and_preprocess(BRATS2D, "2d")
    return result.output


@pytest.fixture(scope="module")
def msd_converted(nnunet, tmp_path_factory) -> Path:
    """An MSD Task01 stand-in converted by nnU-Net's own nnUNetv2_convert_MSD_dataset (4D images split)."""
    task = write_msd_task01_standin(str(tmp_path_factory.mktemp("msd")))
    nnunet.run("nnUNetv2_convert_MSD_dataset", "-i", task, "-overwrite_id", MSD3D, "-np", 1, training=False)
    return nnunet.raw / f"Dataset{MSD3D}_BrainTumour"


def test_brats21_paper_slices_plan_as_2d_with_regions_groups_and_held_out_patients(nnunet, planned):
    folder = nnunet.raw / f"Dataset{BRATS2D}_BraTSSlices"
    training, test = _cases(folder, "labelsTr"), _cases(folder, "labelsTs")
    train_patients = [f"BraTS2021_{i:05d}" for i in (0, 2, 3, 5)]
    assert training == [f"{p}_s{s:03d}" for p in train_patients for s in PAPER_SLICES]
    assert test == [f"{p}_s{s:03d}" for p in TEST_PATIENTS for s in PAPER_SLICES]
    assert sorted({f.name[:-len("_0000.nii.gz")] for f in (folder / "imagesTr").iterdir()}) == training
    assert not any(p in f.name for f in (folder / "imagesTr").iterdir() for p in TEST_PATIENTS)
    groups = json.loads((folder / "case_groups.json").read_text())
    assert sorted(groups) == training and all(groups[c] == c.split("_s")[0] for c in training)

    image = sitk.ReadImage(str(folder / "imagesTr" / "BraTS2021_00000_s085_0003.nii.gz"))
    assert image.GetSize() == (32, 32, 1) and image.GetSpacing() == pytest.approx((1.25, 1.25, 999.0))
    labels = np.stack([_array(folder / "labelsTr" / f"{c}.nii.gz") for c in training])
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels == 3).any() and (labels == 1).any()

    raw_json = json.loads((folder / "dataset.json").read_text())
    assert raw_json["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert raw_json["numTraining"] == len(training)
    preprocessed = nnunet.preprocessed / folder.name
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert len(plans["configurations"]["2d"]["patch_size"]) == 2
    assert plans["configurations"]["2d"]["spacing"] == pytest.approx([1.25, 1.25])
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    assert dataset_json["regions_class_order"] == [1, 2, 3]
    assert dataset_json["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                      "enhancing tumor": [3]}
    assert "whole tumor" in planned and "training: 28 cases from 4 patients" in planned

    # the group file chains into the grouped folds
    nnunet.run("nnUNetv2_ddpm_make_splits", "-d", BRATS2D, "--groups", folder / "case_groups.json", "--folds", 2,
               training=False)
    for fold in json.loads((preprocessed / "splits_final.json").read_text()):
        assert not {groups[c] for c in fold["train"]} & {groups[c] for c in fold["val"]}


def test_msd_task01_after_nnunet_conversion_stratified_with_brats_regions(nnunet, msd_converted):
    slice_dataset(str(msd_converted), str(nnunet.raw), MSD2D, "MSDSlices", rule=SliceRule("stratified", per_case=4),
                  size=None, brats_regions=True, progress=False)
    folder = nnunet.raw / f"Dataset{MSD2D}_MSDSlices"
    training = _cases(folder, "labelsTr")
    assert len(training) == 4 * 4 and not (folder / "imagesTs").exists()
    assert all(len(list((folder / "imagesTr").glob(f"{c}_*.nii.gz"))) == 4 for c in training)
    per_case = {}
    for c in training:
        per_case.setdefault(c.split("_s")[0], []).append((_array(folder / "labelsTr" / f"{c}.nii.gz") > 0).any())
    assert all(sum(has) == 2 and len(has) == 4 for has in per_case.values())  # 2 with, 2 without foreground
    assert _array(folder / "labelsTr" / f"{training[0]}.nii.gz").shape == (1, 32, 32)  # --keep-size
    assert set(np.unique([_array(folder / "labelsTr" / f"{c}.nii.gz") for c in training])) <= {0, 1, 2, 3}
    record = json.loads((folder / "slicing.json").read_text())
    assert record["rule"]["kind"] == "stratified" and record["size"] is None
    out_json = json.loads((folder / "dataset.json").read_text())
    assert out_json["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                  "enhancing tumor": [3]} and out_json["regions_class_order"] == [1, 2, 3]
    source_json = json.loads((msd_converted / "dataset.json").read_text())
    assert out_json["channel_names"] == source_json["channel_names"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd",
                                                                         "3": "T2w"}


def test_plain_labels_carried_over_and_msd_label_names(msd_converted, tmp_path):
    summary = slice_dataset(str(msd_converted), str(tmp_path), 1, "Plain",
                            rule=SliceRule("foreground", step=3), size=(16, 16), num_test_patients=1, progress=False)
    out = json.loads((tmp_path / "Dataset001_Plain" / "dataset.json").read_text())
    assert out["labels"] == {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    assert "regions_class_order" not in out
    assert summary["training"]["patients"] == 3 and summary["test"]["patients"] == 1
    assert summary["training"]["labels"]["edema"]["cases_with"] >= 1
    assert 0 < summary["training"]["labels"]["edema"]["pixel_fraction"] < 1


def test_slice_rules():
    foreground = np.array([0, 0, 5, 9, 0, 3, 0, 0, 1, 0])
    content = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    assert SliceRule().select(foreground, content) == [70, 75, 80, 85, 90, 95, 100]
    assert SliceRule("every", step=3, start=1).select(foreground, content) == [1, 4, 7]
    assert SliceRule("foreground").select(foreground, content) == [2, 3, 5, 8]
    assert SliceRule("foreground", min_foreground=4).select(foreground, content) == [2, 3]
    chosen = SliceRule("stratified", per_case=4).select(foreground, content)
    assert len(chosen) == 4 and sum(foreground[chosen] > 0) == 2 and all(content[chosen])
    # too few slices without foreground: filled up with foreground slices
    assert SliceRule("stratified", per_case=6, foreground_fraction=0).select(foreground, content) == [1, 2, 4, 6, 7, 8]
    with pytest.raises(ValueError, match="step"):
        SliceRule("every", step=0)
    with pytest.raises(ValueError, match="Unknown slice rule"):
        SliceRule("middle")


def test_resampling_nearest_labels_linear_images_spacing_and_axis(tmp_path):
    z, y, x = 6, 20, 30
    ramp = np.broadcast_to(np.arange(x, dtype=np.float32), (z, y, x))
    labels = np.zeros((z, y, x), np.uint8)
    labels[:, 5:15, 10:20], labels[:, 8:12, 13:17] = 1, 2
    source = write_tiny_raw_dataset(str(tmp_path / "src"), {"p1": ramp[None]}, {"p1": labels}, spacing=(3, 1, 2))
    slice_dataset(source, str(tmp_path), 1, "Resized", rule=SliceRule(indices=(2, 4)), size=(10, 12), progress=False)
    out = tmp_path / "Dataset001_Resized"
    image = sitk.ReadImage(str(out / "imagesTr" / "p1_s002_0000.nii.gz"))
    assert image.GetSize() == (12, 10, 1)
    assert image.GetSpacing() == pytest.approx((2 * 30 / 12, 1 * 20 / 10, 999.0))  # same extent
    row = sitk.GetArrayFromImage(image)[0, 5]
    assert np.all(np.diff(row) > 0) and row.min() >= 0 and row.max() <= x - 1  # interpolated, not clipped steps
    assert len(np.unique(row)) == 12
    resized_labels = _array(out / "labelsTr" / "p1_s004.nii.gz")[0]
    assert set(np.unique(resized_labels)) == {0, 1, 2}  # nearest: no in-between values
    assert (resized_labels == 1).sum() + (resized_labels == 2).sum() == pytest.approx(10 * 12 / 6, abs=6)

    summary = slice_dataset(source, str(tmp_path), 2, "Sagittal", rule=SliceRule("every", step=10), axis=2, size=None,
                            progress=False)
    sagittal = sitk.ReadImage(str(tmp_path / "Dataset002_Sagittal" / "imagesTr" / "p1_s010_0000.nii.gz"))
    assert sagittal.GetSize() == (20, 6, 1) and sagittal.GetSpacing() == pytest.approx((1.0, 3.0, 999.0))
    assert np.all(sitk.GetArrayFromImage(sagittal) == 10)
    # sagittal slice 0 of the ramp is all zero: skipped, nothing there for nnU-Net to normalise
    assert _cases(tmp_path / "Dataset002_Sagittal", "labelsTr") == ["p1_s010", "p1_s020"]
    assert summary["training"]["empty_slices_skipped"] == 1


def _no_target(raw: Path, dataset_id: int):
    return not list(raw.glob(f"Dataset{dataset_id:03d}_*"))


def test_bad_input_is_refused_before_anything_is_written(tmp_path, nnunet):
    raw = tmp_path / "raw"
    volume = np.ones((1, 8, 10, 10), np.float32)
    good = write_tiny_raw_dataset(str(tmp_path / "good"), {"a": volume, "b": volume},
                                  {"a": np.zeros((8, 10, 10)), "b": np.zeros((8, 10, 10))})

    not_raw = tmp_path / "not_raw"
    (not_raw / "imagesTr").mkdir(parents=True)
    with pytest.raises(DatasetConversionError, match="is not an nnU-Net raw dataset: dataset.json, labelsTr missing"):
        slice_dataset(str(not_raw), str(raw), 1, "X", progress=False)
    assert _no_target(raw, 1)

    with pytest.raises(DatasetConversionError, match=r"slice indices \[70, 75, 80, 85, 90, 95, 100\] outside the "
                                                     r"volume, which has 8 slices along axis 0"):
        slice_dataset(good, str(raw), 1, "X", progress=False)
    assert _no_target(raw, 1)

    mismatched = write_tiny_raw_dataset(str(tmp_path / "mismatch"), {"a": volume, "b": volume},
                                        {"a": np.zeros((8, 10, 10)), "b": np.zeros((8, 10, 12))})
    with pytest.raises(DatasetConversionError, match=r"b: \S*b.nii.gz does not lie on the grid of \S*b_0000.nii.gz: "
                                                     r"size \(12, 10, 8\) instead of \(10, 10, 8\)"):
        slice_dataset(mismatched, str(raw), 1, "X", rule=SliceRule(indices=(1,)), progress=False)
    assert _no_target(raw, 1)

    slice_dataset(good, str(raw), 1, "X", rule=SliceRule(indices=(1,)), progress=False)
    before = sorted(p.name for p in (raw / "Dataset001_X" / "imagesTr").iterdir())
    with pytest.raises(DatasetConversionError, match="Dataset001_X exists.*--overwrite"):
        slice_dataset(good, str(raw), 1, "X", rule=SliceRule(indices=(2,)), progress=False)
    assert sorted(p.name for p in (raw / "Dataset001_X" / "imagesTr").iterdir()) == before
    slice_dataset(good, str(raw), 1, "X", rule=SliceRule(indices=(2,)), overwrite=True, progress=False)
    assert sorted(p.name for p in (raw / "Dataset001_X" / "imagesTr").iterdir()) == ["a_s002_0000.nii.gz",
                                                                                     "b_s002_0000.nii.gz"]
    with pytest.raises(DatasetConversionError, match="already has a dataset with id 1: Dataset001_X"):
        slice_dataset(good, str(raw), 1, "Other", rule=SliceRule(indices=(2,)), progress=False)
    with pytest.raises(DatasetConversionError, match="Cannot hold out 2 of 2 patients"):
        slice_dataset(good, str(raw), 2, "X", rule=SliceRule(indices=(2,)), num_test_patients=2, progress=False)
    assert _no_target(raw, 2) and not list(raw.glob("*.partial"))

    # the command prints the message, no traceback, and exits non-zero
    result = _module(nnunet, "slice_dataset", "-s", not_raw, "-d", 3, "-n", "X", "--raw", raw, ok=False)
    assert result.returncode != 0 and "Traceback" not in result.output
    assert "nnUNetv2_ddpm_slice_dataset:" in result.output and "is not an nnU-Net raw dataset" in result.output
    assert _no_target(raw, 3)
