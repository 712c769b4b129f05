from nnunet_ddpm.networks.time_conditioned_unet import (FixedTimestepUNet, TimeConditionedUNet,
                                                        TimestepModulatedInstanceNorm, build_unet_from_plans)

__all__ = ["FixedTimestepUNet", "TimeConditionedUNet", "TimestepModulatedInstanceNorm", "build_unet_from_plans"]
