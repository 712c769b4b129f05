"""The README's main job, nnUNetv2_ddpm_demo, end to end at a tiny size, and resumed."""
import json


def test_demo_runs_end_to_end_and_resumes(nnunet, tmp_path):
    out = tmp_path / "demo"
    args = ("nnUNetv2_ddpm_demo", "-o", out, "--size", "32", "--train-cases", "6", "--test-cases", "2",
            "--epochs", "1", "--pretrain-epochs", "1", "--iterations", "2")
    first = nnunet.run(*args, training=False)
    assert "DDPM pretraining on all training images" in first.output
    assert "| DDPM fine-tune |" in first.output and "| supervised nnU-Net |" in first.output
    report = json.loads((out / "demo_results.json").read_text())
    assert report["test_cases"] == 2 and report["budget"]["epochs"] == 1
    for method in ("DDPM fine-tune", "supervised nnU-Net"):
        assert set(report["dice"][method]) == {"edema", "necrosis", "enhancing", "mean"}
        assert all(0 <= v <= 1 for v in report["dice"][method].values())
    samples = out / "nnUNet_results" / "Dataset990_DemoPhantom" / \
        "nnUNetTrainerDDPMPretrain_demo__nnUNetPlans__2d" / "fold_all" / "samples.png"
    assert samples.is_file()

    # re-running skips finished work; removing one evaluation redoes just that
    (out / "predictions" / "nnUNetTrainer_demo" / "summary.json").unlink()
    second = nnunet.run(*args, training=False)
    assert "$ nnUNetv2_train" not in second.output and "plan and preprocess" not in second.output
    assert "[1/2] predict the test cases with supervised nnU-Net" in second.output
    assert "| DDPM fine-tune |" in second.output

    bad = nnunet.run("nnUNetv2_ddpm_demo", "-o", out, "--train-cases", "3", training=False, ok=False)
    assert "--train-cases must be at least 5" in bad.output
