"""Unit tests of the checkpoint rules and of what a trainer learns from the weights nnU-Net gives it (fast; no
training)."""
from pathlib import Path

import pytest
import torch

import nnunet_ddpm
from nnunet_ddpm.networks.pretrained_checkpoint import (PretrainingCheckpointError, check_compatible, denoiser_sha256,
                                                        find_pretraining_checkpoint, load_checkpoint_file)

META = {"format_version": 1, "dataset_name": "Dataset001_A", "plans_name": "nnUNetPlans", "configuration": "2d",
        "num_input_channels": 4, "patch_size": [128, 128], "network_arch_class_name": "PlainConvUNet",
        "network_arch_init_kwargs": {"n_stages": 6}, "timestep_embedding_dim": None,
        "diffusion": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}, "ema_decay": 0.999}


def test_compatible_checkpoint_passes_even_from_another_dataset():
    check_compatible(dict(META, dataset_name="Dataset002_Bigger", patch_size=(128, 128)), META, "x.pth", "cmd")


def test_incompatible_checkpoint_names_every_difference_and_the_fix():
    found = dict(META, configuration="3d_fullres", num_input_channels=2, patch_size=[64, 64])
    with pytest.raises(PretrainingCheckpointError) as error:
        check_compatible(found, META, "/p/checkpoint_final.pth", "nnUNetv2_train D 2d all -tr P")
    message = str(error.value)
    assert "configuration: checkpoint has '3d_fullres', this run needs '2d'" in message
    assert "num_input_channels: checkpoint has 2, this run needs 4" in message
    assert "patch_size: checkpoint has [64, 64], this run needs [128, 128]" in message
    assert "nnUNetv2_train D 2d all -tr P" in message
    with pytest.raises(PretrainingCheckpointError, match="checkpoint format 0"):
        check_compatible(dict(META, format_version=0), META, "p", "cmd")


def test_unreadable_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"network_weights": {}, "ddpm": META}, good)
    assert load_checkpoint_file(str(good))["ddpm"] == META
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(PretrainingCheckpointError, match="Cannot read pretraining checkpoint.*truncated"):
        load_checkpoint_file(str(truncated))
    plain = tmp_path / "plain.pth"
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, plain)
    with pytest.raises(PretrainingCheckpointError, match="not a DDPM pretraining checkpoint.*nnUNetTrainer"):
        load_checkpoint_file(str(plain))
    with pytest.raises(PretrainingCheckpointError, match="does not exist"):
        load_checkpoint_file(str(tmp_path / "missing.pth"))


def test_finding_the_pretraining_checkpoint(tmp_path):
    args = (str(tmp_path), "Dataset001_A", "nnUNetPlans", "2d", "nnUNetTrainerDDPMPretrain")
    with pytest.raises(PretrainingCheckpointError,
                       match="Pretrain first with: nnUNetv2_train Dataset001_A 2d all -tr nnUNetTrainerDDPMPretrain"):
        find_pretraining_checkpoint(*args)
    fold = tmp_path / "Dataset001_A" / "nnUNetTrainerDDPMPretrain__nnUNetPlans__2d" / "fold_all"
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    with pytest.raises(PretrainingCheckpointError, match="has not finished.*Resume it with: .* --c"):
        find_pretraining_checkpoint(*args)
    (fold / "checkpoint_final.pth").write_bytes(b"")
    assert find_pretraining_checkpoint(*args) == str(fold / "checkpoint_final.pth")


def test_no_code_of_the_package_reads_a_callers_frame():
    """What nnU-Net hands a trainer is learnt from public behaviour (the weights it copies), never from the call
    stack: a frame read breaks silently the day nnU-Net renames an argument or wraps a call."""
    package = Path(nnunet_ddpm.__file__).parent
    forbidden = ("inspect.stack", "inspect.currentframe", "inspect.getouterframes", "inspect.trace", "sys._getframe",
                 "f_back", "f_locals", "f_globals", "currentframe(")
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 50
    found = [f"{path.relative_to(package)}: {word}" for path in sources for word in forbidden
             if word in path.read_text()]
    assert found == []


def test_a_pretraining_description_travels_in_the_weights_nnunets_loader_copies(tmp_path):
    """The metadata buffer goes where nnU-Net's -pretrained_weights puts the weights; a network no pretraining filled
    reads as None; a model saved before the buffer existed still loads."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunet_ddpm.networks import (PRETRAINING_METADATA_KEY, FixedTimestepUNet, TimeConditionedUNet,
                                      build_unet_from_plans, decode_pretraining_metadata, encode_pretraining_metadata)
    from tests.helpers import configuration as small_configuration

    configuration = small_configuration(2)
    denoiser = TimeConditionedUNet(build_unet_from_plans(configuration, 2, 2, False))
    assert decode_pretraining_metadata(denoiser.pretraining_metadata) is None
    denoiser.pretraining_metadata.copy_(encode_pretraining_metadata(META))
    torch.save({"network_weights": denoiser.state_dict()}, tmp_path / "pretraining.pth")
    segmenter = FixedTimestepUNet(build_unet_from_plans(configuration, 2, 3, True), 50, 0.99)
    load_pretrained_weights(segmenter, str(tmp_path / "pretraining.pth"))
    assert decode_pretraining_metadata(segmenter.pretraining_metadata) == META
    assert denoiser_sha256(segmenter.state_dict()) == denoiser_sha256(denoiser.state_dict())
    older = {k: v for k, v in segmenter.state_dict().items() if k != PRETRAINING_METADATA_KEY}
    segmenter.load_state_dict(older)  # strict, as nnU-Net's predictor loads
    assert decode_pretraining_metadata(segmenter.pretraining_metadata) is None
    with pytest.raises(ValueError, match="takes 9.* bytes, the network's buffer holds 8192"):
        encode_pretraining_metadata({"x": "y" * 9000})


def test_the_content_hash_ignores_heads_order_and_device_but_not_a_weight():
    weights = {"a.weight": torch.arange(6.).reshape(2, 3), "b.flag": torch.tensor(True),
               "decoder.seg_layers.0.weight": torch.ones(2)}
    reference = denoiser_sha256(weights)
    assert denoiser_sha256(dict(reversed(list(weights.items())))) == reference
    assert denoiser_sha256(weights | {"decoder.seg_layers.0.weight": torch.zeros(2)}) == reference
    assert denoiser_sha256(weights | {"a.weight": weights["a.weight"] + 1e-6}) != reference
    assert denoiser_sha256(weights | {"a.weight": weights["a.weight"].double()}) != reference
