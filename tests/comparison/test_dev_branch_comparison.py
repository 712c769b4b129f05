"""The data and draws behind the measured comparison with nnU-Net's development branch
(``benchmarks/dev_branch_comparison.py``), checked by hand (fast; the comparison itself needs the branch)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dev_branch_comparison.py"
spec = importlib.util.spec_from_file_location("dev_branch_comparison", SCRIPT)
comparison = importlib.util.module_from_spec(spec)
spec.loader.exec_module(comparison)


def _write(array: np.ndarray, path: Path, dtype) -> None:
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(image, str(path))


def test_shrunk_brats_holds_block_means_and_the_labels_at_block_centres(tmp_path):
    source = tmp_path / "Dataset600_BraTSReal"
    for sub in ("imagesTr", "labelsTr"):
        (source / sub).mkdir(parents=True)
    flair = np.arange(10 ** 3, dtype=float).reshape(10, 10, 10)
    _write(flair, source / "imagesTr" / "p1_0000.nii.gz", np.float32)
    _write(2 * flair, source / "imagesTr" / "p1_0001.nii.gz", np.float32)
    labels = np.zeros((10, 10, 10))
    labels[2, 2, 2], labels[7, 7, 7], labels[0, 0, 0], labels[7, 2, 2] = 3, 1, 2, 2  # (0, 0, 0) is no centre
    _write(labels, source / "labelsTr" / "p1.nii.gz", np.uint8)
    (source / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole tumor": [1, 2, 3]},
                                                     "name": "BraTSReal", "file_ending": ".nii.gz"}))

    comparison.write_shrunk_brats(source, tmp_path / "raw", 978, "BraTSDevBranch", 5)

    target = tmp_path / "raw" / "Dataset978_BraTSDevBranch"
    shrunk = sitk.ReadImage(str(target / "imagesTr" / "p1_0000.nii.gz"))
    assert shrunk.GetSpacing() == (5.0, 5.0, 5.0) and shrunk.GetOrigin() == (12.0, 22.0, 32.0)
    # block (z, y, x) = (1, 0, 1): rows 5..9, 0..4, 5..9 of z * 100 + y * 10 + x, whose mean is 700 + 20 + 7
    assert sitk.GetArrayFromImage(shrunk)[1, 0, 1] == 727.0
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / "p1_0001.nii.gz")))[1, 0, 1] == 1454.0
    shrunk_labels = sitk.ReadImage(str(target / "labelsTr" / "p1.nii.gz"))
    assert shrunk_labels.GetOrigin() == shrunk.GetOrigin() and shrunk_labels.GetSize() == (2, 2, 2)
    expected = np.zeros((2, 2, 2))
    expected[0, 0, 0], expected[1, 1, 1], expected[1, 0, 0] = 3, 1, 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(shrunk_labels), expected)
    assert json.loads((target / "dataset.json").read_text())["name"] == "BraTSDevBranch"


def test_labelled_draws_are_seeded_disjoint_from_their_evaluation_and_differ_between_draws():
    cases = [f"case_{i:02d}" for i in range(23)]
    splits = comparison.labelled_draws(cases, 6, 3)
    assert splits == comparison.labelled_draws(cases, 6, 3)
    for split in splits:
        assert len(split["train"]) == 6 and sorted(split["train"] + split["val"]) == cases
    assert splits[0]["train"] == sorted(np.random.default_rng(0).permutation(cases)[:6].tolist())
    assert splits[0]["train"] != splits[1]["train"] != splits[2]["train"]


def test_region_and_label_names_follow_nnunet_summary_keys():
    regions = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}}
    assert comparison.label_names(regions) == {"(1, 2, 3)": "whole tumor", "(2, 3)": "tumor core",
                                               "(3,)": "enhancing tumor"}
    assert comparison.label_names({"labels": {"background": 0, "edema": 1}}) == {"1": "edema"}
