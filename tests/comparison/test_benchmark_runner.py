"""nnUNetv2_ddpm_benchmark end to end on the 2D test phantom: dry run = what runs, report = evaluation, resume, errors."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from tests.helpers import PHANTOM_2D

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID, DATASET_NAME = PHANTOM_2D


@pytest.fixture(scope="module")
def test_set(nnunet, tmp_path_factory):
    """Three held-out phantom cases with labels, written outside the dataset (passed with --test-images/-labels)."""
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    root = tmp_path_factory.mktemp("heldout")
    folder = write_phantom_dataset(str(root), DATASET_ID, "Phantom", num_cases=0, size=(40, 40), num_channels=3,
                                   seed=99, num_test_cases=3)
    return f"{folder}/imagesTs", f"{folder}/labelsTs"


def benchmark_args(nnunet, test_set, out, *extra):
    return ("nnUNetv2_ddpm_benchmark", "-d", DATASET_ID, "-c", "2d", "--methods", "pixel", "--budgets",
            "1", "2", "--folds", "0", "--trainer-suffix", "_demo", "--device", "cpu", "--np", "1", "-o", out,
            "--test-images", test_set[0], "--test-labels", test_set[1], *extra)


def test_benchmark_runs_what_the_dry_run_prints_and_reports_the_evaluation(nnunet, pretrained_2d, test_set, tmp_path):
    out = tmp_path / "benchmark"
    # the pretraining given as a checkpoint: the pixel trainings get nnU-Net's -pretrained_weights
    checkpoint = ("--pretrained-weights", pretrained_2d / "checkpoint_final.pth")
    planned = nnunet.run(*benchmark_args(nnunet, test_set, out, "--dry-run", *checkpoint)).stdout.strip().splitlines()
    # 2 trainings and 2 predictions, each training before its prediction
    assert [line.split()[0] for line in planned] == ["nnUNetv2_train", "nnUNetv2_predict"] * 2
    assert f"-pretrained_weights {checkpoint[1]}" in planned[0]
    assert "nnUNetTrainerDDPMPixelClassifier_demo_2labels" in planned[-1]
    assert not out.exists()  # a dry run writes nothing

    result = nnunet.run(*benchmark_args(nnunet, test_set, out, *checkpoint))
    assert (out / "commands.txt").read_text().strip().splitlines() == planned
    assert "[1/6] train nnUNetTrainerDDPMPixelClassifier_demo_1labels fold 0" in result.output

    report = json.loads((out / "results.json").read_text())
    assert report["test_cases"] == 3 and report["regions"] == ["edema", "necrosis", "enhancing"]
    assert report["settings"]["pixel"]["num_epochs"] == "2"
    assert report["settings"]["pixel"]["num_iterations_per_epoch"] == "3"
    assert report["settings"]["pixel"]["ensemble_size"] == "5"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3  # budgets x regions
    for row in rows:  # one fold: the aggregate is the mean over the test cases of evaluation.json
        evaluation = json.loads((out / "predictions" / row["method"] / f"{row['labelled_cases']}labels" / "fold_0" /
                                 "evaluation.json").read_text())
        dice = [r["dice"] for r in evaluation["per_case"] if r["region"] == row["region"]]
        assert len(dice) == 3
        assert float(row["dice_mean"]) == pytest.approx(np.nanmean(dice))
        summary = json.loads((out / "predictions" / row["method"] / f"{row['labelled_cases']}labels" / "fold_0" /
                              "summary.json").read_text())
        label = {"edema": "1", "necrosis": "2", "enhancing": "3"}[row["region"]]
        assert float(row["dice_mean"]) == pytest.approx(summary["mean"][label]["Dice"], nan_ok=True)
    # learnt something: every test case has edema, so predicting background scores 0 there
    assert all((sitk.GetArrayFromImage(sitk.ReadImage(str(f))) == 1).any()
               for f in sorted(Path(test_set[1]).glob("*.nii.gz")))
    assert all(float(r["dice_mean"]) > 0.1 for r in rows if r["region"] == "edema")
    markdown = (out / "results.md").read_text()
    assert "## edema\n\n### Dice\n\n| labelled cases | DDPM pixel classifier |" in markdown
    assert "3 test cases" in markdown and "num_epochs 2" in markdown
    edema = [float(r["dice_mean"]) for r in rows if r["region"] == "edema"]  # one method: no best, one fold: no std
    assert f"| 1 | {edema[0]:.3f} |\n| 2 | {edema[1]:.3f} |" in markdown and "±" not in markdown
    assert "Paired difference" not in markdown and not (out / "paired_differences.csv").exists()  # no baseline
    plot = imread(out / "dice_vs_labels.png")
    assert plot.shape[:2] == (432, 1512)  # three regions side by side, 4.2 x 3.6 inches each at 120 dpi
    assert plot[..., :3].std() > 0.05  # drawn, not blank
    with open(out / "results_per_case.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 3 * 3  # ... x cases

    # an interrupted training (no checkpoint_final.pth yet): the dry run resumes it with --c and redoes only what
    # depends on it; the re-run does exactly that
    model = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMPixelClassifier_demo_2labels", "2d", 0)
    (model / "checkpoint_final.pth").rename(model / "checkpoint_latest.pth")
    planned = nnunet.run(*benchmark_args(nnunet, test_set, out, "--dry-run")).stdout.strip().splitlines()
    assert len(planned) == 2 and planned[0].endswith("--c") and planned[1].startswith("nnUNetv2_predict")
    before = (out / "commands.txt").read_text().splitlines()
    result = nnunet.run(*benchmark_args(nnunet, test_set, out))
    assert "4 already done, 3 to run" in result.output
    assert (out / "commands.txt").read_text().splitlines() == before + planned
    assert nnunet.run(*benchmark_args(nnunet, test_set, out, "--dry-run")).stdout.strip() == ""


@pytest.mark.parametrize("extra, message", [
    (("--methods", "baseline", "diffusion"), "Unknown method(s) ['diffusion']"),
    (("--budgets", "3"), "No trainer for ['nnUNetTrainerDDPMPixelClassifier_demo_3labels'"),
    (("--budgets", "10"), "exceed the 6 training cases of fold 0"),
    (("--test-labels", "/nonexistent"), "have no label in /nonexistent"),
    (("--methods", "pixel", "--pretrained-weights", "/nonexistent.pth"), "/nonexistent.pth does not exist"),
    (("-o", "/dev/null/out"), "cannot write to the output folder /dev/null/out"),  # below a file, refused for root too
])
def test_bad_input_is_refused_before_training(nnunet, phantom_2d, test_set, tmp_path, extra, message):
    args = list(benchmark_args(nnunet, test_set, tmp_path / "out"))
    for option in extra[::2]:  # replace options given again
        if option in args:
            i = args.index(option)
            j = i + 1
            while j < len(args) and not str(args[j]).startswith("-"):
                j += 1
            del args[i:j]
    result = nnunet.run(*args, *extra, ok=False)
    assert message in result.output
    assert not (tmp_path / "out").exists()
