"""The pixel classifier network: features, the exact rewrites of the MLP ensemble, determinism, ensemble averaging."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_ddpm.networks import EnsembleLoss, MLPEnsembleHead
from tests.helpers import make_denoiser, make_network


def denoiser_parameters(network):
    return [p for name, p in network.named_parameters() if ".seg_layers." not in name]


@pytest.mark.parametrize("dim", [2, 3])
def test_shapes_in_training_and_eval(dim):
    network = make_network(dim)
    x = torch.randn(2, 2, *[16] * dim)
    assert network.train()(x).shape == (2, 3, 4, *[16] * dim)  # members' logits
    assert network.eval()(x).shape == (2, 4, *[16] * dim)  # one ensemble output
    # stages 1 and 2 of the 3-stage test plans' 2 decoder stages: 16 + 8 channels, times 2 timesteps
    assert [layer.in_channels for layer in network.head.first_layer] == [2 * 16, 2 * 8]
    # channels-last features: the layout on which the CPU upsamples about twice as fast (performance.md)
    layout = torch.channels_last if dim == 2 else torch.channels_last_3d
    assert all(f.is_contiguous(memory_format=layout) for f in network.features(x))


@pytest.mark.parametrize("timesteps_per_pass", [None, 1, 2])
def test_features_are_the_decoder_stage_outputs_of_each_noised_input(timesteps_per_pass):
    """All timesteps in one pass, one per pass, and 2 + 1: the same features."""
    denoiser = make_denoiser()
    network = make_network(stages=(0, 1), timesteps=(50, 150, 250), denoiser=denoiser,
                           timesteps_per_pass=timesteps_per_pass)
    x = torch.randn(2, 2, 16, 16)
    features = network.features(x)
    generator = torch.Generator().manual_seed(network.noise_seed)
    noise = torch.randn(x.shape, generator=generator)
    captured = []
    hooks = [stage.register_forward_hook(lambda m, i, o: captured.append(o))
             for stage in denoiser.unet.decoder.stages]
    for t_index, t in enumerate(network.timesteps):  # the plain denoiser, run once per timestep
        a = network.alpha_bars[t_index]
        noisy = a.sqrt() * x + (1 - a).sqrt() * noise
        denoiser(noisy, torch.tensor([t, t]))
    for h in hooks:
        h.remove()
    # captured: t0 stage0, t0 stage1, t1 stage0, ...; features put timestep blocks along channels
    for stage in (0, 1):
        expected = torch.cat([captured[stage], captured[2 + stage], captured[4 + stage]], 1)
        assert torch.allclose(features[stage], expected, atol=1e-5)


def test_features_are_deterministic_and_frozen():
    network = make_network()
    x = torch.randn(1, 2, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(network.features(x), network.features(x)))
    assert not any(p.requires_grad for p in denoiser_parameters(network))
    network.train()
    assert network.training and network.head.training and not network.unet.encoder.training
    loss = network(x).sum()
    loss.backward()
    assert all(p.grad is None for p in denoiser_parameters(network))
    assert all(p.grad is not None for p in network.head.parameters())


def test_split_first_layer_equals_mlp_on_concatenated_upsampled_features():
    """Upsample-then-concatenate-then-MLP (the method as written) equals the head's cheaper order."""
    torch.manual_seed(0)
    head = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=2, hidden=(8, 4)).eval()
    for m in head.modules():  # non-trivial batch-norm statistics and affine parameters (prediction folds them)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.normal_()
    features = [torch.randn(2, 6, 4, 4), torch.randn(2, 5, 8, 8)]
    out = head(features, (8, 8))
    upsampled = torch.cat([F.interpolate(features[0], size=(8, 8), mode="bilinear", align_corners=False),
                           features[1]], 1)
    for k in range(2):  # member k as a plain MLP over the concatenated features
        w1 = torch.cat([layer.weight[8 * k:8 * (k + 1)] for layer in head.first_layer], 1)
        h = F.conv2d(upsampled, w1, head.first_layer[0].bias[8 * k:8 * (k + 1)])
        bn1, conv2, bn2, conv3 = head.layers[1], head.layers[2], head.layers[4], head.layers[5]

        def member_bn(bn, h, width):
            sl = slice(width * k, width * (k + 1))
            return F.batch_norm(h, bn.running_mean[sl], bn.running_var[sl], bn.weight[sl], bn.bias[sl], False,
                                0.0, bn.eps)
        h = member_bn(bn1, F.relu(h), 8)
        h = F.conv2d(h, conv2.weight[4 * k:4 * (k + 1)], conv2.bias[4 * k:4 * (k + 1)])
        h = member_bn(bn2, F.relu(h), 4)
        h = F.conv2d(h, conv3.weight[3 * k:3 * (k + 1)], conv3.bias[3 * k:3 * (k + 1)])
        assert torch.allclose(out[:, k], h, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_member_checkpointing_changes_nothing_but_memory(dim):
    """Training member by member under checkpointing gives the fused head's outputs, gradients and BatchNorm running
    statistics (updated once per step, not again when the backward pass recomputes a member)."""
    torch.manual_seed(0)
    fused = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=3, hidden=(8, 4), dim=dim, checkpoint_members=False)
    members = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=3, hidden=(8, 4), dim=dim)
    members.load_state_dict(fused.state_dict())
    size = (8,) * dim
    features = [torch.randn(2, 6, *(4,) * dim), torch.randn(2, 5, *size)]
    for step in range(2):
        outputs = [head(features, size) for head in (fused, members)]
        weights = torch.randn_like(outputs[0])
        for out in outputs:
            (out * weights).sum().backward()
        assert outputs[1].shape == (2, 3, 3, *size)
        assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
        for (name, a), b in zip(fused.named_parameters(), members.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-4), name
        for (name, a), b in zip(fused.named_buffers(), members.buffers()):
            assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert int(members.layers[1].num_batches_tracked) == 2
    with torch.no_grad():  # without gradients (validation in training mode): member by member, not checkpointed
        assert torch.allclose(members(features, size), fused(features, size), atol=1e-5)
    for (name, a), b in zip(fused.named_buffers(), members.buffers()):  # statistics updated and counted once
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert int(members.layers[1].num_batches_tracked) == 3
    fused.eval(), members.eval()
    assert torch.allclose(members(features, size), fused._fused(features, size), atol=1e-5)  # prediction


def test_member_checkpointing_under_autocast():
    """nnU-Net trains under float16 autocast on GPUs: the members (their folded BatchNorms) must run on half-precision
    activations, keep float32 running statistics, and round about as much as the fused head does under autocast."""
    torch.manual_seed(0)
    reference = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=3, hidden=(8, 4), checkpoint_members=False)
    fused = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=3, hidden=(8, 4), checkpoint_members=False)
    members = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=3, hidden=(8, 4))
    fused.load_state_dict(reference.state_dict())
    members.load_state_dict(reference.state_dict())
    features = [torch.randn(2, 6, 4, 4), torch.randn(2, 5, 8, 8)]
    weights, outputs = torch.randn(2, 3, 3, 8, 8), []
    for head, half in ((reference, False), (fused, True), (members, True)):
        with torch.autocast("cpu", dtype=torch.float16, enabled=half):
            out = head(features, (8, 8))
        (out.float() * weights).sum().backward()
        outputs.append(out.float())
    assert torch.allclose(outputs[0], outputs[2], atol=1e-2, rtol=1e-2)

    def error(head, name):
        exact = dict(reference.named_parameters())[name].grad
        return float((dict(head.named_parameters())[name].grad - exact).norm() / exact.norm())
    for name, _ in reference.named_parameters():  # measured: members at most 2.6 x the fused head's rounding
        assert error(members, name) <= 4 * error(fused, name) + 1e-3, name
    for (name, a), b in zip(reference.named_buffers(), members.buffers()):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2), name


@pytest.mark.slow  # TorchDynamo tracing takes about a minute on the CPU
def test_member_checkpointing_under_torch_compile():
    """nnU-Net compiles the network on GPUs: the checkpointed members must survive TorchDynamo (run eagerly there)."""
    torch.manual_seed(0)
    fused = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=3, hidden=(8, 4), checkpoint_members=False)
    members = MLPEnsembleHead([6, 5], num_classes=3, ensemble_size=3, hidden=(8, 4))
    members.load_state_dict(fused.state_dict())
    compiled = torch.compile(members, backend="eager")  # TorchDynamo's tracing, without a C++ compiler
    features = [torch.randn(2, 6, 4, 4), torch.randn(2, 5, 8, 8)]
    expected, got = fused(features, (8, 8)), compiled(features, (8, 8))
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    assert torch.allclose(expected, got, atol=1e-5)
    assert all(torch.allclose(a.grad, b.grad, atol=1e-4) for a, b in zip(fused.parameters(), members.parameters()))
    assert all(torch.allclose(a.float(), b.float(), atol=1e-6) for a, b in zip(fused.buffers(), members.buffers()))


@pytest.mark.parametrize("region_based", [False, True])
def test_eval_output_is_the_mean_member_probability(region_based):
    network = make_network()
    network.region_based = region_based
    members = torch.randn(2, 3, 4, 5, 5)
    combined = network.mean_probability_logits(members)
    if region_based:
        assert torch.allclose(torch.sigmoid(combined), torch.sigmoid(members).mean(1), atol=1e-6)
    else:
        assert torch.allclose(torch.softmax(combined, 1), torch.softmax(members, 2).mean(1), atol=1e-6)


def test_region_flag_travels_in_the_state_dict():
    trained = make_network()
    trained.region_based = True
    fresh = make_network()
    assert not fresh.region_based
    fresh.load_state_dict(trained.state_dict())
    assert fresh.region_based is True and bool(fresh.head.region_based)  # the Python flag follows the buffer
    members = torch.randn(2, 3, 4, 5, 5)
    assert torch.equal(fresh.mean_probability_logits(members), trained.mean_probability_logits(members))


@pytest.mark.slow  # TorchDynamo tracing takes about a minute on the CPU
@pytest.mark.parametrize("region_based", [False, True])
def test_torch_compile_traces_prediction_in_one_graph(region_based):
    """nnU-Net compiles the network on GPUs and validates with it: prediction is one graph (the seeded noise is drawn
    before it), training two (the checkpointed members run eagerly between them); outputs as in eager mode."""
    graphs = []

    def counting_backend(graph_module, example_inputs):  # TorchDynamo's graphs, run as traced (no C++ compiler)
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    network = make_network()
    network.region_based = region_based
    x = torch.randn(2, 2, 16, 16)
    expected = network.eval()(x)
    compiled = torch.compile(network, backend=counting_backend)
    assert torch.allclose(compiled(x), expected, atol=1e-6) and len(graphs) == 1
    assert torch.allclose(compiled(x), expected, atol=1e-6) and len(graphs) == 1  # no recompilation
    expected = network.train()(x)
    assert torch.allclose(compiled(x), expected, atol=1e-6) and len(graphs) == 3


def test_nnunet_pretrained_weights_loader_fills_the_denoiser_and_keeps_the_head(tmp_path):
    """nnU-Net's -pretrained_weights rule (every key but .seg_layers. comes from the checkpoint) fits the network."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    denoiser, network = make_denoiser(), make_network()
    head_keys = [k for k in network.state_dict() if ".seg_layers." in k]
    assert head_keys and all(k.startswith("unet.decoder.seg_layers.") for k in head_keys)
    assert {k for k in network.state_dict() if ".seg_layers." not in k} == \
        {k for k in denoiser.state_dict() if ".seg_layers." not in k}
    for p in network.head.parameters():
        torch.nn.init.normal_(p)
    head = {k: v.clone() for k, v in network.state_dict().items() if ".seg_layers." in k}
    for p in denoiser_parameters(network):
        p.data.zero_()
    torch.save({"network_weights": denoiser.state_dict()}, tmp_path / "checkpoint_final.pth")
    load_pretrained_weights(network, str(tmp_path / "checkpoint_final.pth"))
    loaded = network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in denoiser.state_dict().items() if ".seg_layers." not in k)
    assert all(torch.equal(loaded[k], v) for k, v in head.items())


def test_ensemble_loss_is_the_mean_member_loss():
    loss = EnsembleLoss(lambda output, target: (output - target).abs().mean())
    target = torch.randn(2, 1, 4, 4)
    members = torch.randn(2, 3, 1, 4, 4)
    expected = sum((members[:, k] - target).abs().mean() for k in range(3)) / 3
    assert torch.allclose(loss(members, target), expected)
    assert torch.allclose(loss(members[:, 0], target), (members[:, 0] - target).abs().mean())


def test_bad_stages_and_timesteps_are_refused():
    with pytest.raises(ValueError, match="has 2 decoder stages"):
        make_network(stages=(5,))
    with pytest.raises(ValueError, match="at least one feature timestep"):
        make_network(timesteps=())
    with pytest.raises(ValueError, match="timesteps_per_pass must be at least 1"):
        make_network(timesteps_per_pass=0)
