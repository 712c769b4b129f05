"""The fine-tune's optimiser: nnU-Net's SGD + poly with the pretrained encoder at a tenth of the learning rate; the
paper's variant is nnU-Net's SGD + poly exactly; the others change one thing each. The timestep variants change only
the timestep and its signal level."""
import math
from types import SimpleNamespace

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_ddpm.training.lr_schedule import warmup_poly_factor
from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import (nnUNetTrainerDDPMFinetune,
                                                            nnUNetTrainerDDPMFinetuneFrozenEncoder)
from nnunet_ddpm.training.variants.finetune_schedule import (nnUNetTrainerDDPMFinetune_encoderLR1,
                                                             nnUNetTrainerDDPMFinetune_unfreeze,
                                                             nnUNetTrainerDDPMFinetune_warmup)
from nnunet_ddpm.training.variants.finetune_timestep import (nnUNetTrainerDDPMFinetune_t0,
                                                             nnUNetTrainerDDPMFinetune_t200)
from tests.helpers import configuration


def _optimizer(trainer_class, initial_lr=1e-2, num_epochs=20):
    """``configure_optimizers`` of ``trainer_class`` on a fresh 2D network, without a dataset."""
    network = trainer_class.build_network_architecture(None, configuration(2), 2, 3, True)
    trainer = SimpleNamespace(unwrapped_network=lambda: network, initial_lr=initial_lr, weight_decay=3e-5,
                              num_epochs=num_epochs, encoder_lr_scale=trainer_class.encoder_lr_scale,
                              encoder_frozen_fraction=trainer_class.encoder_frozen_fraction,
                              warmup_fraction=trainer_class.warmup_fraction)
    optimizer, scheduler = trainer_class.configure_optimizers(trainer)
    return network, optimizer, scheduler


def _learning_rates(optimizer, scheduler, epochs):
    rates = []
    for epoch in range(epochs):
        scheduler.step(epoch)
        rates.append([group["lr"] for group in optimizer.param_groups])
    return rates


def test_paper_variant_is_nnunets_sgd_and_poly():
    network, optimizer, scheduler = _optimizer(nnUNetTrainerDDPMFinetune_encoderLR1)
    reference = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    poly = PolyLRScheduler(reference, 1e-2, 20)
    expected = _learning_rates(reference, poly, 20)
    assert _learning_rates(optimizer, scheduler, 20) == [r * 2 for r in expected]  # two groups, same rate
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(network.parameters()))
    assert all(g["momentum"] == 0.99 and g["nesterov"] and g["weight_decay"] == 3e-5 for g in optimizer.param_groups)


def test_default_scales_only_the_pretrained_encoder_and_time_embedding():
    network, optimizer, scheduler = _optimizer(nnUNetTrainerDDPMFinetune)
    decoder_group, encoder_group = optimizer.param_groups
    encoder = {id(p) for m in (network.unet.encoder, network.time_embedding) for p in m.parameters()}
    assert {id(p) for p in encoder_group["params"]} == encoder
    assert not encoder & {id(p) for p in decoder_group["params"]}
    scheduler.step(3)
    assert decoder_group["lr"] == pytest.approx(1e-2 * (1 - 3 / 20) ** 0.9)
    assert encoder_group["lr"] == pytest.approx(1e-3 * (1 - 3 / 20) ** 0.9)


def test_frozen_encoder_optimises_only_the_trainable_parameters():
    network, optimizer, _ = _optimizer(nnUNetTrainerDDPMFinetuneFrozenEncoder)
    assert len(optimizer.param_groups) == 1
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == \
        {id(p) for p in network.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in network.unet.encoder.parameters())


def test_warmup_variant_rises_linearly_then_decays():
    _, optimizer, scheduler = _optimizer(nnUNetTrainerDDPMFinetune_warmup, initial_lr=1e-3, num_epochs=20)
    rates = [r[0] for r in _learning_rates(optimizer, scheduler, 20)]
    assert rates[:3] == pytest.approx([5e-4, 1e-3, 1e-3])  # 2 warm-up epochs: 1/2, 2/2, then poly from 1
    assert rates[2:] == pytest.approx([1e-3 * (1 - s / 18) ** 0.9 for s in range(18)])
    assert warmup_poly_factor(0, 10, 0) == 1.0 and warmup_poly_factor(9, 10, 0) == pytest.approx(0.1 ** 0.9)



def test_unfreeze_holds_the_encoder_at_zero_for_the_first_quarter_then_gives_it_the_default_tenth():
    _, optimizer, scheduler = _optimizer(nnUNetTrainerDDPMFinetune_unfreeze, num_epochs=20)
    rates = _learning_rates(optimizer, scheduler, 20)
    poly = [1e-2 * (1 - e / 20) ** 0.9 for e in range(20)]
    assert [decoder for decoder, _ in rates] == pytest.approx(poly)
    assert [encoder for _, encoder in rates] == pytest.approx([0.0] * 5 + [p / 10 for p in poly[5:]])


@pytest.mark.parametrize("trainer_class, timestep", [(nnUNetTrainerDDPMFinetune, 50),
                                                     (nnUNetTrainerDDPMFinetune_t0, 0),
                                                     (nnUNetTrainerDDPMFinetune_t200, 200)])
def test_timestep_variants_run_the_network_at_their_timestep_and_its_signal_level(trainer_class, timestep):
    def f(t):  # Nichol & Dhariwal's cosine, T = 1000, s = 0.008
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    network = trainer_class.build_network_architecture(None, configuration(2), 2, 3, True)
    assert network.timestep == timestep
    assert network.alpha_bar == pytest.approx(f(timestep + 1) / f(0), rel=1e-4)  # diffusers' index t is step t + 1
    images = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    seen = []
    network.unet.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    network.eval()
    with torch.no_grad():
        network(images)
    assert torch.allclose(seen[0], math.sqrt(network.alpha_bar) * images, atol=1e-6)
    # the timestep's noise in training: x_t - sqrt(alpha_bar) x has the standard deviation sqrt(1 - alpha_bar)
    network.train()
    torch.manual_seed(0)  # the network draws the noise from torch's global generator
    with torch.no_grad():
        network(images)
    residual = seen[1] - math.sqrt(network.alpha_bar) * images
    # 16,384 draws: the sample standard deviation is within 5 % (about 9 of its standard errors) of the true one
    assert residual.std().item() == pytest.approx(math.sqrt(1 - network.alpha_bar), rel=0.05)
