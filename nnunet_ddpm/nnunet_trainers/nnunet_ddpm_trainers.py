"""Every trainer of nnunet_ddpm, for nnU-Net's trainer search (see ``__init__.py`` of this folder): the modules of
``nnunet_ddpm.training`` declare them (``training/variants/declaration.py``); importing those modules here collects the
declared and derived classes."""
import importlib
import pkgutil

import nnunet_ddpm.training
from nnunet_ddpm.training.variants.declaration import TRAINERS

for _module in pkgutil.walk_packages(nnunet_ddpm.training.__path__, "nnunet_ddpm.training."):
    importlib.import_module(_module.name)
# nnUNetTrainerDDPMFinetune, nnUNetTrainerDDPMFinetune_demo_20labels, nnUNetTrainer_10labels, ... (not nnU-Net's own)
globals().update({name: cls for name, cls in TRAINERS.items() if cls.__module__.startswith("nnunet_ddpm.")})
