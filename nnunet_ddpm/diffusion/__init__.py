from nnunet_ddpm.diffusion.schedule import (PREDICTION_TYPES, DiffusionSettings, add_noise, ddim_sample,
                                            min_snr_weights, prediction_target, sample_training_timesteps)

__all__ = ["PREDICTION_TYPES", "DiffusionSettings", "add_noise", "ddim_sample", "min_snr_weights",
           "prediction_target", "sample_training_timesteps"]
