"""DDPM weights for stock nnU-Net: a pretraining as ``-pretrained_weights`` for any stock trainer, and a fine-tuned
model folder as a stock model folder that predicts without this plugin.

Both rest on ``networks/folding.py``: at a fixed timestep the fine-tune network is nnU-Net's planned network with
folded weights. The pixel classifier has no such form (its head reads the frozen denoiser at several timesteps and
upsamples decoder features), so its models cannot be exported.
"""
import argparse
import os
import shutil
import sys
from typing import Dict, Optional, Sequence

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p, subdirs
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ddpm.diffusion import FINETUNE_TIMESTEP, DiffusionSettings
from nnunet_ddpm.files import folder_written_atomically, torch_saved_atomically
from nnunet_ddpm.folders import require_writable_folder
from nnunet_ddpm.networks import FixedTimestepUNet
from nnunet_ddpm.networks.folding import fold_denoiser, plain_state_dict
from nnunet_ddpm.networks.pretrained_checkpoint import load_checkpoint_file

STOCK_TRAINER = "nnUNetTrainer"
# as nnssl checkpoints carry them; nnU-Net's development branch prints them when it trains from the file
CITATIONS = [{"type": "pretraining", "name": "DDPM denoising pretraining (nnunet_ddpm)", "apa_citations": [
    "Alshenoudy, A., Sabrowsky-Hirsch, B., Thumfart, S., Giretzlehner, M., Kobler, E. (2023). Semi-supervised Brain "
    "Tumor Segmentation Using Diffusion Models. AIAI 2023, IFIP AICT 675, 314-325. doi:10.1007/978-3-031-34111-3_27"]}]


class ExportError(ValueError):
    """Input that cannot be exported; the message says why and what to do."""


def export_pretraining_weights(checkpoint_path: str, output_file: str, timestep: int = FINETUNE_TIMESTEP) -> dict:
    """Write ``output_file``, a checkpoint that ``nnUNetv2_train ... -pretrained_weights`` of any stock trainer with
    the pretraining's plans and configuration accepts; returns its ``ddpm_export`` record."""
    checkpoint = load_checkpoint_file(checkpoint_path)
    metadata = checkpoint["ddpm"]
    diffusion = DiffusionSettings.from_dict(metadata["diffusion"])
    if not 0 <= timestep < diffusion.num_train_timesteps:
        raise ExportError(f"--timestep must lie in [0, {diffusion.num_train_timesteps - 1}], got {timestep}.")
    plans_manager = PlansManager(checkpoint["init_args"]["plans"])
    configuration_manager = plans_manager.get_configuration(metadata["configuration"])
    weights = fold_denoiser(checkpoint["network_weights"], configuration_manager, metadata["num_input_channels"],
                            timestep, diffusion, metadata["timestep_embedding_dim"])
    record = {"source": os.path.abspath(checkpoint_path), "timestep": timestep,
              "alpha_bar": diffusion.alpha_bar(timestep), "dataset_name": metadata["dataset_name"],
              "plans_name": metadata["plans_name"], "configuration": metadata["configuration"],
              "pretraining_epochs": checkpoint["current_epoch"]}
    plan = adaptation_plan(plans_manager, metadata["configuration"], metadata["num_input_channels"], weights)
    maybe_mkdir_p(os.path.dirname(os.path.abspath(output_file)))
    torch_saved_atomically({"network_weights": weights, "ddpm_export": record, "nnssl_adaptation_plan": plan,
                            "citations": CITATIONS}, output_file)
    return record


def adaptation_plan(plans_manager: PlansManager, configuration: str, num_input_channels: int,
                    weights: Dict[str, torch.Tensor]) -> dict:
    """How nnssl (MIC-DKFZ/nnssl) describes a pretrained checkpoint to the tools that adapt it to a downstream task
    (its ``AdaptationPlan``): the architecture as a dynamic-network-architectures class and its keyword arguments,
    the pretraining plans, the input channels, a recommended patch size, and where encoder, stem, input projection
    and learnable positional embedding sit in ``network_weights``. nnU-Net's development branch reads it
    (``nnUNetv2_preprocess_like_nnssl``, ``PretrainedTrainer.load_pretrained_weights``): the keys are the planned
    network's own ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` and ``key_to_lpe``, as nnssl writes them.

    Written as plain JSON-like values, without importing nnssl."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    configuration_manager = plans_manager.get_configuration(configuration)
    network = get_network_from_plans(configuration_manager.network_arch_class_name,
                                     configuration_manager.network_arch_init_kwargs,
                                     configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, 1,
                                     allow_init=False, deep_supervision=False)
    for key in [network.key_to_encoder, network.key_to_stem, *network.keys_to_in_proj]:
        if not any(k.startswith(key + ".") for k in weights):
            raise ExportError(f"The planned {type(network).__name__} names {key} as a part to transfer, but the "
                              f"exported weights have no key under it.")
    plans = plans_manager.plans
    return {
        "architecture_plans": {"arch_class_name": configuration_manager.network_arch_class_name,
                               "arch_kwargs": dict(configuration_manager.network_arch_init_kwargs),
                               "arch_kwargs_requiring_import": list(
                                   configuration_manager.network_arch_init_kwargs_req_import)},
        "pretrain_plan": {"dataset_name": plans["dataset_name"], "plans_name": plans["plans_name"],
                          "original_median_spacing_after_transp": plans["original_median_spacing_after_transp"],
                          "image_reader_writer": plans["image_reader_writer"],
                          "transpose_forward": plans["transpose_forward"],
                          "transpose_backward": plans["transpose_backward"],
                          "experiment_planner_used": plans["experiment_planner_used"],
                          "configurations": {configuration: dict(configuration_manager.configuration)}},
        "pretrain_num_input_channels": int(num_input_channels),
        "recommended_downstream_patchsize": [int(i) for i in configuration_manager.patch_size],
        "key_to_encoder": network.key_to_encoder,
        "key_to_stem": network.key_to_stem,
        "keys_to_in_proj": list(network.keys_to_in_proj),
        "key_to_lpe": network.key_to_lpe,
    }


def _segmentation_network(trainer_name: str, plans_manager: PlansManager, configuration: str,
                          dataset_json: dict) -> torch.nn.Module:
    from nnunet_ddpm.nnunet_trainers import find_trainer_class
    from nnunet_ddpm.training.ddpm_trainer_base import nnUNetTrainerDDPMBase
    try:
        trainer_class = find_trainer_class(trainer_name)
    except RuntimeError:
        raise ExportError(
            f"nnU-Net's trainer search finds no trainer {trainer_name} (searched nnunetv2's trainers and "
            f"nnUNet_extTrainer={os.environ.get('nnUNet_extTrainer')}). If it is your own trainer, name its folder: "
            f'export nnUNet_extTrainer="$(nnUNetv2_ddpm_trainer_dir){os.pathsep}/path/to/your/trainers"') from None
    if not issubclass(trainer_class, nnUNetTrainerDDPMBase):
        raise ExportError(f"{trainer_name} is not a trainer of nnunet_ddpm nor a subclass of one; a stock trainer's "
                          f"model needs no export.")
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    configuration_manager = plans_manager.get_configuration(configuration)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return trainer_class.build_network_architecture(
        plans_manager, configuration_manager, determine_num_input_channels(plans_manager, configuration_manager,
                                                                           dataset_json), num_outputs, False)


def export_model_folder(model_folder: str, output_folder: str, trainer_name: str = STOCK_TRAINER,
                        folds: Optional[Sequence[str]] = None) -> list:
    """Turn a trained fine-tune model folder (``Trainer__Plans__configuration``) into a stock one: every fold's
    checkpoints with the folded network and ``trainer_name``, plans, dataset.json, fingerprint, logs and validation
    copied. ``output_folder`` must be named ``<trainer_name>__Plans__configuration``. Returns the exported folds."""
    source_name = os.path.basename(os.path.normpath(model_folder))
    parts = source_name.split("__")
    if len(parts) != 3 or not isfile(join(model_folder, "plans.json")):
        raise ExportError(f"{model_folder} is not an nnU-Net model folder (Trainer__Plans__configuration with "
                          f"plans.json).")
    expected_name = "__".join([trainer_name, parts[1], parts[2]])
    if os.path.basename(os.path.normpath(output_folder)) != expected_name:
        raise ExportError(f"The output folder must be named {expected_name} so that nnU-Net finds it as trainer "
                          f"{trainer_name}; got {output_folder}.")
    if os.path.abspath(output_folder) == os.path.abspath(model_folder):
        raise ExportError("The output folder is the model folder itself; give another one.")
    source_trainer, _, configuration = parts
    plans_manager = PlansManager(join(model_folder, "plans.json"))
    dataset_json = load_json(join(model_folder, "dataset.json"))
    network = _segmentation_network(source_trainer, plans_manager, configuration, dataset_json)
    if not isinstance(network, FixedTimestepUNet) and not type(network).__module__.startswith(
            "dynamic_network_architectures"):
        raise ExportError(f"{source_trainer} models cannot become stock nnU-Net models: the pixel classifier reads the "
                          f"frozen denoiser at several timesteps and classifies upsampled decoder features, which no "
                          f"stock network computes. Keep nnunet_ddpm installed to predict with it.")
    available = sorted(d[len("fold_"):] for d in subdirs(model_folder, prefix="fold_", join=False))
    folds = [str(f) for f in folds] if folds else available
    missing = [f for f in folds if not isfile(join(model_folder, f"fold_{f}", "checkpoint_final.pth"))]
    if missing:
        raise ExportError(f"Fold(s) {missing} of {model_folder} have no checkpoint_final.pth; finish their training "
                          f"first (folds with one: {[f for f in available if f not in missing]}).")
    with folder_written_atomically(output_folder) as partial:
        shutil.copytree(model_folder, partial, ignore=shutil.ignore_patterns("*.pth", "fold_*"), dirs_exist_ok=True)
        for fold in folds:
            source_fold, target_fold = join(model_folder, f"fold_{fold}"), join(partial, f"fold_{fold}")
            shutil.copytree(source_fold, target_fold, ignore=shutil.ignore_patterns("*.pth"))
            for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
                if isfile(join(source_fold, name)):
                    _export_checkpoint(join(source_fold, name), join(target_fold, name), network, trainer_name)
    return folds


def _export_checkpoint(source: str, target: str, network: torch.nn.Module, trainer_name: str) -> None:
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    network.load_state_dict(checkpoint["network_weights"])
    weights = plain_state_dict(network.eval()) if isinstance(network, FixedTimestepUNet) else \
        checkpoint["network_weights"]
    stock = {k: checkpoint[k] for k in ("init_args", "current_epoch", "logging", "_best_ema",
                                        "inference_allowed_mirroring_axes") if k in checkpoint}
    stock.update(network_weights=weights, trainer_name=trainer_name, optimizer_state=None, grad_scaler_state=None,
                 ddpm_export={"source": os.path.abspath(source), "trainer_name": checkpoint["trainer_name"],
                              "ddpm_pretraining": checkpoint.get("ddpm_pretraining")})
    torch_saved_atomically(stock, target)


def export_weights_entry(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Turn a DDPM pretraining checkpoint into weights for any stock nnU-Net trainer with the same plans "
                    "and configuration: nnUNetv2_train D C F -tr nnUNetTrainer -pretrained_weights OUTPUT. The "
                    "denoiser is folded at one timestep into nnU-Net's own network (its segmentation layers are new).")
    parser.add_argument("-i", required=True, help="checkpoint_final.pth of an nnUNetTrainerDDPMPretrain run")
    parser.add_argument("-o", required=True, help="output file, e.g. ddpm_weights.pth")
    parser.add_argument("--timestep", type=int, default=FINETUNE_TIMESTEP,
                        help="diffusion timestep to fold (default: %(default)s, the fine-tune's)")
    args = parser.parse_args(argv)
    require_writable_folder("nnUNetv2_ddpm_export_weights", os.path.dirname(os.path.abspath(args.o)))
    try:
        record = export_pretraining_weights(args.i, args.o, args.timestep)
    except (ExportError, RuntimeError) as e:
        sys.exit(f"nnUNetv2_ddpm_export_weights: {e}")
    print(f"Wrote {args.o} (timestep {record['timestep']}, {record['pretraining_epochs']} pretraining epochs). Use it "
          f"with: nnUNetv2_train {record['dataset_name']} {record['configuration']} FOLD -tr nnUNetTrainer "
          f"-p {record['plans_name']} -pretrained_weights {args.o}")
    if record["configuration"] == "3d_fullres":  # nnU-Net's nnssl route plans 3d_fullres only
        print(f"With nnU-Net's development branch also: nnUNetv2_preprocess_like_nnssl -d DATASET -n NAME -pc {args.o} "
              f"-am default_nnunet, then nnUNetv2_train_pretrained DATASET 3d_fullres FOLD -p ptPlans__NAME____... "
              f"-tr PretrainedTrainer (encoder weights only)")


def export_model_entry(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Turn a trained DDPM fine-tune model folder into a stock nnU-Net model folder that predicts, "
                    "exports to zip, ensembles and finds the best configuration without nnunet_ddpm installed.")
    parser.add_argument("-i", required=True, help="model folder, e.g. $nnUNet_results/Dataset501_X/"
                                                  "nnUNetTrainerDDPMFinetune__nnUNetPlans__2d")
    parser.add_argument("-o", required=True, help="results folder to write into (its DatasetXXX_Name/"
                                                  "<trainer>__Plans__configuration is created); not the -i one's")
    parser.add_argument("-tr", default=STOCK_TRAINER, help="stock trainer name to give the model (default: "
                                                           "%(default)s)")
    parser.add_argument("-f", nargs="+", default=None, help="folds (default: all with checkpoint_final.pth)")
    args = parser.parse_args(argv)
    require_writable_folder("nnUNetv2_ddpm_export_model", args.o)
    source = os.path.normpath(args.i)
    parts = os.path.basename(source).split("__")
    target = join(args.o, os.path.basename(os.path.dirname(source)), "__".join([args.tr] + parts[1:]))
    try:
        folds = export_model_folder(source, target, args.tr, args.f)
    except (ExportError, RuntimeError) as e:
        sys.exit(f"nnUNetv2_ddpm_export_model: {e}")
    print(f"Wrote {target} (folds {', '.join(folds)}). With nnUNet_results={args.o}: nnUNetv2_predict ... -tr "
          f"{args.tr} -p {parts[1] if len(parts) == 3 else 'PLANS'} -c {parts[-1]}")
