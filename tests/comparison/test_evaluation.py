"""The evaluation: the in-process summary is exactly nnU-Net's; HD95 and region names against hand-computed values."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_ddpm.comparison.evaluation import (EVALUATION_FILE, evaluate_prediction_folder, hd95,
                                              metrics_on_folder_in_process, region_names)


@pytest.mark.parametrize("regions", [[1, 2, 3], [(1, 2, 3), (2, 3), (3,)]], ids=["labels", "regions"])
def test_in_process_summary_equals_nnunets(tmp_path, regions):
    rng = np.random.default_rng(0)
    for folder in ("ref", "pred"):
        (tmp_path / folder).mkdir()
    for case in range(3):
        reference = rng.integers(0, 4, (1, 16, 16)).astype(np.uint8)
        prediction = np.where(rng.random((1, 16, 16)) < 0.7, reference, rng.integers(0, 4, (1, 16, 16))).astype(
            np.uint8)
        prediction[:, :, :8] *= case != 2  # an empty label in one case: NaN handling must agree
        for folder, array in (("ref", reference), ("pred", prediction)):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / folder / f"case_{case}.nii.gz"))
    ours = metrics_on_folder_in_process(str(tmp_path / "ref"), str(tmp_path / "pred"), str(tmp_path / "ours.json"),
                                        SimpleITKIO(), ".nii.gz", regions, None)
    theirs = compute_metrics_on_folder(str(tmp_path / "ref"), str(tmp_path / "pred"), str(tmp_path / "theirs.json"),
                                       SimpleITKIO(), ".nii.gz", regions, None, 1)
    assert json.loads((tmp_path / "ours.json").read_text()) == json.loads((tmp_path / "theirs.json").read_text())
    assert ours["foreground_mean"]["Dice"] == pytest.approx(theirs["foreground_mean"]["Dice"])
    assert 0 < ours["foreground_mean"]["Dice"] < 1


def square(shape=(40, 40), rows=(5, 25), columns=(5, 25)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], columns[0]:columns[1]] = True
    return mask


def cube(slices) -> np.ndarray:
    """The 20 x 20 square on 20 slices of a 30-slice volume."""
    volume = np.zeros((30, 40, 40), dtype=bool)
    volume[slices[0]:slices[1]] = square()
    return volume


# Hand values. A 20 x 20 square against itself shifted by 3 pixels along the first axis: the shifted-away side of each
# square (20 surface pixels, 26 % of the 76) lies 3 pixels from the other square's surface, so 3 pixels times that
# axis's spacing. Against itself missing its last column: that column's 20 pixels lie 1 pixel from the new edge.
# A 20^3 cube shifted by 2 slices of 3 mm: its outer face (400 of 2168 surface voxels) is 6 mm away.
@pytest.mark.parametrize("prediction, reference, spacing, expected", [
    (square(), square(rows=(8, 28)), (1, 1), 3.0),
    (square(), square(columns=(5, 24)), (1, 1), 1.0),
    (square(), square(rows=(8, 28)), (2, 1), 6.0),
    (square(), square(columns=(8, 28)), (2, 1), 3.0),
    (square()[None], square(rows=(8, 28))[None], (999, 1, 1), 3.0),  # nnU-Net's volume of a 2D image
    (square()[None], square(columns=(5, 24))[None], (999, 1, 1), 1.0),
    (square()[None], square(rows=(8, 28))[None], (999, 2, 1), 6.0),
    (cube(slices=(3, 23)), cube(slices=(5, 25)), (3, 1, 1), 6.0),
], ids=["shift3", "missing_column", "anisotropic_shift_first_axis", "anisotropic_shift_second_axis", "volume_shift3",
        "volume_missing_column", "volume_anisotropic", "cube_3d_anisotropic"])
def test_hd95_hand_values(prediction, reference, spacing, expected):
    assert hd95(prediction, reference, spacing) == pytest.approx(expected)
    assert hd95(reference, prediction, spacing) == pytest.approx(expected)  # symmetric


def test_hd95_empty_masks():
    empty = np.zeros((1, 40, 40), dtype=bool)
    assert hd95(empty, empty, (999, 1, 1)) == 0.0  # nothing to find, nothing found
    assert np.isnan(hd95(square()[None], empty, (999, 1, 1)))  # undefined: left out of means and counted
    assert np.isnan(hd95(empty, square()[None], (999, 1, 1)))


BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def test_region_names_from_dataset_json():
    regions = [(1, 2, 3), (2, 3), (3,)]  # nnU-Net's foreground regions for BRATS_LABELS
    assert region_names({"labels": BRATS_LABELS}, regions) == {
        "(1, 2, 3)": "whole tumor", "(2, 3)": "tumor core", "(3,)": "enhancing tumor"}
    labels = {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}
    assert region_names({"labels": labels}, [np.int64(1), 2, 3]) == {"1": "edema", "2": "necrosis", "3": "enhancing"}


def test_evaluation_json_of_a_2d_dataset_has_the_hand_values(tmp_path):
    """2D cases as nnU-Net stores them (1 x H x W, out-of-plane spacing 999), one-label regions named."""
    preprocessed, labels, predictions = (tmp_path / n for n in ("preprocessed", "labelsTs", "predictions"))
    for folder in (preprocessed, labels, predictions):
        folder.mkdir()
    (preprocessed / "dataset.json").write_text(json.dumps({
        "labels": BRATS_LABELS, "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz",
        "channel_names": {"0": "T1"}, "numTraining": 2}))
    (preprocessed / "nnUNetPlans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    # case_0: label 3 shifted by 3 pixels of 1 mm; case_1: label 2 shifted by 3 pixels of 2 mm along the first axis
    cases = {"case_0": (3, (999, 1, 1)), "case_1": (2, (999, 2, 1))}
    for case, (label, spacing) in cases.items():
        for folder, rows in ((labels, (5, 25)), (predictions, (8, 28))):
            image = sitk.GetImageFromArray(square(rows=rows)[None].astype(np.uint8) * label)
            image.SetSpacing(spacing[::-1])
            sitk.WriteImage(image, str(folder / f"{case}.nii.gz"))
    evaluate_prediction_folder(str(predictions), str(labels), str(preprocessed), num_processes=1)
    evaluation = json.loads((predictions / EVALUATION_FILE).read_text())
    assert evaluation["regions"] == ["whole tumor", "tumor core", "enhancing tumor"]
    found = {(r["case"], r["region"]): (r["dice"], r["hd95"]) for r in evaluation["per_case"]}
    overlap_dice = 2 * 17 * 20 / (2 * 20 * 20)
    assert found[("case_0", "whole tumor")] == pytest.approx((overlap_dice, 3.0))
    assert found[("case_0", "enhancing tumor")] == pytest.approx((overlap_dice, 3.0))
    assert found[("case_1", "tumor core")] == pytest.approx((overlap_dice, 6.0))
    dice, distance = found[("case_1", "enhancing tumor")]  # both empty: nnU-Net's Dice is NaN, HD95 0
    assert np.isnan(dice) and distance == 0.0
