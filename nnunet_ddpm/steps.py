"""nnU-Net commands as resumable steps, shared by the comparison runner, the demo and the patient tool.

A step is a console command (``nnUNetv2_train``, ``nnUNetv2_predict``, ...) or an in-process function, and knows
whether its result is already on disk, so that running the same list again skips finished work. Every command is
appended to ``commands.txt`` and writes its output to its own log file; a failure says which log to read and that a
re-run resumes.
"""
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from batchgenerators.utilities.file_and_folder_operations import isfile, join, maybe_mkdir_p, save_json
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

import nnunet_ddpm
from nnunet_ddpm.nnunet_trainers import TRAINER_DIR


class StepFailed(RuntimeError):
    """A step's command exited with an error; the message holds the end of its log."""


@dataclass
class Step:
    title: str
    command: Optional[List[str]]  # a console command, or None for ``run_in_process``
    is_done: Callable[[], bool]
    run_in_process: Optional[Callable[[], None]] = None
    marker: Optional[str] = None  # written after success, for steps without a natural result file
    env: Optional[Dict[str, str]] = None  # added to the environment of this step's command
    show_output: bool = False  # on the terminal instead of a log file (a command that reports its own progress)


def up_to_date(result: str, *sources: str) -> bool:
    """``result`` exists and was written after every source (a retrained model invalidates its predictions)."""
    return isfile(result) and all(isfile(s) and os.path.getmtime(result) >= os.path.getmtime(s) for s in sources)


def model_folder(results: str, dataset_name: str, trainer: str, plans: str, configuration: str, fold) -> str:
    """``results/DATASET/TRAINER__PLANS__CONFIGURATION/fold_F``, named by nnU-Net's own helper; ``results`` is given
    because the demo and the patient tool keep their models in their own working folder."""
    return join(results, dataset_name, convert_trainer_plans_config_to_identifier(trainer, plans, configuration),
                f"fold_{fold}")


def fingerprint_step(dataset_id: int, preprocessed_dataset_folder: str) -> Step:
    """nnU-Net's fingerprint with fewer intensity samples (``nnunet_ddpm.fingerprint``), before
    ``nnUNetv2_plan_and_preprocess``, which then plans from it."""
    fingerprint = join(preprocessed_dataset_folder, "dataset_fingerprint.json")
    return Step("fingerprint the dataset", [sys.executable, "-m", "nnunet_ddpm.fingerprint", str(dataset_id)],
                lambda: isfile(fingerprint))


def training_step(title: str, command: List[str], folder: str, pretrained_weights: Optional[str] = None) -> Step:
    """``nnUNetv2_train`` into ``folder``: resumed with ``--c`` when a checkpoint of an interrupted run is there,
    otherwise started from ``pretrained_weights`` if given; done when checkpoint_final.pth exists."""
    if any(isfile(join(folder, f"checkpoint_{k}.pth")) for k in ("latest", "best")):
        command = command + ["--c"]
    elif pretrained_weights is not None:
        command = command + ["-pretrained_weights", pretrained_weights]
    final = join(folder, "checkpoint_final.pth")
    return Step(title, command, lambda: isfile(final))


NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def working_folder_environment(root: Union[str, Path], *, folder_names: Sequence[str] = NNUNET_FOLDERS,
                               this_copy_first: bool = True, **settings: str) -> Dict[str, str]:
    """The environment for nnU-Net commands that keep their data in ``root``: nnUNet_raw/_preprocessed/_results
    inside it (folders named ``folder_names``, by default as the variables), this plugin's trainers on
    nnUNet_extTrainer, this copy of nnunet_ddpm first on PYTHONPATH (installed or not) unless ``this_copy_first`` is
    False, one export worker unless the user set more, and ``settings`` (e.g. the ``_demo`` budget), which override
    all of these."""
    env = dict(os.environ)
    env.update({variable: str(Path(root) / name) for variable, name in zip(NNUNET_FOLDERS, folder_names)})
    env["nnUNet_extTrainer"] = os.pathsep.join(p for p in (TRAINER_DIR, os.environ.get("nnUNet_extTrainer")) if p)
    if this_copy_first:
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(nnunet_ddpm.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    env.setdefault("nnUNet_def_n_proc", "1")
    env.update(settings)
    return env


def demo_budget(epochs: int, pretrain_epochs: int, iterations: int) -> Dict[str, str]:
    """Settings of the ``_demo`` trainers (training/variants/demo_budget.py). Their final validation is skipped: the
    callers score held-out cases from a prediction instead."""
    return dict(nnUNet_ddpm_demo_epochs=str(epochs), nnUNet_ddpm_demo_pretrain_epochs=str(pretrain_epochs),
                nnUNet_ddpm_demo_iterations=str(iterations), nnUNet_ddpm_demo_skip_validation="1")


def _slug(title: str) -> str:
    """A file name from a step's title; with the time stamp it keeps the logs of steps that run at once apart (the
    tasks of a cluster job array)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_")


def _print(message: str) -> None:
    print(message, flush=True)  # before the output of the command that follows


def run_steps(steps: Sequence[Step], folder: str, env: Optional[Dict[str, str]] = None,
              log: Callable[[str], None] = _print) -> Dict[str, float]:
    """Run the steps that are not done, in order; logs under ``folder/logs``. Returns {title: seconds} of those that
    ran."""
    logs = join(folder, "logs")
    maybe_mkdir_p(logs)
    todo = [s for s in steps if not s.is_done()]
    log(f"{len(steps)} steps, {len(steps) - len(todo)} already done, {len(todo)} to run")
    seconds, start_all = {}, time.time()
    for number, step in enumerate(todo, 1):
        start = time.time()
        if step.command is None:
            log(f"[{number}/{len(todo)}] {step.title} (elapsed {start - start_all:.0f} s)")
            step.run_in_process()
        else:
            log_file = None if step.show_output else \
                join(logs, f"{time.strftime('%Y%m%d_%H%M%S')}_{_slug(step.title)}.log")
            log(f"[{number}/{len(todo)}] {step.title} (elapsed {start - start_all:.0f} s)\n"
                f"      $ {shlex.join(map(str, step.command))}" + (f"\n      (log: {log_file})" if log_file else ""))
            _run_command(step, folder, log_file, env)
        if step.marker:
            maybe_mkdir_p(os.path.dirname(step.marker))
            save_json({"command": step.command, "seconds": round(time.time() - start, 1)}, step.marker)
        seconds[step.title] = round(time.time() - start, 1)
    return seconds


def _run_command(step: Step, folder: str, log_file: Optional[str], env: Optional[Dict[str, str]]) -> None:
    command = [str(c) for c in step.command]
    with open(join(folder, "commands.txt"), "a") as f:
        f.write(shlex.join(command) + "\n")
    step_env = dict(env if env is not None else os.environ, **(step.env or {}))
    if log_file is None:
        code = subprocess.call(command, env=step_env)
        where = "its message is above"
    else:
        with open(log_file, "w") as handle:
            code = subprocess.call(command, env=step_env, stdout=handle, stderr=subprocess.STDOUT)
        with open(log_file) as f:
            where = f"end of its log {log_file}:\n" + "".join(f.readlines()[-30:])
    if code != 0:
        raise StepFailed(f"{step.title} failed: {shlex.join(command)} exited with code {code}; {where}\nFix the "
                         f"cause and run the same command again: finished steps are skipped, an interrupted training "
                         f"resumes.")
