"""nnunet_ddpm: diffusion-model (DDPM) pretraining for semi-supervised segmentation inside nnU-Net v2.

Implements Alshenoudy et al., "Semi-supervised Brain Tumor Segmentation Using Diffusion Models" (AIAI 2023) as
nnU-Net trainers. See README.md and documentation/.
"""
__version__ = "0.1.0"
