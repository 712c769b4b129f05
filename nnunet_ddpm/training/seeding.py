"""Which repetition of a training this is: the seed it draws from and the draw of labelled cases it trains on.

A difference between two methods is only worth reporting if it is larger than the difference between two trainings
of one method, so a comparison repeats every training. ``nnUNetv2_train`` builds a trainer from the plans alone and
takes no per-run arguments, so the repetition comes from the environment, as nnU-Net's own ``nnUNet_n_proc_DA`` does:

* ``nnUNet_ddpm_seed`` seeds Python's, numpy's and torch's generators before the network is built (default
  ``DEFAULT_SEED``). With ``nnUNet_n_proc_DA=0`` the batches come from the same generators and a training on the CPU
  repeats exactly; nnU-Net's augmentation workers seed themselves, so with workers the batches differ from run to run.
* ``nnUNet_ddpm_label_draw`` picks which cases a ``_<N>labels`` trainer may use labels of (default 0, the draw of
  ``nnunet_ddpm.splits.label_budget``).
"""
import os
import random

import numpy as np

SEED_VARIABLE = "nnUNet_ddpm_seed"
LABEL_DRAW_VARIABLE = "nnUNet_ddpm_label_draw"
DEFAULT_SEED = 12345


def _non_negative_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise SystemExit(f"{name} must be a non-negative integer, got {value!r}: unset it or set e.g. {name}=1")
    return int(value)


def run_seed(default: int = DEFAULT_SEED) -> int:
    """This run's seed: ``nnUNet_ddpm_seed`` if set, else ``default``."""
    return _non_negative_int(SEED_VARIABLE, default)


def label_draw() -> int:
    """This run's draw of labelled cases: ``nnUNet_ddpm_label_draw`` if set, else 0."""
    return _non_negative_int(LABEL_DRAW_VARIABLE, 0)


def seed_everything(seed: int) -> None:
    import torch  # here: the comparison's runner reads the variables' names without bringing torch in
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Seeded:
    """Mixin (before the nnU-Net trainer in the bases): seed every generator from ``run_seed`` before nnU-Net builds
    the network. ``random_seed`` is the default a subclass may change; the environment overrides it, and the value
    used is kept on the instance (nnU-Net's debug.json records it)."""

    random_seed = DEFAULT_SEED

    def initialize(self):
        if not self.was_initialized:
            self.random_seed = run_seed(type(self).random_seed)
            seed_everything(self.random_seed)
        super().initialize()
