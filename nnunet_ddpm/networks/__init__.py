from nnunet_ddpm.networks.pixel_classifier import EnsembleLoss, MLPEnsembleHead, PixelClassifierNetwork
from nnunet_ddpm.networks.time_conditioned_unet import (FixedTimestepUNet, TimeConditionedUNet,
                                                        TimestepModulatedInstanceNorm, build_unet_from_plans,
                                                        network_downsampling)

__all__ = ["EnsembleLoss", "FixedTimestepUNet", "MLPEnsembleHead", "PixelClassifierNetwork", "TimeConditionedUNet",
           "TimestepModulatedInstanceNorm", "build_unet_from_plans", "network_downsampling"]
