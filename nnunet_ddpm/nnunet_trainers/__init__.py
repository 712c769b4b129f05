"""The folder that ``nnUNet_extTrainer`` points to (print it with ``nnUNetv2_ddpm_trainer_dir``).

nnU-Net imports every module of that folder by its bare name while searching for a trainer, so the folder holds one
uniquely named module that re-exports the plugin's trainers from their real home in ``nnunet_ddpm.training``.
"""
import os

TRAINER_DIR = os.path.dirname(os.path.abspath(__file__))
