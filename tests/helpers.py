"""What several test modules share: nnU-Net folders and a runner for the real console scripts, the datasets'
identifiers, small plans configurations and networks."""
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ddpm.networks import PixelClassifierNetwork, TimeConditionedUNet, build_unet_from_plans
from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
from nnunet_ddpm.networks.pretrained_checkpoint import transfer_denoiser_weights
from nnunet_ddpm.steps import demo_budget, working_folder_environment

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2015_deepmedic_sample"


class NNUNetFolders:
    """nnUNet_raw / _preprocessed / _results under one root, and a runner for console scripts."""

    FOLDER_NAMES = ("raw", "preprocessed", "results")

    def __init__(self, root: Path):
        self.root = root
        self.raw, self.preprocessed, self.results = (root / n for n in self.FOLDER_NAMES)
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    def env(self, training: bool = True) -> dict:
        """The tools' environment (``working_folder_environment``) with the plugin's trainers alone on
        nnUNet_extTrainer and the PYTHONPATH pytest runs with."""
        env = working_folder_environment(
            self.root, folder_names=self.FOLDER_NAMES, this_copy_first=False, nnUNet_extTrainer=TRAINER_DIR,
            nnUNet_compile="false", nnUNet_def_n_proc="1",
            # pytest runs two workers (pytest.ini): one thread per process keeps the 2 cores busy, not contended
            OMP_NUM_THREADS="1",
            # the *_demo trainers with a test budget: 2 epochs of 3 iterations (see demo_budget.py); nnU-Net's final
            # validation of segmentation trainers (about 25 s each on 2 cores) only where a test asks for it:
            # train(..., validate=True)
            **demo_budget(epochs=2, pretrain_epochs=2, iterations=3))
        if training:  # in-process augmentation: reproducible; plan_and_preprocess refuses 0
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
        """``nnUNetv2_plan_and_preprocess`` after the fingerprint with fewer intensity samples that the demo and
        the patient tool use (``nnunet_ddpm.fingerprint``)."""
        self.run(sys.executable, "-m", "nnunet_ddpm.fingerprint", str(dataset_id), training=False)
        return self.run("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", configuration, "-np", "1",
                        "-npfp", "1", "--verify_dataset_integrity", training=False)

    def train(self, dataset_id: int, configuration: str, fold, trainer: str, *extra: str, ok: bool = True,
              extra_env: dict = None, validate: bool = False):
        """``nnUNetv2_train``; nnU-Net's final validation (sliding-window prediction and export of the fold's
        validation cases, about 25 s on 2 cores) only with ``validate`` (the *_demo trainers skip it otherwise)."""
        extra_env = {"nnUNet_ddpm_demo_skip_validation": "0" if validate else "1"} | (extra_env or {})
        return self.run("nnUNetv2_train", dataset_id, configuration, fold, "-tr", trainer, "-device", "cpu", *extra,
                        ok=ok, extra_env=extra_env)

    def planned(self, dataset_name: str, configuration: str) -> dict:
        """The configuration's entry of the dataset's nnUNetPlans.json."""
        plans = json.loads((self.preprocessed / dataset_name / "nnUNetPlans.json").read_text())
        return plans["configurations"][configuration]

    def patch_size(self, dataset_name: str, configuration: str) -> list:
        return self.planned(dataset_name, configuration)["patch_size"]

    def trainer_folder(self, dataset_name: str, trainer: str, configuration: str, fold) -> Path:
        return self.results / dataset_name / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"


PHANTOM_2D = (991, "Dataset991_Phantom")


def configuration(dim: int, norm: str = None) -> ConfigurationManager:
    """A small plans configuration of the shape nnU-Net writes, 2D or 3D."""
    conv = f"torch.nn.modules.conv.Conv{dim}d"
    norm = norm or f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    return ConfigurationManager({
        "patch_size": [16] * dim,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": conv,
                            "kernel_sizes": [[3] * dim] * 3, "strides": [[1] * dim, [2] * dim, [2] * dim],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}})


def make_denoiser(dim=2):
    """A "trained" denoiser (the timestep matters)."""
    torch.manual_seed(0)
    denoiser = TimeConditionedUNet(build_unet_from_plans(configuration(dim), 2, 2, deep_supervision=False))
    for name, p in denoiser.named_parameters():
        if "time_projection" in name:
            torch.nn.init.normal_(p, std=0.1)
    return denoiser


def make_network(dim=2, stages=(-2, -1), timesteps=(50, 150), ensemble_size=3, num_classes=4, denoiser=None,
                 **kwargs):
    """The pixel classifier on ``denoiser``'s weights, as the trainer builds and loads it."""
    alpha_bars = [math.cos(t / 1000 * math.pi / 2) ** 2 for t in timesteps]
    network = PixelClassifierNetwork(build_unet_from_plans(configuration(dim), 2, 2, deep_supervision=False), stages,
                                     timesteps, alpha_bars, num_classes, ensemble_size, **kwargs)
    transfer_denoiser_weights(network, (denoiser or make_denoiser(dim)).state_dict())
    return network


def assert_summary_is_the_dice_of_the_files(validation: Path, ground_truth: Path, labels: dict) -> None:
    """nnU-Net's summary.json of a validation folder against Dice computed here from its exported segmentations and
    the ground truth (a label is one value, a region several; undefined where both are empty, left out of the mean):
    the final validation evaluated what the trained network predicted, for every case."""
    import numpy as np
    import SimpleITK as sitk
    summary = json.loads((validation / "summary.json").read_text())
    cases = sorted(p.name for p in validation.glob("*.nii.gz"))
    assert cases and len(summary["metric_per_case"]) == len(cases)
    for value in (v for name, v in labels.items() if name != "background"):
        values = tuple(value) if isinstance(value, list) else (value,)
        dice = []
        for case in cases:
            p, r = (np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(f / case))), values)
                    for f in (validation, ground_truth))
            total = p.sum() + r.sum()
            dice.append(np.nan if total == 0 else 2 * (p & r).sum() / total)
        key = str(values) if isinstance(value, list) else str(value)  # nnU-Net's keys: "(2, 3)", "(3,)", "1"
        expected = summary["mean"][key]["Dice"]
        assert np.isclose(np.nanmean(dice), expected, equal_nan=True), (key, np.nanmean(dice), expected)


def hidden_plugin_env(tmp_path, results) -> dict:
    """An environment in which ``import nnunet_ddpm`` fails and no external trainer folder is set."""
    hide = tmp_path / "hide" / "nnunet_ddpm"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('nnunet_ddpm is hidden in this test')\n")
    return {"PYTHONPATH": str(hide.parent), "nnUNet_extTrainer": "", "nnUNet_results": str(results)}


def tiny_plans(dataset_name: str, batch_size: int = 4, size: int = 32, channels: int = 2) -> dict:
    """nnU-Net plans of a tiny 2D network (3 stages of 8, 16, 32 features, size x size patches), for constructing
    trainers in the test process without planning a dataset; with the "continue_training" entry nnU-Net's
    run_training adds before it constructs one."""
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1] * 3,
                        "n_conv_per_stage_decoder": [1] * 2, "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    resampling = "resample_data_or_seg_to_shape"
    configuration = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
        "patch_size": [size, size], "median_image_size_in_voxels": [size, size], "spacing": [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"] * channels, "use_mask_for_norm": [False] * channels,
        "resampling_fn_data": resampling, "resampling_fn_seg": resampling, "resampling_fn_probabilities": resampling,
        "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities_kwargs": {},
        "batch_dice": True, "architecture": architecture}
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0] * 3, "original_median_shape_after_transp": [1, size, size],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}, "configurations": {"2d": configuration},
            "continue_training": False}


TINY_DATASET_JSON = {"channel_names": {"0": "A", "1": "B"}, "labels": {"background": 0, "tumour": 1},
                     "numTraining": 4, "file_ending": ".nii.gz"}


def changed_pretraining(source: Path, target: Path, change) -> Path:
    """A copy of the pretraining checkpoint ``source`` at ``target`` whose description ``change(metadata)`` edited in
    place, in both places it is kept: the checkpoint's ``ddpm`` entry and the buffer inside its weights."""
    from nnunet_ddpm.networks import (PRETRAINING_METADATA_KEY, decode_pretraining_metadata,
                                      encode_pretraining_metadata)
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    change(checkpoint["ddpm"])
    inside = decode_pretraining_metadata(checkpoint["network_weights"][PRETRAINING_METADATA_KEY])
    change(inside)
    checkpoint["network_weights"][PRETRAINING_METADATA_KEY] = encode_pretraining_metadata(inside)
    torch.save(checkpoint, target)
    return target
