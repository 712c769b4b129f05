"""Every row of documentation/bad_inputs.md, run through the real console scripts: the message the page quotes is
what the user sees, without a traceback, and nothing is written. Plus the unlabeled set that adds up, and the
messages a Python caller of the checkpoint loader gets.

The rows that need a planned dataset or start ``nnUNetv2_train`` are slow; the others run in the quick tier.
"""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_ddpm.dataset_conversion.raw_dataset import write_slice, write_volume
from tests.dataset_conversion.standins import write_tiny_raw_dataset

PAGE = Path(__file__).resolve().parents[1] / "documentation" / "bad_inputs.md"
DATASET_ID, DATASET_NAME = 961, "Dataset961_PhantomBad"  # ids of its own: other test files share the raw folder
TRAINER = "nnUNetTrainer_demo_2labels"


def page_rows() -> dict:
    """{case: the message text the page quotes} from the table of documentation/bad_inputs.md."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and re.fullmatch(r"`[a-z-]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[2].strip("`")
    return rows


@pytest.fixture(scope="module")
def planned(nnunet) -> dict:
    """A planned 2D phantom of six cases (two channels): {'folder': preprocessed folder, 'cases': identifiers}."""
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    write_phantom_dataset(str(nnunet.raw), DATASET_ID, "PhantomBad", num_cases=6, size=(40, 40), num_channels=2)
    nnunet.plan_and_preprocess(DATASET_ID, "2d")
    folder = nnunet.preprocessed / DATASET_NAME
    cases = sorted(p.name[:-len(".nii.gz")] for p in (folder / "gt_segmentations").glob("*.nii.gz"))
    return {"folder": folder, "cases": cases}


def _slices(folder: Path, case: str, arrays) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, array in enumerate(arrays):
        paths.append(folder / f"{case}_{c:04d}.nii.gz")
        write_slice(np.asarray(array, np.float32), str(paths[-1]))
    return paths


def _phantom_slice(seed: int, shape=(40, 40)) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 10, shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# one function per row: builds the bad input, runs the command (ok=False: it must fail), checks what else the row
# promises (every bad file named, nothing written); returns the completed process


def unlabeled_nan(nnunet, tmp_path, planned):
    folder = tmp_path / "unlabeled"
    _slices(folder, "scan_a", [_phantom_slice(1), _phantom_slice(2)])
    nan = _slices(folder, "scan_b", [np.full((40, 40), np.nan), _phantom_slice(3)])[0]
    inf = _slices(folder, "scan_c", [_phantom_slice(4), _phantom_slice(5)])[1]
    write_slice(np.where(np.eye(40) > 0, np.inf, 1).astype(np.float32), str(inf))
    result = nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i", folder,
                        training=False, ok=False)
    assert str(nan) in result.output and str(inf) in result.output  # every bad file, not only the first
    assert "0 NaN and 40 Inf values" in result.output and "2 of 3 cases" in result.output
    assert not (planned["folder"] / "nnUNetPlans_2d_unlabeled").exists()
    return result


def unlabeled_grid(nnunet, tmp_path, planned):
    folder = tmp_path / "unlabeled"
    _slices(folder, "scan_a", [_phantom_slice(1), _phantom_slice(2, (40, 38))])
    result = nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i", folder,
                        training=False, ok=False)
    assert "size (38, 40, 1) instead of (40, 40, 1)" in result.output
    assert not (planned["folder"] / "nnUNetPlans_2d_unlabeled").exists()
    return result


def unlabeled_no_preprocessed(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i", tmp_path,
                      training=False, ok=False, extra_env={"nnUNet_preprocessed": ""})


def _source_dataset(tmp_path, change_label=None, change_image=None) -> Path:
    volumes = {c: np.stack([np.random.default_rng(i).normal(100, 10, (6, 10, 10)) for i in range(2)])
               for c in ("a", "b")}
    labels = {c: np.zeros((6, 10, 10)) for c in volumes}
    labels["a"][2, 3:6, 3:6] = 1
    if change_label:
        change_label(labels["b"])
    if change_image:
        change_image(volumes["b"][1])
    return Path(write_tiny_raw_dataset(str(tmp_path / "source"), volumes, labels))


def _slicer(nnunet, tmp_path, source):
    out = tmp_path / "out"
    result = nnunet.run("nnUNetv2_ddpm_slice_dataset", "-s", source, "-d", 962, "-n", "Sliced", "--slices", 2,
                        "--raw", out, training=False, ok=False)
    assert not out.exists() or not list(out.iterdir())  # no dataset, no .partial folder
    return result


def slicer_undeclared_label(nnunet, tmp_path):
    source = _source_dataset(tmp_path, change_label=lambda label: label.__setitem__((2, 0, 0), 7))
    result = _slicer(nnunet, tmp_path, source)
    assert str(source / "labelsTr" / "b.nii.gz") in result.output
    return result


def slicer_nan(nnunet, tmp_path):
    source = _source_dataset(tmp_path, change_image=lambda image: image.__setitem__((1, 1, 1), np.nan))
    result = _slicer(nnunet, tmp_path, source)
    assert str(source / "imagesTr" / "b_0001.nii.gz") in result.output
    return result


def _brats_download(tmp_path, change=None) -> Path:
    """One BraTS 2021 case folder: four channels and a segmentation of 24 x 32 x 32 voxels, BraTS labels 0, 1, 2, 4."""
    case = tmp_path / "download" / "BraTS2021_00000"
    case.mkdir(parents=True)
    arrays = {c: np.random.default_rng(i).normal(100, 10, (24, 32, 32)).astype(np.float32)
              for i, c in enumerate(("t1", "t1ce", "t2", "flair"))}
    seg = np.zeros((24, 32, 32), np.uint8)
    seg[10:14, 10:14, 10:14] = 2
    seg[11:13, 11:13, 11:13] = 4
    arrays["seg"] = seg
    if change:
        change(arrays)
    for name, array in arrays.items():
        write_volume(array, str(case / f"BraTS2021_00000_{name}.nii.gz"))
    return case.parent


def _convert_brats(nnunet, tmp_path, change):
    download, out = _brats_download(tmp_path, change), tmp_path / "out"
    result = nnunet.run("nnUNetv2_ddpm_convert_brats", "-i", download, "-d", 963, "--raw", out, training=False,
                        ok=False)
    assert "nothing was written" in result.output
    assert not out.exists() or not list(out.iterdir())
    return result


def brats_grid(nnunet, tmp_path):
    return _convert_brats(nnunet, tmp_path, lambda a: a.__setitem__("flair", a["flair"][:, :30]))


def brats_nan(nnunet, tmp_path):
    return _convert_brats(nnunet, tmp_path, lambda a: a["t2"].__setitem__((5, 5, 5), np.nan))


def brats_label(nnunet, tmp_path):
    return _convert_brats(nnunet, tmp_path, lambda a: a["seg"].__setitem__((0, 0, 0), 5))


def patient_nan(nnunet, tmp_path):
    images = []
    for c in range(2):
        array = np.random.default_rng(c).normal(100, 10, (6, 10, 10)).astype(np.float32)
        array[0, 0, :] = np.nan if c == 1 else array[0, 0, :]
        images.append(tmp_path / f"patient_{c:04d}.nii.gz")
        write_volume(array, str(images[-1]))
    annotation = tmp_path / "annotation.nii.gz"
    write_volume(np.zeros((6, 10, 10), np.uint8), str(annotation))
    out = tmp_path / "out"
    result = nnunet.run("nnUNetv2_ddpm_segment_patient", "-i", *images, "-a", annotation, "--slices", 2, "-o", out,
                        training=False, ok=False)
    assert str(images[1]) in result.output and not out.exists()
    return result


def groups_unknown_case(nnunet, tmp_path, planned):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({**{c: c for c in planned["cases"]}, "ghost_case": "ghost"}))
    splits = planned["folder"] / "splits_final.json"
    before = splits.read_text() if splits.exists() else None
    result = nnunet.run("nnUNetv2_ddpm_make_splits", "-d", DATASET_ID, "--groups", groups, "--overwrite",
                        training=False, ok=False)
    assert "ghost_case" in result.output
    assert (splits.read_text() if splits.exists() else None) == before
    return result


def make_splits_no_preprocessed(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_make_splits", "-d", DATASET_ID, training=False, ok=False,
                      extra_env={"nnUNet_preprocessed": ""})


def benchmark_no_results(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_benchmark", "-d", DATASET_ID, "--dry-run", "-o", tmp_path / "bench",
                      training=False, ok=False, extra_env={"nnUNet_results": ""})


def benchmark_readonly_results(nnunet, tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    # root writes into a folder without write permission; /proc takes no files from anyone
    folder = "/proc" if os.geteuid() == 0 else str(read_only)
    result = nnunet.run("nnUNetv2_ddpm_benchmark", "-d", DATASET_ID, "-o", tmp_path / "bench", training=False,
                        ok=False, extra_env={"nnUNet_results": folder})
    read_only.chmod(0o755)
    assert not (tmp_path / "bench").exists()
    return result


def benchmark_no_exttrainer(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_benchmark", "-d", DATASET_ID, "--dry-run", training=False, ok=False,
                      extra_env={"nnUNet_extTrainer": ""})


def _train_with_splits(nnunet, planned, splits, groups=None, *extra, trainer=TRAINER):
    """``nnUNetv2_train`` fold 0 with a hand-made splits_final.json (and case_groups.json); both removed after."""
    folder = planned["folder"]
    (folder / "splits_final.json").write_text(json.dumps(splits))
    if groups:
        (folder / "case_groups.json").write_text(json.dumps(groups))
    try:
        result = nnunet.train(DATASET_ID, "2d", 0, trainer, *extra, ok=False)
    finally:
        for name in ("splits_final.json", "case_groups.json"):
            (folder / name).unlink(missing_ok=True)
    assert "Epoch 0" not in result.output
    return result


def _folds(cases):
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    return generate_crossval_split(sorted(cases), seed=12345, n_splits=3)


def split_patient_leak(nnunet, tmp_path, planned):
    cases = planned["cases"]
    groups = {c: f"patient{i // 2}" for i, c in enumerate(cases)}  # two cases per patient
    leaking = [{"train": cases[1:], "val": cases[:1]}] + _folds(cases)[1:]
    result = _train_with_splits(nnunet, planned, leaking, groups)
    assert "patient0" in result.output
    return result


def split_unknown_case(nnunet, tmp_path, planned):
    splits = _folds(planned["cases"])
    splits[0]["train"].append("ghost_case")
    return _train_with_splits(nnunet, planned, splits)


def split_missing_case(nnunet, tmp_path, planned):
    splits = [{part: [c for c in fold[part] if c != "phantom_000"] for part in fold}
              for fold in _folds(planned["cases"])]
    return _train_with_splits(nnunet, planned, splits)


def resume_damaged_latest(nnunet, tmp_path, planned):
    fold = nnunet.trainer_folder(DATASET_NAME, TRAINER, "2d", 0)
    fold.mkdir(parents=True, exist_ok=True)
    latest = fold / "checkpoint_latest.pth"
    latest.write_bytes(b"PK\x03\x04" + bytes(300))  # a zip header, then nothing: a copy cut short
    torch.save({"current_epoch": 3}, fold / "checkpoint_best.pth")
    try:
        result = _train_with_splits(nnunet, planned, _folds(planned["cases"]), None, "--c")
    finally:
        shutil.rmtree(fold.parent)
    assert f"mv {latest} {latest}.damaged && nnUNetv2_train {DATASET_NAME} 2d 0 -tr {TRAINER} --c" in result.output
    return result


def pretraining_missing(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_export_weights", "-i", tmp_path / "nothing.pth", "-o", tmp_path / "w.pth",
                      training=False, ok=False)


def _below_a_file(tmp_path) -> Path:
    """A path under a plain file: no one can write there, root included (unlike a chmod 0o555 folder)."""
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "out"


def finetune_demo_no_pretraining(nnunet, tmp_path, planned):
    trainer = "nnUNetTrainerDDPMFinetune_demo"
    try:
        result = _train_with_splits(nnunet, planned, _folds(planned["cases"]), trainer=trainer)
    finally:
        shutil.rmtree(nnunet.trainer_folder(DATASET_NAME, trainer, "2d", 0).parent, ignore_errors=True)
    assert f"Pretrain first with: nnUNetv2_train {DATASET_NAME} 2d all -tr nnUNetTrainerDDPMPretrain_demo " \
        in result.output
    return result


def evaluate_no_preprocessed(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_evaluate_predictions", "-i", tmp_path, "-ref", tmp_path, "-d", DATASET_ID,
                      training=False, ok=False, extra_env={"nnUNet_preprocessed": ""})


def evaluate_unknown_dataset(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_evaluate_predictions", "-i", tmp_path, "-ref", tmp_path, "-d", 969,
                      training=False, ok=False)


def probe_no_results(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_probe_features", "-d", DATASET_ID, training=False, ok=False,
                      extra_env={"nnUNet_results": ""})


def readiness_missing_preprocessed(nnunet, tmp_path):
    missing = tmp_path / "missing"
    result = nnunet.run("nnUNetv2_ddpm_pretraining_readiness", "-d", DATASET_ID, training=False, ok=False,
                        extra_env={"nnUNet_preprocessed": str(missing)})
    assert f"nnUNet_preprocessed={missing} is not an existing folder" in result.output and not missing.exists()
    return result


def export_weights_unwritable(nnunet, tmp_path):
    out = _below_a_file(tmp_path)
    result = nnunet.run("nnUNetv2_ddpm_export_weights", "-i", tmp_path / "nothing.pth", "-o", out / "w.pth",
                        training=False, ok=False)
    assert f"cannot write to the output folder {out} " in result.output
    return result


def export_model_unwritable(nnunet, tmp_path):
    out = _below_a_file(tmp_path)
    result = nnunet.run("nnUNetv2_ddpm_export_model", "-i", tmp_path / "model", "-o", out, training=False, ok=False)
    assert f"cannot write to the output folder {out} " in result.output
    return result


def uncertainty_unwritable(nnunet, tmp_path):
    out = _below_a_file(tmp_path)
    result = nnunet.run("nnUNetv2_ddpm_uncertainty", "-i", tmp_path, "-o", out, training=False, ok=False)
    assert f"cannot write to the output folder {out} " in result.output
    return result


def phantom_no_raw(nnunet, tmp_path):
    return nnunet.run("nnUNetv2_ddpm_make_phantom", "-d", DATASET_ID, training=False, ok=False,
                      extra_env={"nnUNet_raw": ""})


def brats_unwritable_raw(nnunet, tmp_path):
    raw = _below_a_file(tmp_path)
    result = nnunet.run("nnUNetv2_ddpm_convert_brats", "-i", tmp_path, "-d", 963, training=False, ok=False,
                        extra_env={"nnUNet_raw": str(raw)})
    assert f"cannot write to nnUNet_raw={raw} " in result.output
    return result


def slicer_unwritable_raw(nnunet, tmp_path):
    out = _below_a_file(tmp_path)
    result = nnunet.run("nnUNetv2_ddpm_slice_dataset", "-s", tmp_path, "-d", 962, "-n", "Sliced", "--raw", out,
                        training=False, ok=False)
    assert f"cannot write to the output folder {out} " in result.output
    return result


CASES = {"unlabeled-nan": unlabeled_nan, "unlabeled-grid": unlabeled_grid,
         "unlabeled-no-preprocessed": unlabeled_no_preprocessed, "slicer-undeclared-label": slicer_undeclared_label,
         "slicer-nan": slicer_nan, "brats-grid": brats_grid, "brats-nan": brats_nan, "brats-label": brats_label,
         "patient-nan": patient_nan, "groups-unknown-case": groups_unknown_case,
         "make-splits-no-preprocessed": make_splits_no_preprocessed, "benchmark-no-results": benchmark_no_results,
         "benchmark-readonly-results": benchmark_readonly_results, "benchmark-no-exttrainer": benchmark_no_exttrainer,
         "split-patient-leak": split_patient_leak, "split-unknown-case": split_unknown_case,
         "split-missing-case": split_missing_case, "resume-damaged-latest": resume_damaged_latest,
         "pretraining-missing": pretraining_missing, "finetune-demo-no-pretraining": finetune_demo_no_pretraining,
         "evaluate-no-preprocessed": evaluate_no_preprocessed, "evaluate-unknown-dataset": evaluate_unknown_dataset,
         "probe-no-results": probe_no_results,
         "readiness-missing-preprocessed": readiness_missing_preprocessed,
         "export-weights-unwritable": export_weights_unwritable, "export-model-unwritable": export_model_unwritable,
         "uncertainty-unwritable": uncertainty_unwritable, "phantom-no-raw": phantom_no_raw,
         "brats-unwritable-raw": brats_unwritable_raw, "slicer-unwritable-raw": slicer_unwritable_raw}


def test_the_page_and_the_cases_list_the_same_refusals():
    assert list(page_rows()) == list(CASES)


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=[pytest.mark.slow] if "planned" in CASES[case].__code__.co_varnames else [])
    for case in page_rows()])
def test_bad_input_is_refused_with_the_documented_message(case, nnunet, tmp_path, request):
    run = CASES[case]
    arguments = [nnunet, tmp_path] + ([request.getfixturevalue("planned")]
                                      if "planned" in run.__code__.co_varnames else [])
    result = run(*arguments)
    message = page_rows()[case]
    assert message in result.output, f"{case}: the page says {message!r}, the tool said:\n{result.output[-3000:]}"
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_unlabeled_images_add_up_and_replace_on_request(nnunet, tmp_path, planned):
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(2):
        _slices(first, f"scan_a{i}", [_phantom_slice(10 + i), _phantom_slice(20 + i)])
    _slices(second, "scan_b0", [_phantom_slice(30), _phantom_slice(31)])
    output = planned["folder"] / "nnUNetPlans_2d_unlabeled"

    def cases():
        return sorted(p.name[:-len(".pkl")] for p in output.glob("*.pkl"))

    def preprocess(folder, *extra):
        return nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i", folder, *extra,
                          training=False).output

    try:
        assert "The unlabeled set held 0 cases; it now holds 2 (2 added)" in preprocess(first)
        before = (output / "scan_a0.b2nd").read_bytes()
        assert "The unlabeled set held 2 cases; it now holds 3 (1 added)" in preprocess(second)
        assert cases() == ["scan_a0", "scan_a1", "scan_b0"]
        assert (output / "scan_a0.b2nd").read_bytes() == before  # the earlier cases are kept as they were
        assert "held 3 cases; it now holds 1 (0 added, 1 preprocessed again, 2 removed (--replace))" in \
            preprocess(second, "--replace")
        assert cases() == ["scan_b0"]
    finally:
        shutil.rmtree(output, ignore_errors=True)


def test_pretraining_checkpoint_messages_name_the_pretrainer_and_the_next_step(tmp_path):
    from nnunet_ddpm.networks.pretrained_checkpoint import PretrainingCheckpointError, load_checkpoint_file
    with pytest.raises(PretrainingCheckpointError, match="pretrain first with: nnUNetv2_train DATASET CONFIGURATION "
                                                         "all -tr nnUNetTrainerDDPMPretrain_demo"):
        load_checkpoint_file(str(tmp_path / "missing.pth"), "nnUNetTrainerDDPMPretrain_demo")
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, tmp_path / "stock.pth")
    with pytest.raises(PretrainingCheckpointError, match="Use the checkpoint_final.pth of "
                                                         "nnUNetTrainerDDPMPretrain_demo"):
        load_checkpoint_file(str(tmp_path / "stock.pth"), "nnUNetTrainerDDPMPretrain_demo")
