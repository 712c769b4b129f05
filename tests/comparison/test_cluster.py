"""nnUNetv2_ddpm_benchmark --executor: the SLURM submission submitit sends (without a cluster: sbatch and sacct are
stand-ins that record what they are given), and real jobs through submitit's local executor, one killed midway."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import PHANTOM_2D

pytestmark = pytest.mark.slow  # runs the real console scripts on the planned phantom

DATASET_ID, DATASET_NAME = PHANTOM_2D

FAKE_SBATCH = """#!/bin/bash
# records the script it is given and answers like sbatch
n=$(( $(cat {folder}/count 2>/dev/null || echo 100) + 1 ))
echo $n > {folder}/count
cp "$1" {folder}/job_$n.sh
echo "Submitted batch job $n"
"""
FAKE_SACCT = """#!/bin/bash
# answers like sacct with what the test wrote
cat {folder}/sacct.txt
"""


def grid_args(test_set, out, *extra, budgets=("1", "2"), device="cpu"):
    return ("nnUNetv2_ddpm_benchmark", "-d", DATASET_ID, "-c", "2d", "--methods", "baseline", "finetune",
            "--budgets", *budgets, "-f", "0", "--trainer-suffix", "_demo", "-device", device, "-np", "1",
            "-o", out, "--test-images", test_set[0], "--test-labels", test_set[1], *extra)


def sbatch_options(script: str) -> dict:
    return dict(line[len("#SBATCH --"):].split("=", 1) for line in script.splitlines()
                if line.startswith("#SBATCH --") and "=" in line)


def test_slurm_submission_has_the_resources_the_dependencies_and_is_not_repeated(nnunet, phantom_2d,
                                                                              phantom_2d_test_set, tmp_path):
    bin_folder, sent = tmp_path / "bin", tmp_path / "sent"
    bin_folder.mkdir(), sent.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("sacct", FAKE_SACCT), ("srun", "#!/bin/bash\n")):
        (bin_folder / name).write_text(text.format(folder=sent))
        (bin_folder / name).chmod(0o755)
    env = {"PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}", "nnUNet_results": str(tmp_path / "results")}
    out = tmp_path / "grid"
    resources = ("--partition", "gpu", "--gpus", "2", "--cpus", "6", "--mem-gb", "30", "--hours", "1.5",
                 "--array-parallelism", "1", "--slurm-option", "account=proj", "--setup", "module load cuda")
    slurm = grid_args(phantom_2d_test_set, out, "--executor", "slurm", *resources, device="cuda")  # GPU jobs
    result = nnunet.run(*slurm, extra_env=env)
    assert "4 of 4 cells to run, after the pretraining" in result.output

    scripts = {int(p.stem[len("job_"):]): p.read_text() for p in sent.glob("job_*.sh")}
    assert sorted(scripts) == [101, 102, 103, 104]  # pretraining, baseline array, DDPM array, report
    options = {k: sbatch_options(v) for k, v in scripts.items()}
    for job in (101, 102, 103):
        assert {k: options[job][k] for k in ("partition", "gpus-per-node", "cpus-per-task", "mem", "time",
                                             "account")} == {"partition": "gpu", "gpus-per-node": "2",
                                                             "cpus-per-task": "6", "mem": "30GB", "time": "90",
                                                             "account": "proj"}
        assert "module load cuda" in scripts[job] and "submitit.core._submit" in scripts[job]
    assert "gpus-per-node" not in options[104]  # the report needs no GPU
    assert options[101]["job-name"] == "ddpm_pretraining" and "dependency" not in options[101]
    assert options[102]["array"] == "0-1%1" and "dependency" not in options[102]  # the baseline waits for nothing
    assert options[103]["array"] == "0-1%1" and options[103]["dependency"] == "afterok:101"
    assert options[104]["dependency"] == "afterany:102:103"
    jobs = json.loads((out / "cluster" / "jobs.json").read_text())
    assert {name: job["job_id"] for name, job in jobs.items()} == {
        "pretraining": "101", "baseline_1labels_fold0": "102_0", "baseline_2labels_fold0": "102_1",
        "finetune_1labels_fold0": "103_0", "finetune_2labels_fold0": "103_1", "report": "104"}

    # the next run, while SLURM still runs most of it: only the failed task is submitted again, named with its log
    (sent / "sacct.txt").write_text("JobID|State|NodeList\n101|RUNNING|n1\n102_0|FAILED|n1\n102_1|RUNNING|n2\n"
                                    "103_[0-1%1]|PENDING|\n104|PENDING|\n")
    result = nnunet.run(*slurm, extra_env=env)
    assert "baseline_2labels_fold0: still queued or running as job 102_1; not submitted again" in result.output
    assert f"baseline_1labels_fold0: submitted again (job 102_0 did not finish it; its errors: " \
           f"{jobs['baseline_1labels_fold0']['errors']})" in result.output
    scripts = {int(p.stem[len("job_"):]): p.read_text() for p in sent.glob("job_*.sh")}
    assert sorted(scripts) == [101, 102, 103, 104, 105, 106]
    assert "array" not in sbatch_options(scripts[105])  # one cell: one job
    assert sbatch_options(scripts[106])["dependency"] == "afterany:101:102:103:105"


def _kill_when_started(pattern: str, process: subprocess.Popen, timeout: float = 600) -> None:
    """Kill the command matching ``pattern`` as soon as it runs: its job is then midway (its interpreter is still
    importing, so this never races with the command's end)."""
    start = time.time()
    while True:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        if found:
            break
        assert process.poll() is None and time.time() - start < timeout, "the command never started"
        time.sleep(0.05)
    for pid in found:
        os.kill(int(pid), signal.SIGKILL)


def test_local_jobs_wait_for_the_pretraining_and_a_killed_job_is_the_only_one_run_again(nnunet, phantom_2d,
                                                                                       phantom_2d_test_set, tmp_path):
    results = tmp_path / "results"
    out = tmp_path / "grid"
    args = grid_args(phantom_2d_test_set, out, "--executor", "local", budgets=("1",))
    pretraining = results / DATASET_NAME / "nnUNetTrainerDDPMPretrain_demo__nnUNetPlans__2d" / "fold_all"
    baseline = results / DATASET_NAME / "nnUNetTrainer_demo_1labels__nnUNetPlans__2d" / "fold_0"
    finetune = results / DATASET_NAME / "nnUNetTrainerDDPMFinetune_demo_1labels__nnUNetPlans__2d" / "fold_0"
    process = subprocess.Popen([str(a) for a in args], env=nnunet.env() | {"nnUNet_results": str(results)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _kill_when_started("nnUNetv2_train .* -tr nnUNetTrainerDDPMFinetune_demo_1labels", process)
    # the fine-tune's job started only once the pretraining had finished: the local executor waits for it
    assert (pretraining / "checkpoint_final.pth").exists()
    output = process.communicate(timeout=900)[0]
    assert process.returncode != 0, output
    assert "pretraining: done" in output and "baseline_1labels_fold0: done" in output
    assert "1 job(s) failed: finetune_1labels_fold0 (its errors: " in output and "run the same command again" in output
    assert not (finetune / "checkpoint_final.pth").exists() and not (out / "results.json").exists()
    finished = [pretraining / "checkpoint_final.pth", baseline / "checkpoint_final.pth",
                out / "predictions" / "baseline" / "1labels" / "fold_0" / "evaluation.json"]
    written = {p: p.stat().st_mtime_ns for p in finished}

    result = nnunet.run(*args, extra_env={"nnUNet_results": str(results)})
    assert "1 of 2 cells to run" in result.output and "finetune_1labels_fold0: submitted again" in result.output
    assert {p: p.stat().st_mtime_ns for p in finished} == written  # nothing else ran again
    assert (finetune / "checkpoint_final.pth").exists()
    report = json.loads((out / "results.json").read_text())
    assert report["methods"] == ["baseline", "finetune"] and len(report["per_case"]) == 2 * 3 * 3
    evaluation = json.loads((out / "predictions" / "finetune" / "1labels" / "fold_0" / "evaluation.json").read_text())
    assert [(r["case"], r["region"]) for r in evaluation["per_case"]] == \
        [(r["case"], r["region"]) for r in report["per_case"] if r["method"] == "finetune"]
