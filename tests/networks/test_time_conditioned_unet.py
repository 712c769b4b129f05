import pytest
import torch
import torch.nn.functional as F

from nnunet_ddpm.networks import FixedTimestepUNet, TimeConditionedUNet, build_unet_from_plans
from nnunet_ddpm.networks.pretrained_checkpoint import PretrainingCheckpointError, transfer_denoiser_weights
from tests.helpers import configuration


@pytest.mark.parametrize("dim", [2, 3])
def test_denoiser_shapes_and_timestep_dependence(dim):
    torch.manual_seed(0)
    denoiser = TimeConditionedUNet(build_unet_from_plans(configuration(dim), 3, 3, deep_supervision=False))
    x = torch.randn(2, 3, *[16] * dim)
    # fresh network: zero-initialised projections, so the timestep does not matter yet ...
    assert torch.allclose(denoiser(x, torch.tensor([0, 0])), denoiser(x, torch.tensor([500, 999])), atol=1e-6)
    for name, p in denoiser.named_parameters():
        if "time_projection" in name:
            torch.nn.init.normal_(p, std=0.1)
    out = denoiser(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    # ... after training it does, per sample
    assert not torch.allclose(out, denoiser(x, torch.tensor([999, 999])), atol=1e-4)
    assert torch.allclose(out[1], denoiser(x, torch.tensor([5, 999]))[1], atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_fresh_denoiser_equals_the_plain_planned_unet(dim):
    torch.manual_seed(0)
    plain = build_unet_from_plans(configuration(dim), 2, 2, deep_supervision=False)
    reference = {k: v.clone() for k, v in plain.state_dict().items()}
    denoiser = TimeConditionedUNet(plain)
    fresh_plain = build_unet_from_plans(configuration(dim), 2, 2, deep_supervision=False)
    fresh_plain.load_state_dict(reference)
    x = torch.randn(2, 2, *[16] * dim)
    assert torch.allclose(denoiser(x, torch.tensor([3, 700])), fresh_plain(x), atol=1e-5)
    # every key of the plain network is there, under 'unet.'
    assert {f"unet.{k}" for k in reference} <= set(denoiser.state_dict())


@pytest.mark.parametrize("timesteps", [[3, 400, 999, 17], [250]], ids=["per-sample", "one for the batch"])
def test_modulated_norms_equal_norm_then_scale_shift(timesteps):
    """Every norm, with the parameters computed for all norms at once, is instance norm then (1 + scale), shift."""
    torch.manual_seed(0)
    denoiser = TimeConditionedUNet(build_unet_from_plans(configuration(2), 1, 1, deep_supervision=False))
    for name, p in denoiser.named_parameters():
        if "time_projection" in name or "norm" in name:
            torch.nn.init.normal_(p)
    timesteps = torch.tensor(timesteps)
    embedding = denoiser.time_embedding(timesteps)
    norms = [m for m in denoiser.modules() if type(m).__name__ == "TimestepModulatedInstanceNorm"]
    assert len(norms) == 10 and len({n.offset for n in norms}) == 10
    with denoiser.conditioned_on(embedding):
        for norm in norms:
            x = torch.randn(4, norm.num_features, 16, 16)
            scale, shift = norm.time_projection(embedding).chunk(2, dim=1)
            expected = F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
            expected = expected * (1 + scale[..., None, None]) + shift[..., None, None]
            assert torch.allclose(norm(x), expected, atol=1e-4)


def test_unsupported_norm_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs instance normalisation.*BatchNorm2d"):
        TimeConditionedUNet(build_unet_from_plans(configuration(2, "torch.nn.BatchNorm2d"), 1, 1, False))


@pytest.mark.parametrize("dim", [2, 3])
def test_every_pretrained_tensor_arrives_in_the_segmentation_network(dim):
    torch.manual_seed(0)
    denoiser = TimeConditionedUNet(build_unet_from_plans(configuration(dim), 2, 2, deep_supervision=False))
    for p in denoiser.parameters():
        torch.nn.init.normal_(p)
    pretrained = denoiser.state_dict()
    segmenter = FixedTimestepUNet(build_unet_from_plans(configuration(dim), 2, 4, deep_supervision=True),
                                  timestep=50, alpha_bar=0.99)
    transfer_denoiser_weights(segmenter, pretrained)
    transferred = segmenter.state_dict()
    shared = [k for k in transferred if ".seg_layers." not in k]
    assert len(shared) == len([k for k in pretrained if ".seg_layers." not in k])
    assert all(torch.equal(transferred[k], pretrained[k]) for k in shared)
    assert transferred["unet.decoder.seg_layers.1.weight"].shape[0] == 4  # new head: 4 classes

    wrong_channels = TimeConditionedUNet(build_unet_from_plans(configuration(dim), 3, 3, deep_supervision=False))
    with pytest.raises(PretrainingCheckpointError, match="shapes differ.*encoder.stages.0.0.convs.0"):
        transfer_denoiser_weights(segmenter, wrong_channels.state_dict())


def test_fixed_timestep_network_is_deterministic_in_eval_and_noisy_in_training():
    torch.manual_seed(0)
    network = FixedTimestepUNet(build_unet_from_plans(configuration(2), 2, 3, deep_supervision=True), 200,
                                alpha_bar=0.6)
    x = torch.randn(2, 2, 16, 16)
    network.eval()
    with torch.no_grad():
        first, second = network(x), network(x)
    assert isinstance(first, list) and first[0].shape == (2, 3, 16, 16)  # deep supervision outputs
    assert torch.equal(first[0], second[0])
    network.train()
    assert not torch.equal(network(x)[0], network(x)[0])
    # what reaches the U-Net: sqrt(alpha_bar) * x in eval, plus sqrt(1 - alpha_bar) * eps in training
    seen = []
    network.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    network.eval()
    with torch.no_grad():
        network(x)
    network.train()
    torch.manual_seed(7)
    network(x)
    torch.manual_seed(7)
    eps = torch.randn_like(x)
    assert torch.allclose(seen[0], 0.6 ** 0.5 * x, atol=1e-6)
    assert torch.allclose(seen[1], 0.6 ** 0.5 * x + 0.4 ** 0.5 * eps, atol=1e-6)


def _trained_denoiser(dim: int, recomputed: int) -> TimeConditionedUNet:
    """A denoiser with every parameter random (time projections included), the same for every ``recomputed``."""
    torch.manual_seed(0)
    denoiser = TimeConditionedUNet(build_unet_from_plans(configuration(dim), 2, 2, deep_supervision=False),
                                   recomputed_encoder_stages=recomputed)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.normal_(0, 0.2)
    return denoiser


def _assert_same_gradients(a: torch.nn.Module, b: torch.nn.Module, **tolerances):
    """Every parameter's gradient; without deep supervision the unused output layers have none, in both."""
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        assert p.grad is None or torch.allclose(p.grad, q.grad, **tolerances), name


def _bytes_saved_for_backward(network, x, timesteps) -> int:
    """Bytes of the tensors autograd keeps from the forward pass for the backward pass (the activations)."""
    sizes = {}

    def pack(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        network(x, timesteps).square().mean().backward()
    return sum(sizes.values())


@pytest.mark.parametrize("dim", [2, 3])
def test_recomputed_encoder_stages_change_memory_not_results(dim):
    """Checkpointing the first encoder stages: outputs and every gradient as without, per-sample timesteps; the
    stages' inner activations are no longer kept for the backward pass; eval and no-grad passes are unaffected."""
    x, timesteps = torch.randn(2, 2, *[16] * dim), torch.tensor([3, 700])
    plain, recomputing = _trained_denoiser(dim, 0), _trained_denoiser(dim, 2)
    out_plain, out_recomputing = plain(x, timesteps), recomputing(x, timesteps)
    assert torch.equal(out_plain, out_recomputing)
    out_plain.square().mean().backward()
    out_recomputing.square().mean().backward()
    _assert_same_gradients(plain, recomputing, rtol=1e-5, atol=1e-7)
    # stage 0 keeps (B, 8, 16^dim) tensors: the first convolution's output, the norm's (LeakyReLU in place), the
    # second convolution's; stage 1 the same at (B, 16, 8^dim). At least those four of stage 0 are gone.
    stage0_tensor = 2 * 8 * 16 ** dim * 4
    saved_plain = _bytes_saved_for_backward(plain, x, timesteps)
    assert _bytes_saved_for_backward(recomputing, x, timesteps) <= saved_plain - 3 * stage0_tensor
    recomputing.eval()
    with torch.no_grad():
        assert torch.equal(recomputing(x, timesteps), plain.eval()(x, timesteps))


@pytest.mark.slow  # TorchDynamo tracing takes about a minute on the CPU
def test_recomputed_encoder_stages_under_torch_compile():
    """nnU-Net compiles the network on GPUs: the checkpointed stages trace without a graph break (no side effect
    inside the checkpoint while compiling) and give the eager gradients."""
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    x, timesteps = torch.randn(2, 2, 16, 16), torch.tensor([3, 700])
    eager, compiled = _trained_denoiser(2, 0), _trained_denoiser(2, 2)
    eager(x, timesteps).square().mean().backward()
    torch.compile(compiled, backend="aot_eager")(x, timesteps).square().mean().backward()
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1 and not counters["unimplemented"], dict(counters["unimplemented"])
    _assert_same_gradients(eager, compiled, rtol=1e-4, atol=1e-6)
