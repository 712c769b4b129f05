"""nnU-Net's polynomial learning-rate decay, after an optional linear warm-up, with a factor per parameter group.

Fine-tuning pretrained weights with the from-scratch schedule (SGD at 0.01 from the first step) can wash out what the
pretraining learned; the usual remedies are a warm-up (as nnU-Net's development branch does for pretrained
checkpoints) and a smaller learning rate for the pretrained part (discriminative learning rates, Howard & Ruder,
ACL 2018), or training the new parts first with the pretrained part frozen, then unfreezing it (gradual unfreezing,
the same paper). A parameter group's ``lr_scale`` (default 1) multiplies its learning rate; its ``frozen_steps``
(default 0) hold it at 0 for that many first steps.
"""
from torch.optim.lr_scheduler import _LRScheduler


def warmup_poly_factor(step: int, max_steps: int, warmup_steps: int = 0, exponent: float = 0.9) -> float:
    """The learning rate at ``step`` (an epoch, as nnU-Net counts) as a fraction of the initial one: linear from
    1 / warmup_steps to 1 over the warm-up, then ``(1 - s / S) ** exponent`` over the remaining S steps; with no
    warm-up this is nnU-Net's PolyLRScheduler."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return (1 - (step - warmup_steps) / (max_steps - warmup_steps)) ** exponent


class WarmupPolyLRScheduler(_LRScheduler):
    def __init__(self, optimizer, initial_lr: float, max_steps: int, warmup_steps: int = 0, exponent: float = 0.9):
        if not 0 <= warmup_steps < max_steps:
            raise ValueError(f"warmup_steps must lie in [0, max_steps = {max_steps}), got {warmup_steps}")
        self.initial_lr, self.max_steps, self.warmup_steps, self.exponent = initial_lr, max_steps, warmup_steps, exponent
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = warmup_poly_factor(current_step, self.max_steps, self.warmup_steps, self.exponent)
        for group in self.optimizer.param_groups:
            frozen = current_step < group.get('frozen_steps', 0)
            group['lr'] = 0.0 if frozen else self.initial_lr * group.get('lr_scale', 1.0) * factor
        self._last_lr = [group['lr'] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr
