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


@pytest.fixture
def test_set(phantom_2d_test_set):
    return phantom_2d_test_set


def benchmark_args(nnunet, test_set, out, *extra, method="pixel", budgets=("1", "2")):
    return ("nnUNetv2_ddpm_benchmark", "-d", DATASET_ID, "-c", "2d", "--methods", method, "--budgets",
            *budgets, "-f", "0", "--trainer-suffix", "_demo", "-device", "cpu", "-np", "1", "-o", out,
            "--test-images", test_set[0], "--test-labels", test_set[1], *extra)


def test_benchmark_runs_what_the_dry_run_prints_and_reports_the_evaluation(nnunet, pretrained_2d, test_set, tmp_path):
    out = tmp_path / "benchmark"
    # the pretraining given as a checkpoint: the pixel trainings get nnU-Net's -pretrained_weights
    checkpoint = ("-pretrained_weights", pretrained_2d / "checkpoint_final.pth")
    script = nnunet.run(*benchmark_args(nnunet, test_set, out, "--dry-run", *checkpoint)).stdout.strip().splitlines()
    # a shell script: per cell a training, its prediction and its evaluation, each after the one before; the report
    # after every evaluation
    comments, planned = script[0::2], script[1::2]
    trainer = "nnUNetTrainerDDPMPixelClassifier_defaultFeatures_demo_{}labels"
    assert comments == [f"# [1] train {trainer.format(1)} fold 0",
                        f"# [2] predict 3 test cases with {trainer.format(1)} fold 0 (after [1])",
                        "# [3] evaluate pixel 1 labels fold 0 (after [2])",
                        f"# [4] train {trainer.format(2)} fold 0",
                        f"# [5] predict 3 test cases with {trainer.format(2)} fold 0 (after [4])",
                        "# [6] evaluate pixel 2 labels fold 0 (after [5])",
                        "# [7] report (after [3], [6])"]
    cell = ["nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_ddpm_evaluate_predictions"]
    assert [line.split()[0] for line in planned] == cell * 2 + ["nnUNetv2_ddpm_benchmark"]
    assert f"-pretrained_weights {checkpoint[1]}" in planned[0]
    assert "nnUNetTrainerDDPMPixelClassifier_defaultFeatures_demo_2labels" in planned[4]
    assert planned[-1].endswith(" --collect")
    assert not out.exists()  # a dry run writes nothing

    result = nnunet.run(*benchmark_args(nnunet, test_set, out, *checkpoint))
    assert (out / "commands.txt").read_text().strip().splitlines() == planned[:-1]
    assert "[1/6] train nnUNetTrainerDDPMPixelClassifier_defaultFeatures_demo_1labels fold 0" in result.output

    report = json.loads((out / "results.json").read_text())
    assert report["test_cases"] == 3 and report["regions"] == ["edema", "necrosis", "enhancing"]
    assert report["settings"]["pixel"]["num_epochs"] == "2"
    assert report["settings"]["pixel"]["num_iterations_per_epoch"] == "3"
    assert report["settings"]["pixel"]["ensemble_size"] == "5"
    assert report["settings"]["pixel"]["batch_size"] == str(nnunet.planned(DATASET_NAME, "2d")["batch_size"])
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
    model = nnunet.trainer_folder(DATASET_NAME, trainer.format(2), "2d", 0)
    (model / "checkpoint_final.pth").rename(model / "checkpoint_latest.pth")
    planned = nnunet.run(*benchmark_args(nnunet, test_set, out, "--dry-run")).stdout.strip().splitlines()[1::2]
    assert len(planned) == 4 and planned[0].endswith("--c") and planned[1].startswith("nnUNetv2_predict")
    before = (out / "commands.txt").read_text().splitlines()
    result = nnunet.run(*benchmark_args(nnunet, test_set, out))
    assert "4 already done, 3 to run" in result.output  # the shared pretraining and the first cell
    assert (out / "commands.txt").read_text().splitlines() == before + planned[:-1]

    # what is done is read from the output folders alone: a prediction redone by hand with the dry run's script is
    # picked up, and --collect writes the same report from it
    report_before = (out / "results.csv").read_text()
    first = out / "predictions" / "pixel" / "1labels" / "fold_0"
    for segmentation in first.glob("*.nii.gz"):
        segmentation.unlink()
    script = nnunet.run(*benchmark_args(nnunet, test_set, out, "--dry-run")).stdout
    assert [line.split()[0] for line in script.splitlines()[1::2]] == [
        "nnUNetv2_predict", "nnUNetv2_ddpm_evaluate_predictions", "nnUNetv2_ddpm_benchmark"]
    (tmp_path / "missing.sh").write_text(script)
    nnunet.run("bash", "-e", tmp_path / "missing.sh")
    assert nnunet.run(*benchmark_args(nnunet, test_set, out, "--dry-run")).stdout.strip().splitlines() == [
        "# [1] report", script.strip().splitlines()[-1]]
    (out / "results.csv").unlink()
    nnunet.run(*benchmark_args(nnunet, test_set, out, "--collect"))
    assert (out / "results.csv").read_text() == report_before  # the same predictions, the same numbers
    assert "7 already done, 0 to run" in nnunet.run(*benchmark_args(nnunet, test_set, out)).output


def test_probed_pixel_classifier_probes_its_budget_first(nnunet, pretrained_2d, test_set, tmp_path):
    """Method pixel_probed: the probe on the budget's labelled cases of the first fold, then the pixel classifier that
    reads its choice; the choice is the one the model was built with."""
    out = tmp_path / "benchmark"
    args = benchmark_args(nnunet, test_set, out, method="pixel_probed", budgets=("2",))
    # no folds yet (as before a dataset's first training): the runner writes nnU-Net's own split first
    (nnunet.preprocessed / DATASET_NAME / "splits_final.json").unlink(missing_ok=True)
    comments = nnunet.run(*args, "--dry-run").stdout.strip().splitlines()[0::2]
    assert comments[:3] == ["# [1] write nnU-Net's folds (splits_final.json)",
                            "# [2] probe decoder features on 2 labelled cases of fold 0 (after [1])",
                            "# [3] train nnUNetTrainerDDPMPixelClassifier_demo_2labels fold 0 (after [2])"]
    choice = pretrained_2d / "pixel_features_2labels.json"
    try:
        nnunet.run(*args)
        record = json.loads(choice.read_text())
        assert record["budget"] == 2 and record["fold"] == 0 and len(record["cases"]) == 2
        model = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMPixelClassifier_demo_2labels", "2d", 0)
        assert json.loads((model / "labelled_cases.json").read_text())["cases"] == record["cases"]
        built = json.loads((model.parent / "plans.json").read_text())["configurations"]["2d"]["ddpm_pixel_features"]
        assert (built["stages"], built["timesteps"], built["file"]) == (record["stages"], record["timesteps"],
                                                                        str(choice))
        # the report shows the choice the model was built with
        settings = json.loads((out / "results.json").read_text())["settings"]["pixel_probed"]
        assert settings["feature_timesteps"] == str(tuple(record["timesteps"]))
        assert settings["feature_stages"] == str(tuple(record["stages"]))
        # the pretraining, the folds, the probe, the training, the prediction and the evaluation
        assert "6 already done, 0 to run" in nnunet.run(*args).output
    finally:
        choice.unlink(missing_ok=True)


def test_every_label_runs_the_trainers_without_a_budget(nnunet, phantom_2d, test_set, tmp_path):
    """``--budgets all``: the methods' own trainers (every training case of the fold), the baseline without the
    pretraining, the results in a folder of their own."""
    out = tmp_path / "out"
    args = benchmark_args(nnunet, test_set, out, "-pretrained_weights", "/etc/hostname", "--dry-run",
                          method="baseline", budgets=("2", "all"))
    args = list(args)
    i = args.index("--methods")
    args[i + 1:i + 2] = ["baseline", "finetune"]
    planned = nnunet.run(*args).stdout.strip().splitlines()[1::2]
    trainings = [line for line in planned if line.startswith("nnUNetv2_train ")]
    assert [line.split(" -tr ")[1].split()[0] for line in trainings] == [
        "nnUNetTrainer_demo_2labels", "nnUNetTrainerDDPMFinetune_demo_2labels", "nnUNetTrainer_demo",
        "nnUNetTrainerDDPMFinetune_demo"]
    assert ["-pretrained_weights" in line for line in trainings] == [False, True, False, True]
    predictions = [line.split(" -o ")[1].split()[0] for line in planned if line.startswith("nnUNetv2_predict ")]
    assert predictions[2:] == [str(out / "predictions" / m / "all" / "fold_0") for m in ("baseline", "finetune")]
    bad = nnunet.run(*benchmark_args(nnunet, test_set, out, budgets=("some",)), ok=False)
    assert "a label budget is a number of cases or 'all', got 'some'" in bad.output


def test_runs_train_with_their_seed_and_draw_into_their_own_folders(nnunet, phantom_2d, test_set, tmp_path):
    """``--seeds 1 2 --label-draws 0 1``: four runs, each in runs/seed<S>_draw<D> with that folder as nnUNet_results
    (only the trainers' default seed with draw 0 trains where nnUNetv2_train puts its models, so no model of another
    seed is taken for one of these), every training with its seed and draw, the DDPM methods from the grid's one
    pretraining, which runs with the defaults."""
    out = tmp_path / "out"
    args = benchmark_args(nnunet, test_set, out, "--seeds", "1", "2", "--label-draws", "0", "1", "--dry-run",
                          method="finetune", budgets=("2",))
    script = nnunet.run(*args).stdout.strip().splitlines()
    comments, planned = script[0::2], script[1::2]
    pretraining = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMPretrain_demo", "2d", "all")
    # the pretraining, unless an earlier test left it done
    pretrainings = [line for line in planned if " -tr nnUNetTrainerDDPMPretrain_demo " in line]
    assert all(line.startswith(f"nnUNetv2_train {DATASET_NAME} 2d all ") for line in pretrainings)
    assert len(pretrainings) <= 1
    trainings = [line for line in planned if " nnUNetv2_train " in line and "Finetune_demo_2labels " in line]
    runs = [(1, 0), (2, 0), (1, 1), (2, 1)]
    assert len(trainings) == len(runs)
    for (seed, draw), line in zip(runs, trainings):
        results = out / "runs" / f"seed{seed}_draw{draw}"
        assert line.startswith(f"env nnUNet_ddpm_seed={seed} nnUNet_ddpm_label_draw={draw} nnUNet_results={results} "
                               f"nnUNetv2_train ")
        assert line.endswith(f" -pretrained_weights {pretraining / 'checkpoint_final.pth'}")
    predictions = [line.split(" -o ")[1].split()[0] for line in planned if "nnUNetv2_predict" in line]
    assert predictions == [str(out / "predictions" / "finetune" / "2labels" / name)
                           for name in ("fold_0_seed1_draw0", "fold_0_seed2_draw0", "fold_0_seed1_draw1",
                                        "fold_0_seed2_draw1")]
    assert any(c.startswith("# [") and c.endswith("] train nnUNetTrainerDDPMFinetune_demo_2labels fold 0 (seed2_draw1)"
                                                  + (" (after [1])" if pretrainings else "")) for c in comments)
    assert planned[-1].endswith("--seeds 1 2 --label-draws 0 1 --collect")
    bad = nnunet.run(*benchmark_args(nnunet, test_set, out, "--seeds", "3", "3"), ok=False)
    assert "The seeds must be distinct non-negative integers, got [3, 3]." in bad.output


def test_a_pretraining_variant_is_trained_and_handed_to_the_ddpm_methods(nnunet, phantom_2d, test_set, tmp_path):
    args = list(benchmark_args(nnunet, test_set, tmp_path / "out", "-pretrainer",
                               "nnUNetTrainerDDPMPretrain_minSNR5", "--dry-run", method="finetune", budgets=("2",)))
    planned = nnunet.run(*args).stdout.strip().splitlines()[1::2]
    checkpoint = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMPretrain_minSNR5_demo", "2d", "all") / \
        "checkpoint_final.pth"
    assert planned[0].startswith(f"nnUNetv2_train {DATASET_NAME} 2d all -tr nnUNetTrainerDDPMPretrain_minSNR5_demo ")
    assert planned[1].startswith(f"nnUNetv2_train {DATASET_NAME} 2d 0 -tr nnUNetTrainerDDPMFinetune_demo_2labels ")
    assert planned[1].endswith(f" -pretrained_weights {checkpoint}")
    assert planned[-1].endswith(" -pretrainer nnUNetTrainerDDPMPretrain_minSNR5 --collect")


@pytest.mark.parametrize("extra, message", [
    (("--methods", "baseline", "diffusion"), "Unknown method(s) ['diffusion']"),
    (("--budgets", "3"), "No trainer for ['nnUNetTrainerDDPMPixelClassifier_defaultFeatures_demo_3labels'"),
    (("--budgets", "10"), "exceed the 6 training cases of fold 0"),
    (("--test-labels", "/nonexistent"), "have no label in /nonexistent"),
    (("--methods", "pixel", "-pretrained_weights", "/nonexistent.pth"), "/nonexistent.pth does not exist"),
    (("--methods", "pixel_probed", "-pretrained_weights", "/etc/hostname"),
     "this dataset's own nnUNetTrainerDDPMPretrain run"),
    (("--methods", "pixel_probed", "-pretrainer", "nnUNetTrainerDDPMPretrain_minSNR5"),
     "leave out -pretrained_weights and -pretrainer"),
    (("-pretrainer", "nnUNetTrainer"), "-pretrainer nnUNetTrainer: give nnUNetTrainerDDPMPretrain or a variant"),
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
