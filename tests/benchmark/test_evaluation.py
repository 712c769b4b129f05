"""The in-process evaluation gives exactly nnU-Net's ``compute_metrics_on_folder`` summary, for labels and regions."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_ddpm.benchmark.evaluation import metrics_on_folder_in_process


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
