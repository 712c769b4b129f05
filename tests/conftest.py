"""Shared fixtures: nnU-Net folders in a temporary directory and helpers that run the real nnUNetv2_* commands."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_ddpm.nnunet_trainers import TRAINER_DIR

FEWER_INTENSITY_SAMPLES = """
import sys
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
extractor = DatasetFingerprintExtractor(int(sys.argv[1]), num_processes=1)
extractor.num_foreground_voxels_for_intensitystats = 1e5
extractor.show_progress_bar = False
extractor.run()
"""
REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2015_deepmedic_sample"


class NNUNetFolders:
    """nnUNet_raw / _preprocessed / _results under one root, and a runner for console scripts."""

    def __init__(self, root: Path):
        self.root = root
        self.raw, self.preprocessed, self.results = (root / n for n in ("raw", "preprocessed", "results"))
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    def env(self, training: bool = True) -> dict:
        env = dict(os.environ)
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results), nnUNet_extTrainer=TRAINER_DIR,
                   nnUNet_compile="false", nnUNet_def_n_proc="1",
                   # pytest runs two workers (pytest.ini): one thread per process keeps the 2 cores busy, not contended
                   OMP_NUM_THREADS="1",
                   # the *_demo trainers with a test budget: 2 epochs of 3 iterations (see demo_budget.py)
                   nnUNet_ddpm_demo_epochs="2", nnUNet_ddpm_demo_pretrain_epochs="2", nnUNet_ddpm_demo_iterations="3",
                   # nnU-Net's final validation of segmentation trainers (about 25 s each on 2 cores) only where a
                   # test asks for it: train(..., validate=True)
                   nnUNet_ddpm_demo_skip_validation="1")
        if training:  # in-process augmentation: reproducible; plan_and_preprocess refuses 0 (DESIGN.md)
            env["nnUNet_n_proc_DA"] = "0"
        return env

    def run(self, *args: str, ok: bool = True, training: bool = True, extra_env: dict = None,
            timeout: int = 900) -> subprocess.CompletedProcess:
        env = self.env(training) | (extra_env or {})
        result = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
        output = result.stdout + result.stderr
        if ok and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{output[-6000:]}")
        if not ok and result.returncode == 0:
            raise AssertionError(f"{' '.join(map(str, args))} was expected to fail:\n{output[-3000:]}")
        result.output = output
        return result

    def plan_and_preprocess(self, dataset_id: int, configuration: str):
        """``nnUNetv2_plan_and_preprocess``, after nnU-Net's own fingerprint extractor has sampled 10^5 foreground
        voxels for the intensity statistics instead of its fixed 10^8. That sampling (with replacement, then
        percentiles of the 10^8 values per channel) took about 40 of a tiny dataset's 50 s here; the planner
        finds the fingerprint and uses it (it extracts one only where none exists)."""
        self.run(sys.executable, "-c", FEWER_INTENSITY_SAMPLES, str(dataset_id), training=False)
        return self.run("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", configuration, "-np", "1",
                        "-npfp", "1", "--verify_dataset_integrity", training=False)

    def train(self, dataset_id: int, configuration: str, fold, trainer: str, *extra: str, ok: bool = True,
              extra_env: dict = None, validate: bool = False):
        """``nnUNetv2_train``; nnU-Net's final validation (sliding-window prediction and export of the fold's
        validation cases, about 25 s on 2 cores) only with ``validate`` (the *_demo trainers skip it otherwise)."""
        extra_env = {"nnUNet_ddpm_demo_skip_validation": "0" if validate else "1"} | (extra_env or {})
        return self.run("nnUNetv2_train", dataset_id, configuration, fold, "-tr", trainer, "-device", "cpu", *extra,
                        ok=ok, extra_env=extra_env)

    def patch_size(self, dataset_name: str, configuration: str) -> list:
        plans = json.loads((self.preprocessed / dataset_name / "nnUNetPlans.json").read_text())
        return plans["configurations"][configuration]["patch_size"]

    def trainer_folder(self, dataset_name: str, trainer: str, configuration: str, fold) -> Path:
        return self.results / dataset_name / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


@pytest.fixture(scope="session")
def nnunet(tmp_path_factory) -> NNUNetFolders:
    return NNUNetFolders(tmp_path_factory.mktemp("nnunet"))


PHANTOM_2D = (991, "Dataset991_Phantom")


@pytest.fixture(scope="session")
def phantom_2d(nnunet) -> str:
    """A planned and preprocessed 2D phantom: 8 cases of 40 x 40 pixels, 3 channels."""
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    dataset_id, name = PHANTOM_2D
    write_phantom_dataset(str(nnunet.raw), dataset_id, "Phantom", num_cases=8, size=(40, 40), num_channels=3)
    nnunet.plan_and_preprocess(dataset_id, "2d")
    return name


@pytest.fixture(scope="session")
def pretrained_2d(nnunet, phantom_2d) -> Path:
    """Folder of the finished test-budget DDPM pretraining on the 2D phantom (fold all)."""
    nnunet.train(PHANTOM_2D[0], "2d", "all", "nnUNetTrainerDDPMPretrain_demo")
    return nnunet.trainer_folder(phantom_2d, "nnUNetTrainerDDPMPretrain_demo", "2d", "all")
