"""Every trainer of nnunet_ddpm, for nnU-Net's trainer search (see ``__init__.py`` of this folder)."""
from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import (nnUNetTrainerDDPMFinetune,  # noqa: F401
                                                            nnUNetTrainerDDPMFinetuneFrozenEncoder)
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain  # noqa: F401
