"""The few ``nnUNetv2_train`` options that decide where a fine-tuning run's starting weights come from.

nnU-Net passes ``-pretrained_weights``, ``--c`` and ``--val`` to its own run script, not to the trainer, yet the
trainer must know them before nnU-Net loads anything: to check a given checkpoint's metadata (nnU-Net only compares
tensor shapes), and to not demand a pretraining checkpoint when a run is resumed or only validated.
"""
import argparse
import os
import sys
from typing import Optional, Sequence


def nnunet_train_options(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``-pretrained_weights``, ``--c`` and ``--val`` from an ``nnUNetv2_train`` command line.

    With ``argv=None`` the running process's command line is read, but only when it is ``nnUNetv2_train`` (or
    nnU-Net's ``run_training.py``); for any other program (a notebook, a test harness) all options are unset.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # no abbreviations: '-p' is nnU-Net's plans
    parser.add_argument('-pretrained_weights', default=None)
    parser.add_argument('--c', action='store_true')
    parser.add_argument('--val', action='store_true')
    if argv is None:
        program = os.path.basename(sys.argv[0])
        argv = sys.argv[1:] if program.startswith('nnUNetv2_train') or program == 'run_training.py' else []
    options, _ = parser.parse_known_args(list(argv))
    return options
