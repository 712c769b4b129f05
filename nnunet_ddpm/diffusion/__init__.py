from nnunet_ddpm.diffusion.schedule import (DiffusionSettings, add_noise, ddim_sample, min_snr_weights,
                                            sample_training_timesteps)

__all__ = ["DiffusionSettings", "add_noise", "ddim_sample", "min_snr_weights", "sample_training_timesteps"]
