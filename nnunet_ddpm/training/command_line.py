"""The few ``nnUNetv2_train`` options that decide where a fine-tuning run's starting weights come from.

nnU-Net passes ``-pretrained_weights``, ``--c`` and ``--val`` to its own run script, not to the trainer, yet the
trainer must know them before nnU-Net loads anything: to check a given checkpoint's metadata (nnU-Net only compares
tensor shapes), and to not demand a pretraining checkpoint when a run is resumed or only validated.
"""
import os
import sys
from types import SimpleNamespace
from typing import Optional, Sequence


def nnunet_train_options(argv: Optional[Sequence[str]] = None) -> SimpleNamespace:
    """Read ``-pretrained_weights``, ``--c`` and ``--val`` from an ``nnUNetv2_train`` command line.

    Tokens are matched exactly (an argparse parser of only these options would take nnU-Net's ``-p PLANS`` for an
    abbreviation of ``-pretrained_weights``). With ``argv=None`` the running process's command line is read, but only
    when it is ``nnUNetv2_train`` (or nnU-Net's ``run_training.py``); for any other program all options are unset.
    """
    if argv is None:
        program = os.path.basename(sys.argv[0])
        argv = sys.argv[1:] if program.startswith('nnUNetv2_train') or program == 'run_training.py' else []
    argv = list(argv)
    pretrained_weights = None
    for i, token in enumerate(argv):
        if token == '-pretrained_weights' and i + 1 < len(argv):
            pretrained_weights = argv[i + 1]
        elif token.startswith('-pretrained_weights='):
            pretrained_weights = token.split('=', 1)[1]
    return SimpleNamespace(pretrained_weights=pretrained_weights, c='--c' in argv, val='--val' in argv)
