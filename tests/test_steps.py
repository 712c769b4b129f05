"""nnunet_ddpm.steps: what the comparison, the demo and the patient tool rely on to run and resume their commands."""
import json
import os
import shlex
import sys
import time

import pytest

from nnunet_ddpm.steps import Step, StepFailed, model_folder, run_steps, training_step, up_to_date


def _write(path, text):
    return [sys.executable, "-c", f"open({str(path)!r}, 'w').write({text!r})"]


def test_runs_what_is_missing_logs_each_command_and_resumes(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    ran = []
    steps = [Step("write a", _write(a, "A"), a.is_file),
             Step("write b", _write(b, "B"), b.is_file, marker=str(tmp_path / "markers" / "b.json")),
             Step("in process", None, lambda: False, run_in_process=lambda: ran.append("in process"))]
    messages = []
    seconds = run_steps(steps, str(tmp_path), log=messages.append)
    assert a.read_text() == "A" and b.read_text() == "B" and ran == ["in process"]
    assert set(seconds) == {"write a", "write b", "in process"}
    assert messages[0] == "3 steps, 0 already done, 3 to run"
    commands = (tmp_path / "commands.txt").read_text().splitlines()
    assert commands == [shlex.join(_write(a, "A")), shlex.join(_write(b, "B"))]
    # one log per command, named by its step; none for the in-process step
    assert sorted(p.name.split("_", 2)[-1] for p in (tmp_path / "logs").iterdir()) == ["write_a.log", "write_b.log"]
    assert json.loads((tmp_path / "markers" / "b.json").read_text())["command"] == _write(b, "B")
    messages.clear()
    run_steps(steps, str(tmp_path), log=messages.append)  # the two commands are done; the in-process step is not
    assert messages[0] == "3 steps, 2 already done, 1 to run" and ran[-1] == "in process"


def test_a_failing_command_stops_the_run_with_its_log_and_how_to_resume(tmp_path):
    after = tmp_path / "after.txt"
    failing = [sys.executable, "-c", "import sys; print('the cause'); sys.exit(3)"]
    steps = [Step("fail", failing, lambda: False), Step("after", _write(after, "x"), after.is_file)]
    with pytest.raises(StepFailed) as raised:
        run_steps(steps, str(tmp_path), log=lambda m: None)
    message = str(raised.value)
    assert "fail failed" in message and "exited with code 3" in message and "the cause" in message
    assert str(tmp_path / "logs") in message and "run the same command again" in message
    assert not after.exists()


def test_step_environment_is_added_to_the_runs_environment(tmp_path):
    out = tmp_path / "env.txt"
    command = [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['A'] + os.environ['B'])"]
    run_steps([Step("env", command, out.is_file, env={"B": "2"})], str(tmp_path), env=dict(os.environ, A="1", B="0"),
              log=lambda m: None)
    assert out.read_text() == "12"


def test_up_to_date_compares_modification_times(tmp_path):
    source, result = tmp_path / "model.pth", tmp_path / "prediction.json"
    assert not up_to_date(str(result), str(source))
    source.write_text("m")
    result.write_text("p")
    os.utime(source, (time.time() - 10, time.time() - 10))
    assert up_to_date(str(result), str(source))
    os.utime(source, (time.time() + 10, time.time() + 10))  # a retrained model invalidates its prediction
    assert not up_to_date(str(result), str(source))


def test_training_step_resumes_or_starts_from_pretrained_weights(tmp_path):
    folder = tmp_path / model_folder("", "Dataset001_A", "nnUNetTrainer", "nnUNetPlans", "2d", 0).lstrip("/")
    assert folder.relative_to(tmp_path).parts == ("Dataset001_A", "nnUNetTrainer__nnUNetPlans__2d", "fold_0")
    command = ["nnUNetv2_train", "Dataset001_A", "2d", "0"]
    assert training_step("t", command, str(folder), "w.pth").command == command + ["-pretrained_weights", "w.pth"]
    folder.mkdir(parents=True)
    (folder / "checkpoint_latest.pth").write_text("")
    step = training_step("t", command, str(folder), "w.pth")
    assert step.command == command + ["--c"] and not step.is_done()
    (folder / "checkpoint_final.pth").write_text("")
    assert step.is_done()


def test_working_folder_environment(tmp_path, monkeypatch):
    """nnU-Net's folders inside the working folder, the plugin's trainers and this copy first; other folder names, the
    caller's PYTHONPATH and any setting on request (the tests' and the real-patient study's environments)."""
    import nnunet_ddpm
    from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
    from nnunet_ddpm.steps import working_folder_environment
    monkeypatch.setenv("PYTHONPATH", "/theirs")
    monkeypatch.setenv("nnUNet_extTrainer", "/their/trainers")
    monkeypatch.delenv("nnUNet_def_n_proc", raising=False)
    env = working_folder_environment(str(tmp_path), nnUNet_ddpm_demo_epochs="2")
    assert [env[v] for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")] == \
        [str(tmp_path / n) for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")]
    assert env["nnUNet_extTrainer"] == f"{TRAINER_DIR}{os.pathsep}/their/trainers"
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(nnunet_ddpm.__file__)))
    assert env["PYTHONPATH"] == f"{package_parent}{os.pathsep}/theirs"
    assert env["nnUNet_def_n_proc"] == "1" and env["nnUNet_ddpm_demo_epochs"] == "2"
    env = working_folder_environment(tmp_path, folder_names=("raw", "preprocessed", "results_x"),
                                     this_copy_first=False, nnUNet_extTrainer=TRAINER_DIR, nnUNet_def_n_proc="3")
    assert [env[v] for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")] == \
        [str(tmp_path / n) for n in ("raw", "preprocessed", "results_x")]
    assert (env["PYTHONPATH"], env["nnUNet_extTrainer"], env["nnUNet_def_n_proc"]) == ("/theirs", TRAINER_DIR, "3")
