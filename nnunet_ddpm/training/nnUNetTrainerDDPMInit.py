"""nnU-Net's own network, loss and schedule, started from the DDPM pretraining.

The pretrained denoiser is folded at the fine-tune's timestep into the planned network (``networks/folding.py``):
the time-embedding path becomes the norms' affine parameters and the input scaling sqrt(alpha_bar_t) a factor on the
first convolution. What trains is the stock network at stock speed, and its model needs no plugin to predict.
"""
from nnunet_ddpm.networks.folding import fold_denoiser
from nnunet_ddpm.training.ddpm_trainer_base import UsesPretrainedDenoiser
from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
from nnunet_ddpm.training.variants.declaration import trainer_variant


@trainer_variant(method="init", title="nnU-Net from folded DDPM weights")
class nnUNetTrainerDDPMInit(UsesPretrainedDenoiser):
    """Stock ``nnUNetTrainer`` (network, training) initialised from the pretraining folded at ``finetune_timestep``."""

    finetune_timestep = nnUNetTrainerDDPMFinetune.finetune_timestep

    def apply_pretrained_weights(self, weights: dict) -> None:
        folded = fold_denoiser(weights, self.configuration_manager, self.num_input_channels, self.finetune_timestep,
                               self.diffusion, self.timestep_embedding_dim)
        network = self.unwrapped_network()
        state = network.state_dict()
        state.update(folded)  # every key but the new segmentation layers
        network.load_state_dict(state)

    def pretrained_weights_use(self) -> str:
        return f"folded at timestep {self.finetune_timestep} into nnU-Net's planned network"
