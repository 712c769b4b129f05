"""The methods of the comparison: a short name (what users type after ``--methods``), the trainer class that
implements it and the title tables and plots show. The comparison runner, its report and the patient tool read them
from here."""
from typing import Dict, NamedTuple


class Method(NamedTuple):
    trainer: str  # trainer class name before the budget suffix (``_10labels``) and the ``_demo`` suffix
    title: str
    probes_features: bool = False  # the comparison runs nnUNetv2_ddpm_probe_features before training it


METHODS: Dict[str, Method] = {
    "baseline": Method("nnUNetTrainer", "nnU-Net (supervised)"),
    "finetune": Method("nnUNetTrainerDDPMFinetune", "DDPM fine-tune"),
    "frozen": Method("nnUNetTrainerDDPMFinetuneFrozenEncoder", "DDPM fine-tune, frozen encoder"),
    # the paper's decoder stages and timesteps, whatever a probe beside the pretraining chose
    "pixel": Method("nnUNetTrainerDDPMPixelClassifier_defaultFeatures", "DDPM pixel classifier"),
    "pixel_probed": Method("nnUNetTrainerDDPMPixelClassifier", "DDPM pixel classifier, probed features",
                           probes_features=True),
    "finetune_fulllr": Method("nnUNetTrainerDDPMFinetune_encoderLR1", "DDPM fine-tune, one lr for all (paper)"),
    "finetune_warmup": Method("nnUNetTrainerDDPMFinetune_warmup", "DDPM fine-tune, lr 1e-3 with warm-up"),
    "finetune_unfreeze": Method("nnUNetTrainerDDPMFinetune_unfreeze",
                                "DDPM fine-tune, encoder frozen for the first quarter"),
    "finetune_t0": Method("nnUNetTrainerDDPMFinetune_t0", "DDPM fine-tune at timestep 0"),
    "finetune_t200": Method("nnUNetTrainerDDPMFinetune_t200", "DDPM fine-tune at timestep 200"),
    "init": Method("nnUNetTrainerDDPMInit", "nnU-Net from folded DDPM weights"),
}
BASELINE = "baseline"  # the supervised nnU-Net every DDPM method is compared with
PRETRAINER = "nnUNetTrainerDDPMPretrain"


def title(method: str) -> str:
    """The method's title; a name that is not a method (a setting's owner, ...) stands for itself."""
    return METHODS[method].title if method in METHODS else method
