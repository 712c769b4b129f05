from nnunet_ddpm.networks.pixel_classifier import EnsembleLoss, MLPEnsembleHead, PixelClassifierNetwork
from nnunet_ddpm.networks.time_conditioned_unet import (PRETRAINING_METADATA_KEY, FixedTimestepUNet,
                                                        TimeConditionedUNet, TimestepModulatedInstanceNorm,
                                                        build_unet_from_plans, decode_pretraining_metadata,
                                                        encode_pretraining_metadata, network_downsampling)

__all__ = ["PRETRAINING_METADATA_KEY", "EnsembleLoss", "FixedTimestepUNet", "MLPEnsembleHead", "PixelClassifierNetwork",
           "TimeConditionedUNet", "TimestepModulatedInstanceNorm", "build_unet_from_plans",
           "decode_pretraining_metadata", "encode_pretraining_metadata", "network_downsampling"]
