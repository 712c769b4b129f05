"""What a DDPM pretraining checkpoint carries beyond nnU-Net's own keys, and how a fine-tuning run finds and checks it.

A pretraining checkpoint is an ordinary nnU-Net checkpoint (``network_weights`` holds the EMA weights, so nnU-Net's
``-pretrained_weights`` transfers the averaged denoiser) plus:

* ``training_network_weights``: the raw weights, needed to resume with ``--c``;
* ``ddpm``: the metadata below, enough to rebuild the denoiser and to refuse an incompatible one.

The same metadata is also inside ``network_weights``, in the denoiser's ``pretraining_metadata`` buffer
(``networks/time_conditioned_unet.py``): nnU-Net's ``-pretrained_weights`` copies that buffer with the weights into
the run's network and tells the trainer nothing else, so that is where a run given a pretraining that way reads it.
Such a run records the pretraining by ``denoiser_sha256`` of the weights it received, not by a file name.
"""
import hashlib
import os
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

from nnunet_ddpm.networks.time_conditioned_unet import PRETRAINING_METADATA_KEY

FORMAT_VERSION = 1
PRETRAINING_FOLD = "all"
# Keys that must agree between a pretraining checkpoint and the run that uses it. The dataset may differ (pretraining
# on a larger dataset with the same channels and plans is legitimate).
MUST_MATCH = ("plans_name", "configuration", "num_input_channels", "patch_size", "network_arch_class_name",
              "network_arch_init_kwargs", "timestep_embedding_dim", "diffusion")


class PretrainingCheckpointError(SystemExit):
    """Raised before training when the DDPM pretraining checkpoint is missing, unreadable or does not fit.

    A SystemExit: raised inside ``nnUNetv2_train`` it ends the program with its message alone (exit status 1), not
    after a traceback through nnU-Net's run script, whose code is not ours to wrap. Python callers catch it by name.
    """


def denoiser_metadata(trainer, diffusion_settings, timestep_embedding_dim: Optional[int], ema_decay: float) -> dict:
    """The ``ddpm`` entry of a pretraining checkpoint, or the expectations of a run that loads one.

    ``patch_size`` is the plans' patch, not the one a pretraining may crop instead (``pretraining_patch_size``): the
    convolutional denoiser takes any patch its downsampling divides, and the plans are what the two runs share.
    """
    cm = trainer.configuration_manager
    planned = trainer.plans_manager.get_configuration(trainer.configuration_name)
    return {
        "format_version": FORMAT_VERSION,
        "dataset_name": trainer.plans_manager.dataset_name,
        "plans_name": trainer.plans_manager.plans_name,
        "configuration": trainer.configuration_name,
        "num_input_channels": int(trainer.num_input_channels),
        "patch_size": [int(i) for i in planned.patch_size],
        "network_arch_class_name": cm.network_arch_class_name,
        "network_arch_init_kwargs": cm.network_arch_init_kwargs,
        "timestep_embedding_dim": timestep_embedding_dim,
        "diffusion": diffusion_settings.to_dict(),
        "ema_decay": ema_decay,
    }


def pretraining_command(dataset_name: str, configuration: str, plans_name: str, trainer_name: str) -> str:
    plans = f" -p {plans_name}" if plans_name != "nnUNetPlans" else ""
    return f"nnUNetv2_train {dataset_name} {configuration} {PRETRAINING_FOLD} -tr {trainer_name}{plans}"


def find_pretraining_checkpoint(results_folder: str, dataset_name: str, plans_name: str, configuration: str,
                                trainer_name: str) -> str:
    """Path of ``checkpoint_final.pth`` of the pretraining run for this dataset, plans and configuration."""
    command = pretraining_command(dataset_name, configuration, plans_name, trainer_name)
    fold_folder = join(results_folder, dataset_name,
                       convert_trainer_plans_config_to_identifier(trainer_name, plans_name, configuration),
                       f"fold_{PRETRAINING_FOLD}")
    final = join(fold_folder, "checkpoint_final.pth")
    if isfile(final):
        return final
    if any(isfile(join(fold_folder, f"checkpoint_{k}.pth")) for k in ("latest", "best")):
        raise PretrainingCheckpointError(
            f"DDPM pretraining in {fold_folder} has not finished (no checkpoint_final.pth). "
            f"Resume it with: {command} --c")
    raise PretrainingCheckpointError(
        f"No DDPM pretraining checkpoint found at {final}. Pretrain first with: {command} "
        f"(or pass a pretraining checkpoint with -pretrained_weights).")


def load_checkpoint_file(path: str, pretrainer: str = "nnUNetTrainerDDPMPretrain") -> dict:
    """torch.load on CPU with an error that says what to do when the file is missing, truncated or not a checkpoint;
    ``pretrainer``: the pretraining trainer whose checkpoint is expected, named in the messages."""
    if not os.path.isfile(path):
        raise PretrainingCheckpointError(
            f"Pretraining checkpoint {path} does not exist. Give the checkpoint_final.pth of a finished {pretrainer} "
            f"run ($nnUNet_results/DATASET/{pretrainer}__PLANS__CONFIGURATION/fold_all/checkpoint_final.pth), or "
            f"pretrain first with: nnUNetv2_train DATASET CONFIGURATION all -tr {pretrainer}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...: torch raises many types
        raise PretrainingCheckpointError(
            f"Cannot read pretraining checkpoint {path} ({type(e).__name__}: {e}). The file is truncated or not a "
            f"PyTorch checkpoint; delete it and pretrain again (or resume the pretraining with --c).") from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise PretrainingCheckpointError(f"{path} is not an nnU-Net checkpoint (no 'network_weights').")
    if "ddpm" not in checkpoint:
        raise PretrainingCheckpointError(
            f"{path} is an nnU-Net checkpoint but not a DDPM pretraining checkpoint (no 'ddpm' metadata; trainer "
            f"{checkpoint.get('trainer_name', 'unknown')}). Use the checkpoint_final.pth of {pretrainer}.")
    return checkpoint


def check_compatible(found: dict, expected: dict, path: str, command: str) -> None:
    """Refuse a checkpoint whose metadata differs from what this run needs; name every difference."""
    if found.get("format_version") != FORMAT_VERSION:
        raise PretrainingCheckpointError(
            f"{path} has checkpoint format {found.get('format_version')}, this version of nnunet_ddpm reads "
            f"format {FORMAT_VERSION}. Pretrain again with: {command}")
    differences = [f"{k}: checkpoint has {found.get(k)!r}, this run needs {expected[k]!r}"
                   for k in MUST_MATCH if _normalise(found.get(k)) != _normalise(expected[k])]
    if differences:
        raise PretrainingCheckpointError(
            f"The pretraining checkpoint {path} does not fit this run:\n  " + "\n  ".join(differences) +
            f"\nPretrain for these plans and configuration with: {command}")


def _normalise(value):
    """Compare JSON-like values regardless of tuple/list differences (plans round-trip through JSON)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def transfer_denoiser_weights(network: torch.nn.Module, pretrained: dict) -> None:
    """Copy every tensor of the pretrained denoiser into ``network`` by key, except the output heads.

    The rule is nnU-Net's ``load_pretrained_weights``: all keys of the target but those containing ``.seg_layers.``
    must exist with the same shape; the head keeps its fresh initialisation.
    """
    target = network.state_dict()
    # a pretraining saved before the metadata buffer existed lacks it: the target keeps its empty one
    transferable = [k for k in target if '.seg_layers.' not in k and
                    not (k.endswith(PRETRAINING_METADATA_KEY) and k not in pretrained)]
    missing = [k for k in transferable if k not in pretrained]
    mismatched = [f"{k}: checkpoint {tuple(pretrained[k].shape)}, network {tuple(target[k].shape)}"
                  for k in transferable if k in pretrained and pretrained[k].shape != target[k].shape]
    if missing or mismatched:
        raise PretrainingCheckpointError(
            "The pretrained denoiser does not fit the network: "
            + (f"{len(missing)} keys missing (first: {missing[:3]}); " if missing else "")
            + (f"{len(mismatched)} shapes differ (first: {mismatched[:3]})" if mismatched else ""))
    target.update({k: pretrained[k] for k in transferable})
    network.load_state_dict(target)


def denoiser_sha256(weights: dict) -> str:
    """Content hash of a denoiser's state dict without the output heads (keys with ``.seg_layers.``): the weights that
    nnU-Net's ``-pretrained_weights`` transfers. Equal for a checkpoint's ``network_weights`` and for a network that
    received them, whatever the file was called; order, device and file format do not enter."""
    digest = hashlib.sha256()
    for key in sorted(k for k in weights if '.seg_layers.' not in k):
        tensor = weights[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
