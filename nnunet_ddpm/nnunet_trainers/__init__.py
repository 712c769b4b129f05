"""The folder that ``nnUNet_extTrainer`` points to (print it with ``nnUNetv2_ddpm_trainer_dir``).

nnU-Net imports every module of that folder by its bare name while searching for a trainer, so the folder holds one
uniquely named module that re-exports the plugin's trainers from their real home in ``nnunet_ddpm.training``.
"""
import os

TRAINER_DIR = os.path.dirname(os.path.abspath(__file__))


def make_trainers_findable() -> str:
    """Put this folder into ``nnUNet_extTrainer`` of ``os.environ`` (first, before the folders already named there,
    which stay), so that nnU-Net finds the plugin's trainers in this Python process and the processes it starts:
    ``run_training``, ``nnUNetPredictor.initialize_from_trained_model_folder``. Returns the new value. nnU-Net reads
    the variable whenever it searches, so calling this after importing nnU-Net is enough."""
    folders = [f for f in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if f and f != TRAINER_DIR]
    os.environ["nnUNet_extTrainer"] = os.pathsep.join([TRAINER_DIR] + folders)
    return os.environ["nnUNet_extTrainer"]


def find_trainer_class(trainer_name: str) -> type:
    """The trainer class called ``trainer_name``, found as ``nnUNetv2_train`` finds it (nnU-Net's trainer folder, then
    the ``nnUNet_extTrainer`` folders), with the plugin's folder added: a user's subclass of a plugin trainer in their
    own trainer folder is found like the plugin's own. RuntimeError (nnU-Net's) when there is none."""
    make_trainers_findable()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    return recursive_find_trainer_class_by_name(trainer_name)
