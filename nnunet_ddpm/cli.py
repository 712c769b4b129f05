"""Thin command-line entry points; each wraps a plain function that the tests call."""
import argparse

from nnunet_ddpm.nnunet_trainers import TRAINER_DIR


def trainer_dir_entry():
    """nnUNetv2_ddpm_trainer_dir: print the folder to put into ``nnUNet_extTrainer``."""
    argparse.ArgumentParser(description="Print the folder that holds nnunet_ddpm's trainers. Use it as "
                                        "export nnUNet_extTrainer=$(nnUNetv2_ddpm_trainer_dir)").parse_args()
    print(TRAINER_DIR)
