from nnunet_ddpm.diffusion.schedule import (FINETUNE_TIMESTEP, PREDICTION_TYPES, DiffusionSettings, add_noise,
                                            ddim_sample, min_snr_weights, prediction_target,
                                            sample_training_timesteps)

__all__ = ["FINETUNE_TIMESTEP", "PREDICTION_TYPES", "DiffusionSettings", "add_noise", "ddim_sample",
           "min_snr_weights", "prediction_target", "sample_training_timesteps"]
