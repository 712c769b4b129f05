"""Every trainer of nnunet_ddpm, for nnU-Net's trainer search (see ``__init__.py`` of this folder)."""
from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import (nnUNetTrainerDDPMFinetune,  # noqa: F401
                                                            nnUNetTrainerDDPMFinetuneFrozenEncoder)
from nnunet_ddpm.training.nnUNetTrainerDDPMInit import nnUNetTrainerDDPMInit  # noqa: F401
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier  # noqa: F401
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain  # noqa: F401
from nnunet_ddpm.training.variants.demo_budget import (nnUNetTrainer_demo,  # noqa: F401
                                                       nnUNetTrainerDDPMFinetune_demo,
                                                       nnUNetTrainerDDPMFinetuneFrozenEncoder_demo,
                                                       nnUNetTrainerDDPMPixelClassifier_demo,
                                                       nnUNetTrainerDDPMPretrain_demo)
from nnunet_ddpm.training.variants.demo_budget import (nnUNetTrainerDDPMFinetune_encoderLR1_demo,  # noqa: F401
                                                       nnUNetTrainerDDPMFinetune_t0_demo,
                                                       nnUNetTrainerDDPMFinetune_t200_demo,
                                                       nnUNetTrainerDDPMFinetune_unfreeze_demo,
                                                       nnUNetTrainerDDPMFinetune_warmup_demo,
                                                       nnUNetTrainerDDPMInit_demo,
                                                       nnUNetTrainerDDPMPixelClassifier_defaultFeatures_demo,
                                                       nnUNetTrainerDDPMPretrain_batch16_demo,
                                                       nnUNetTrainerDDPMPretrain_minSNR5_demo,
                                                       nnUNetTrainerDDPMPretrain_patch32_demo,
                                                       nnUNetTrainerDDPMPretrain_patch64_demo,
                                                       nnUNetTrainerDDPMPretrain_vPrediction_demo)
from nnunet_ddpm.training.variants.pixel_features import (  # noqa: F401
    nnUNetTrainerDDPMPixelClassifier_defaultFeatures)
from nnunet_ddpm.training.variants.finetune_schedule import (nnUNetTrainerDDPMFinetune_encoderLR1,  # noqa: F401
                                                             nnUNetTrainerDDPMFinetune_unfreeze,
                                                             nnUNetTrainerDDPMFinetune_warmup)
from nnunet_ddpm.training.variants.finetune_timestep import (nnUNetTrainerDDPMFinetune_t0,  # noqa: F401
                                                             nnUNetTrainerDDPMFinetune_t200)
from nnunet_ddpm.training.variants.pretrain_objective import (nnUNetTrainerDDPMPretrain_batch16,  # noqa: F401
                                                              nnUNetTrainerDDPMPretrain_minSNR5,
                                                              nnUNetTrainerDDPMPretrain_patch32,
                                                              nnUNetTrainerDDPMPretrain_patch64,
                                                              nnUNetTrainerDDPMPretrain_vPrediction)
from nnunet_ddpm.training.variants.label_budget import LABEL_BUDGET_TRAINERS

globals().update(LABEL_BUDGET_TRAINERS)  # nnUNetTrainer_20labels, nnUNetTrainerDDPMFinetune_20labels, ...
