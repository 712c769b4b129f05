"""The README's main job, nnUNetv2_ddpm_demo, end to end at a tiny size, and resumed."""
import json

import numpy as np
import pytest
from matplotlib.image import imread

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts


def test_demo_runs_the_comparison_end_to_end_and_resumes(nnunet, tmp_path):
    out = tmp_path / "demo"
    args = ("nnUNetv2_ddpm_demo", "-o", out, "--size", "32", "--train-cases", "6", "--test-cases", "2",
            "--epochs", "1", "--pretrain-epochs", "1", "--iterations", "2", "--budgets", "2",
            "--methods", "baseline", "finetune")
    # the tests' environment skips final validations; the demo must skip them by itself
    first = nnunet.run(*args, training=False, extra_env={"nnUNet_ddpm_demo_skip_validation": "0"})
    assert "train nnUNetTrainerDDPMPretrain_demo fold all" in first.output
    assert "| labelled cases | nnU-Net (supervised) | DDPM fine-tune |" in first.output
    report = json.loads((out / "benchmark" / "results.json").read_text())
    assert report["test_cases"] == 2 and report["budgets"] == [2]
    assert report["settings"]["finetune"]["num_epochs"] == "1"
    assert {r["method"] for r in report["results"]} == {"baseline", "finetune"}
    # Two iterations of training cannot be expected to learn; the report must equal its evaluations exactly
    evaluations = {m: json.loads((out / "benchmark" / "predictions" / m / "2labels" / "fold_0" /
                                  "evaluation.json").read_text())["per_case"] for m in ("baseline", "finetune")}
    for row in report["results"]:
        dice = [r["dice"] for r in evaluations[row["method"]] if r["region"] == row["region"]]
        assert row["dice_mean"] == pytest.approx(np.nanmean(dice), nan_ok=True)
    for row in report["paired_differences"]:
        pairs = {m: {r["case"]: r["dice"] for r in evaluations[m] if r["region"] == row["region"]}
                 for m in ("baseline", "finetune")}
        differences = [pairs["finetune"][c] - pairs["baseline"][c] for c in pairs["baseline"]]
        assert row["dice_difference"] == pytest.approx(np.nanmean(differences), nan_ok=True)
        assert row["dice_cases"] == sum(not np.isnan(d) for d in differences)
    assert len(report["paired_differences"]) == 3  # finetune against the baseline, per region
    plot = imread(out / "benchmark" / "dice_vs_labels.png")
    assert plot.shape[:2] == (864, 1512)  # three regions, a row of Dice and a row of paired differences
    assert plot[..., :3].std() > 0.05
    samples = out / "nnUNet_results" / "Dataset990_DemoPhantom" / \
        "nnUNetTrainerDDPMPretrain_demo__nnUNetPlans__2d" / "fold_all" / "samples.png"
    assert imread(samples)[..., :3].std() > 0.01  # an image of samples, not a blank canvas
    # the demo's segmentation trainers skip nnU-Net's final validation (the test set is evaluated instead)
    finetune = samples.parents[2] / "nnUNetTrainerDDPMFinetune_demo_2labels__nnUNetPlans__2d" / "fold_0"
    assert (finetune / "checkpoint_final.pth").is_file() and not (finetune / "validation").exists()
    log = next(finetune.glob("training_log_*.txt")).read_text()
    assert "Final validation skipped" in log and " -p nnUNetPlans --val" in log  # how to make the model exportable

    # re-running skips finished work; removing one evaluation redoes just that
    (out / "benchmark" / "predictions" / "baseline" / "2labels" / "fold_0" / "evaluation.json").unlink()
    second = nnunet.run(*args, training=False)
    assert "plan and preprocess" not in second.output
    assert "6 already done, 1 to run" in second.output and "[1/1] evaluate baseline 2 labels fold 0" in second.output

    bad = nnunet.run("nnUNetv2_ddpm_demo", "-o", out, "--train-cases", "3", training=False, ok=False)
    assert "--train-cases must be at least 5" in bad.output
    fresh = tmp_path / "refused"
    bad = nnunet.run("nnUNetv2_ddpm_demo", "-o", fresh, "--budgets", "7", training=False, ok=False)
    assert "ready-made trainers exist for 1, 2, 5, 10, 15" in bad.output
    bad = nnunet.run("nnUNetv2_ddpm_demo", "-o", fresh, "--train-cases", "6", "--budgets", "5", training=False,
                     ok=False)
    assert "fold 0 trains on 4 of the 6 cases" in bad.output
    assert not fresh.exists()  # refused before anything was written
