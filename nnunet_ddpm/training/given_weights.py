"""The ``pretrained_weights`` file that nnU-Net's run script is about to copy into a trainer's network.

``nnUNetv2_train -pretrained_weights PATH`` and ``run_training(..., pretrained_weights=PATH)`` both end in nnU-Net's
``maybe_load_checkpoint``, which initialises the trainer and then copies PATH's weights into the network with a shape
check only; the trainer is never told PATH. The DDPM trainers must know it: to refuse a checkpoint whose metadata does
not fit (another noise schedule has the same shapes) before it is used, to not demand the default pretraining, and to
record the file really used. The process's command line cannot tell (from Python it is the notebook's, and argparse
accepts abbreviations), so the path is read from the arguments of that call, which the trainer's ``initialize`` runs
inside. Nothing of nnU-Net is changed.
"""
import inspect
from typing import Optional

from nnunetv2.run import run_training as nnunet_run_training

ARGUMENT = 'pretrained_weights_file'


def pretrained_weights_given_by_nnunet() -> Optional[str]:
    """PATH when called (at any depth) from nnU-Net's ``maybe_load_checkpoint(..., pretrained_weights_file=PATH)``,
    else None (a fresh run without pretrained weights, a resumed or validated run, or a trainer used outside nnU-Net's
    run script)."""
    code = nnunet_run_training.maybe_load_checkpoint.__code__
    frame = inspect.currentframe()
    try:
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back
        if frame is None:
            return None
        if ARGUMENT not in frame.f_locals:  # guards an nnU-Net update that renames the argument
            raise RuntimeError(f"nnU-Net's maybe_load_checkpoint has no argument {ARGUMENT!r}; this version of "
                               f"nnunet_ddpm needs nnunetv2 2.8 (see setup.py).")
        return frame.f_locals[ARGUMENT]
    finally:
        del frame  # a frame held by a local would keep every caller's locals alive
