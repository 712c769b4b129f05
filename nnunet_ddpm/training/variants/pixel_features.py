"""The pixel classifier with its built-in feature choice (the paper's), whatever ``nnUNetv2_ddpm_probe_features``
chose: method ``pixel`` of the comparison, the reference against which a probed choice (``pixel_probed``) is
measured."""
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier
from nnunet_ddpm.training.variants.declaration import trainer_variant


@trainer_variant(method="pixel", title="DDPM pixel classifier")
class nnUNetTrainerDDPMPixelClassifier_defaultFeatures(nnUNetTrainerDDPMPixelClassifier):
    """Decoder stages and timesteps from the class attributes; a probe's choice file is ignored."""

    use_probed_features = False
