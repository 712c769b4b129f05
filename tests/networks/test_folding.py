"""The fixed-timestep network folded into nnU-Net's plain planned network computes the same function (2D and 3D),
also with the residual-encoder architecture of nnU-Net's ResEnc presets."""
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ddpm.networks import FixedTimestepUNet, TimeConditionedUNet, build_unet_from_plans
from nnunet_ddpm.networks.folding import plain_state_dict
from nnunet_ddpm.networks.pretrained_checkpoint import transfer_denoiser_weights
from tests.helpers import configuration


def residual_configuration(dim: int) -> ConfigurationManager:
    plain = configuration(dim).configuration
    arch = dict(plain["architecture"], network_class_name="dynamic_network_architectures.architectures.unet."
                                                          "ResidualEncoderUNet")
    arch["arch_kwargs"] = dict(arch["arch_kwargs"], n_blocks_per_stage=[1, 2, 2])
    del arch["arch_kwargs"]["n_conv_per_stage"]
    return ConfigurationManager(dict(plain, architecture=arch))


def _pretrained_segmenter(config, timestep=120, alpha_bar=0.7):
    torch.manual_seed(0)
    denoiser = TimeConditionedUNet(build_unet_from_plans(config, 2, 2, deep_supervision=False))
    for name, p in denoiser.named_parameters():  # a 'trained' denoiser: nothing at its zero initialisation
        torch.nn.init.normal_(p, std=0.2 if "time_projection" in name else 0.5)
    segmenter = FixedTimestepUNet(build_unet_from_plans(config, 2, 4, deep_supervision=True), timestep, alpha_bar)
    transfer_denoiser_weights(segmenter, denoiser.state_dict())
    return segmenter.eval()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("make_config", [configuration, residual_configuration])
def test_folded_plain_network_computes_the_fixed_timestep_network(dim, make_config):
    config = make_config(dim)
    segmenter = _pretrained_segmenter(config)
    plain = build_unet_from_plans(config, 2, 4, deep_supervision=True).eval()
    folded = plain_state_dict(segmenter)
    assert set(folded) == set(plain.state_dict())  # stock keys exactly: no time embedding, no projections
    plain.load_state_dict(folded)
    x = torch.randn(2, 2, *[16] * dim)
    with torch.no_grad():
        expected, got = segmenter(x), plain(x)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-5, rtol=1e-4), (e - g).abs().max()
    # the folding changed what it must: an untouched copy of the U-Net's weights computes something else
    unfolded = build_unet_from_plans(config, 2, 4, deep_supervision=True).eval()
    unfolded.load_state_dict({k[5:]: v for k, v in segmenter.state_dict().items()
                              if k.startswith("unet.") and ".time_projection." not in k})
    with torch.no_grad():
        assert not torch.allclose(unfolded(x)[0], expected[0], atol=1e-3)


def test_first_convolution_carries_the_input_scale():
    segmenter = _pretrained_segmenter(configuration(2), alpha_bar=0.64)
    folded = plain_state_dict(segmenter)
    key = "encoder.stages.0.0.convs.0.conv.weight"
    assert torch.allclose(folded[key], 0.8 * segmenter.state_dict()["unet." + key])
    assert torch.equal(folded[key], folded["encoder.stages.0.0.convs.0.all_modules.0.weight"])
    assert torch.equal(folded[key], folded["decoder.encoder.stages.0.0.convs.0.conv.weight"])


def test_export_timestep_default_is_the_fine_tunes(monkeypatch, tmp_path):
    """The export folds at the fine-tune's timestep unless told otherwise: the function's default and what the
    console script passes it."""
    import inspect
    from nnunet_ddpm.export import stock_weights
    from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
    timestep = nnUNetTrainerDDPMFinetune.finetune_timestep
    assert inspect.signature(stock_weights.export_pretraining_weights).parameters["timestep"].default == timestep
    given = []

    def record(checkpoint_path, output_file, step):
        given.append(step)
        raise stock_weights.ExportError("recorded")

    monkeypatch.setattr(stock_weights, "export_pretraining_weights", record)
    with pytest.raises(SystemExit, match="recorded"):
        stock_weights.export_weights_entry(["-i", str(tmp_path / "checkpoint_final.pth"),
                                            "-o", str(tmp_path / "weights.pth")])
    assert given == [timestep]


def test_exported_weights_carry_an_nnssl_adaptation_plan(tmp_path):
    """The plan's architecture, built the way nnssl builds it (dynamic-network-architectures from the class name and
    keyword arguments), takes the exported encoder and stem weights by their keys."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_ddpm.export.stock_weights import adaptation_plan
    from nnunet_ddpm.networks.folding import fold_denoiser
    from nnunet_ddpm.diffusion import DiffusionSettings
    config = residual_configuration(2)
    plans = PlansManager({"dataset_name": "Dataset001_X", "plans_name": "nnResEncUNetMPlans",
                          "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
                          "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2],
                          "transpose_backward": [0, 1, 2], "experiment_planner_used": "ResEncUNetPlanner",
                          "configurations": {"2d": config.configuration}})
    denoiser = TimeConditionedUNet(build_unet_from_plans(config, 2, 2, deep_supervision=False))
    weights = fold_denoiser(denoiser.state_dict(), plans.get_configuration("2d"), 2, 50, DiffusionSettings())
    plan = adaptation_plan(plans, "2d", 2, weights)
    assert plan["architecture_plans"]["arch_class_name"] == ResidualEncoderUNet.__module__ + ".ResidualEncoderUNet"
    assert (plan["key_to_encoder"], plan["key_to_stem"], plan["keys_to_in_proj"], plan["key_to_lpe"]) == (
        "encoder.stages", "encoder.stem", ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"], None)
    assert plan["pretrain_num_input_channels"] == 2 and plan["recommended_downstream_patchsize"] == [16, 16]
    assert plan["pretrain_plan"]["configurations"]["2d"]["architecture"]["network_class_name"].endswith(
        "ResidualEncoderUNet")
    import json
    json.dumps(plan)  # plain JSON values, as nnssl serialises it
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    arch = plan["architecture_plans"]
    network = get_network_from_plans(arch["arch_class_name"],
                                     arch["arch_kwargs"], arch["arch_kwargs_requiring_import"], 2, 3,
                                     allow_init=False, deep_supervision=False)
    for prefix in (plan["key_to_encoder"], plan["key_to_stem"]):
        part = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        module = network.get_submodule(prefix)
        module.load_state_dict(part)  # strict: every key of the encoder (stem) is there, nothing else
