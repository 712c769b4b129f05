"""The exported weights as an nnssl checkpoint, the form nnU-Net's development branch (MIC-DKFZ/nnUNet master, not in
nnunetv2 2.8.1) trains from: ``nnUNetv2_preprocess_like_nnssl`` reads the file's ``nnssl_adaptation_plan`` into
the plans, ``nnUNetv2_train_pretrained -tr PretrainedTrainer`` loads encoder and stem by the plan's keys.

The first test runs on any nnunetv2: the file against what the branch's code reads, loaded the way its
``PretrainedTrainer.load_pretrained_weights`` loads a plain U-Net. The second runs the branch's own commands and
skips on a release without them (``benchmarks/dev_branch_check.sh`` installs the branch and runs it)."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

pytestmark = pytest.mark.slow
DATASET_ID, DATASET = 976, "Dataset976_PhantomNnssl"
CHANNELS, HEADS = 2, 4  # the phantom's channels; background and three tumour labels


@pytest.fixture(scope="module")
def exported(nnunet, tmp_path_factory):
    """A 3d_fullres pretraining (test budget) of a small 3D phantom, exported with nnUNetv2_ddpm_export_weights."""
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    write_phantom_dataset(str(nnunet.raw), DATASET_ID, "PhantomNnssl", num_cases=5, size=(20, 24, 24),
                          num_channels=CHANNELS)
    nnunet.plan_and_preprocess(DATASET_ID, "3d_fullres")
    nnunet.train(DATASET_ID, "3d_fullres", "all", "nnUNetTrainerDDPMPretrain_demo")
    pretraining = nnunet.trainer_folder(DATASET, "nnUNetTrainerDDPMPretrain_demo", "3d_fullres", "all")
    path = tmp_path_factory.mktemp("nnssl") / "ddpm_t50.pth"
    result = nnunet.run("nnUNetv2_ddpm_export_weights", "-i", pretraining / "checkpoint_final.pth", "-o", path,
                        training=False)
    assert f"nnUNetv2_preprocess_like_nnssl -d DATASET -n NAME -pc {path}" in result.output
    return path


def _part(weights: dict, key: str) -> dict:
    """The tensors under ``key`` with the prefix removed, as the branch's loader cuts them."""
    return {k[len(key) + 1:]: v for k, v in weights.items() if k.startswith(key + ".")}


def _assert_encoder_is_the_exported_one(network, weights):
    state = network.state_dict()
    encoder = [k for k in state if k.startswith(network.key_to_encoder + ".")]
    assert encoder and all(torch.equal(state[k], weights[k]) for k in encoder)
    # the decoder is not transferred: it keeps its initialisation
    decoder = [k for k in state if k.startswith("decoder.stages.") and k.endswith("conv.weight")]
    assert decoder and not any(torch.equal(state[k], weights[k]) for k in decoder)


def test_the_file_is_the_checkpoint_format_the_development_branch_reads(nnunet, exported):
    checkpoint = torch.load(exported, map_location="cpu", weights_only=True)  # both readers load it this way
    plan = checkpoint["nnssl_adaptation_plan"]
    planned = nnunet.planned(DATASET, "3d_fullres")
    # nnUNetv2_preprocess_like_nnssl: the pretraining's configuration (spacing, patch), the architecture it writes into
    # the downstream plans, input channels, patch size and the keys it copies into pretrain_info
    assert list(plan["pretrain_plan"]["configurations"]) == ["3d_fullres"]
    pretrain_configuration = plan["pretrain_plan"]["configurations"]["3d_fullres"]
    assert pretrain_configuration["spacing"] == planned["spacing"]
    assert pretrain_configuration["patch_size"] == planned["patch_size"] == plan["recommended_downstream_patchsize"]
    architecture = planned["architecture"]
    assert plan["architecture_plans"] == {"arch_class_name": architecture["network_class_name"],
                                          "arch_kwargs": architecture["arch_kwargs"],
                                          "arch_kwargs_requiring_import": architecture["_kw_requires_import"]}
    assert plan["pretrain_num_input_channels"] == CHANNELS
    assert checkpoint["citations"][0]["apa_citations"][0].startswith("Alshenoudy, A.")
    # PretrainedTrainer: builds the architecture from the plans (a PlainConvUNet here) and takes the keys from the
    # checkpoint; they are the network's own, as nnssl writes them
    arch = plan["architecture_plans"]
    network = get_network_from_plans(arch["arch_class_name"], arch["arch_kwargs"],
                                     arch["arch_kwargs_requiring_import"], CHANNELS, HEADS, allow_init=True,
                                     deep_supervision=False)
    assert type(network).__name__ == "PlainConvUNet"
    assert (plan["key_to_encoder"], plan["key_to_stem"], tuple(plan["keys_to_in_proj"]), plan["key_to_lpe"]) == (
        network.key_to_encoder, network.key_to_stem, network.keys_to_in_proj, None) == (
        "encoder.stages", "encoder.stages.0", ("encoder.stages.0.0.convs.0.all_modules.0",
                                               "encoder.stages.0.0.convs.0.conv"), None)
    # the stem is not a tensor key, so the branch loads encoder and stem as two submodules, each strictly
    weights = checkpoint["network_weights"]
    assert plan["key_to_stem"] not in weights
    for key in (plan["key_to_encoder"], plan["key_to_stem"]):
        network.get_submodule(key).load_state_dict(_part(weights, key))
    _assert_encoder_is_the_exported_one(network, weights)
    # and those tensors are the pretraining folded at timestep 50, the weights the stock export hands to
    # -pretrained_weights (tests/export/test_stock_export.py checks that network against the plugin's)
    assert checkpoint["ddpm_export"]["timestep"] == 50 and checkpoint["ddpm_export"]["configuration"] == "3d_fullres"


def test_development_branch_trains_from_the_file(nnunet, exported, tmp_path):
    trainer_module = pytest.importorskip(
        "nnunetv2.training.nnUNetTrainer.pretraining.pretrainedTrainer",
        reason="nnUNetv2_train_pretrained is in nnU-Net's development branch only: bash benchmarks/dev_branch_check.sh")
    nnunet.run("nnUNetv2_preprocess_like_nnssl", "-d", DATASET_ID, "-n", "DDPM", "-pc", exported,
               "-am", "default_nnunet", "-np", 1, training=False)
    (plans_file,) = (nnunet.preprocessed / DATASET).glob("ptPlans__DDPM____*.json")
    plans = json.loads(plans_file.read_text())
    info, configuration = plans["pretrain_info"], plans["configurations"]["3d_fullres"]
    assert info["checkpoint_path"] == str(exported) and info["pt_num_in_channels"] == CHANNELS
    assert configuration["architecture"]["network_class_name"].endswith("PlainConvUNet")

    # the branch's own loader, in this process
    trainer = trainer_module.PretrainedTrainer
    architecture = configuration["architecture"]
    network = trainer.build_network_architecture(
        architecture["network_class_name"], architecture["arch_kwargs"], architecture["_kw_requires_import"],
        configuration["patch_size"], CHANNELS, HEADS, enable_deep_supervision=False)
    network, _ = trainer.load_pretrained_weights(
        network, str(exported), info["pt_num_in_channels"], CHANNELS, info["pt_used_patchsize"],
        configuration["patch_size"], info["key_to_encoder"], info["key_to_stem"], tuple(info["keys_to_in_proj"]),
        info["key_to_lpe"])
    weights = torch.load(exported, map_location="cpu", weights_only=True)["network_weights"]
    _assert_encoder_is_the_exported_one(network, weights)

    # nnUNetv2_train_pretrained: its first epoch (250 iterations and nnU-Net's validation steps), then stopped
    folder = nnunet.results / DATASET / f"PretrainedTrainer__{plans_file.stem}__3d_fullres" / "fold_0"
    log = tmp_path / "train_pretrained.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["nnUNetv2_train_pretrained", str(DATASET_ID), "3d_fullres", "0", "-p",
                                    plans_file.stem, "-tr", "PretrainedTrainer", "-device", "cpu"],
                                   env=nnunet.env() | {"PYTHONUNBUFFERED": "1"}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 900
        while process.poll() is None and "Epoch 1\n" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(2)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    output = log.read_text()
    assert "Epoch 1\n" in output, output[-6000:]
    assert f"Loaded Network from {exported}" in output and "Alshenoudy" in output
    losses = [float(line.split("train_loss")[1]) for line in output.splitlines() if "train_loss" in line]
    assert len(losses) == 1 and losses[0] == losses[0]  # epoch 0's loss, a number
    trained = torch.load(folder / "checkpoint_best.pth", map_location="cpu", weights_only=False)["network_weights"]
    stem = "encoder.stages.0.0.convs.0.conv.weight"
    assert trained[stem].shape == weights[stem].shape and not torch.equal(trained[stem], weights[stem])
