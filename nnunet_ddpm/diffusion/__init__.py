from nnunet_ddpm.diffusion.schedule import DiffusionSettings, ddim_sample, sample_training_timesteps

__all__ = ["DiffusionSettings", "ddim_sample", "sample_training_timesteps"]
