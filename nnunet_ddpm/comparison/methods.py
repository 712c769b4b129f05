"""The methods of the comparison: a short name (what users type after ``--methods``), the trainer class that
implements it and the title tables and plots show. Each is declared with its trainer (``@trainer_variant(method=...)``,
``training/variants/declaration.py``); the comparison runner, its report and the patient tool read them from here."""
import nnunet_ddpm.nnunet_trainers.nnunet_ddpm_trainers  # noqa: F401  (imports every declaration)
from nnunet_ddpm.training.variants.declaration import METHODS, Method  # noqa: F401

BASELINE = "baseline"  # the supervised nnU-Net every DDPM method is compared with
PRETRAINER = "nnUNetTrainerDDPMPretrain"


def title(method: str) -> str:
    """The method's title; a name that is not a method (a setting's owner, ...) stands for itself."""
    return METHODS[method].title if method in METHODS else method
