"""The pixel classifier with its built-in feature choice, whatever ``nnUNetv2_ddpm_probe_features`` chose: the
reference against which a probed choice is measured (method ``pixel_defaultfeatures`` of the comparison)."""
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier


class nnUNetTrainerDDPMPixelClassifier_defaultFeatures(nnUNetTrainerDDPMPixelClassifier):
    """Decoder stages and timesteps from the class attributes; ``pixel_features.json`` is ignored."""

    use_probed_features = False
