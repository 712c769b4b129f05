"""The pixel classifier's training step (members' forward and backward passes interleaved) against nnU-Net's own
``nnUNetTrainer.train_step`` on the checkpointed head: same losses, weights, running statistics; no recomputation."""
import copy

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ddpm.networks import EnsembleLoss
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier
from tests.helpers import make_network

CLASSES = 4


def _trainer(network: torch.nn.Module) -> nnUNetTrainerDDPMPixelClassifier:
    """A trainer holding what ``train_step`` uses, as ``nnUNetTrainer.initialize`` sets it on the CPU: the network,
    nnU-Net's Dice + CE loss (the trainer's per-member wrapper around it), the trainer's optimizer."""
    trainer = nnUNetTrainerDDPMPixelClassifier.__new__(nnUNetTrainerDDPMPixelClassifier)
    trainer.network, trainer.device, trainer.is_ddp, trainer.grad_scaler = network, torch.device("cpu"), False, None
    trainer.loss = EnsembleLoss(DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                               weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss))
    trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = 1e-2, 0.0, 10
    trainer.optimizer, _ = trainer.configure_optimizers()
    return trainer


def _count_member_passes(network) -> list:
    calls, member = [], network.head.member

    def counted(*args):
        calls.append(1)
        return member(*args)
    network.head.member = counted
    return calls


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_interleaved_members_train_as_nnunets_step_without_recomputing(compiled):
    torch.manual_seed(0)
    network = make_network(ensemble_size=3, num_classes=CLASSES).train()
    reference, initial = copy.deepcopy(network), copy.deepcopy(network.head.state_dict())
    trainers = [_trainer(torch.compile(network, backend="eager") if compiled else network), _trainer(reference)]
    calls = [_count_member_passes(n) for n in (network, reference)]
    generator = torch.Generator().manual_seed(1)
    for step in range(2):
        batch = {"data": torch.randn(2, 2, 16, 16, generator=generator),
                 "target": torch.randint(0, CLASSES, (2, 1, 16, 16), generator=generator).float()}
        ours = trainers[0].train_step(batch)["loss"]
        theirs = nnUNetTrainer.train_step(trainers[1], batch)["loss"]  # all members' losses, one backward pass
        assert abs(float(ours) - float(theirs)) < 1e-5, step
    # the checkpointed head runs every member twice per step (forward, recomputation); ours once, unless compiled
    # (TorchDynamo traces the whole network: nnU-Net's step with the checkpointed head runs)
    assert len(calls[1]) == 2 * 2 * 3
    assert len(calls[0]) == (2 * 2 * 3 if compiled else 2 * 3)
    for (name, a), b in zip(reference.named_parameters(), network.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    for (name, a), b in zip(reference.named_buffers(), network.buffers()):
        assert torch.equal(a, b) if a.dtype == torch.long else torch.allclose(a, b, atol=1e-6), name
    assert int(network.head.layers[1].num_batches_tracked) == 2
    moved = max(float((p.detach() - initial[n]).abs().max()) for n, p in network.head.named_parameters())
    assert moved > 1e-3  # the comparison above is not of two untouched heads
