"""The fixed-timestep network as nnU-Net's plain planned network with other weights.

At a fixed timestep t the time embedding is a constant, so every modulated instance norm is a plain instance norm
with the affine parameters weight * (1 + scale_t) and bias * (1 + scale_t) + shift_t, and the input scaling
sqrt(alpha_bar_t) * x is a factor on the first convolution's weights (a convolution is linear in its input; its bias
is unchanged). ``FixedTimestepUNet`` in eval mode therefore computes exactly what the stock network computes with the
folded state dict: weights that any stock nnU-Net trainer and predictor can use without this plugin.
"""
from typing import Dict, Optional

import torch

from nnunet_ddpm.diffusion import DiffusionSettings
from nnunet_ddpm.networks.time_conditioned_unet import (FixedTimestepUNet, TimestepModulatedInstanceNorm, _first_conv,
                                                      build_unet_from_plans)
from nnunet_ddpm.networks.pretrained_checkpoint import transfer_denoiser_weights


def plain_state_dict(network: FixedTimestepUNet) -> Dict[str, torch.Tensor]:
    """State dict of the plain planned network (keys as nnU-Net's ``get_network_from_plans`` builds them) that
    computes what ``network`` computes in eval mode, segmentation layers included."""
    unet = network.unet
    if any(not isinstance(norm.weight, torch.nn.Parameter) for norm in network._norms):
        raise ValueError("The planned network's instance norms have no affine parameters (norm_op_kwargs "
                         "affine=False), so the timestep modulation cannot be folded into them.")
    state = {k[len("unet."):]: v.detach().clone() for k, v in network.state_dict().items()
             if k.startswith("unet.") and ".time_projection." not in k}
    with torch.no_grad(), network.conditioned_on(network.time_embedding[1](network._timestep_features)):
        weights, biases = network._conditioning.weights, network._conditioning.biases
        first_conv = _first_conv(unet)
        # DNA registers a module under two parents (``.conv`` and ``.all_modules.0``) and the decoder holds the encoder:
        # every alias has its own state-dict key
        for name, module in unet.named_modules(remove_duplicate=False):
            if isinstance(module, TimestepModulatedInstanceNorm):
                state[f"{name}.weight"] = weights[module.index].reshape(-1).clone()
                state[f"{name}.bias"] = biases[module.index].reshape(-1).clone()
            elif module is first_conv:
                state[f"{name}.weight"] = first_conv.weight.detach() * network.signal_scale
    return state


def fold_denoiser(denoiser_weights: Dict[str, torch.Tensor], configuration_manager, num_input_channels: int,
                  timestep: int, diffusion: DiffusionSettings,
                  timestep_embedding_dim: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The pretrained denoiser run at ``timestep`` (input scaled by sqrt(alpha_bar_t)) as a state dict of nnU-Net's
    plain planned network, without the output layers (``.seg_layers.``, which every segmentation run replaces)."""
    network = FixedTimestepUNet(build_unet_from_plans(configuration_manager, num_input_channels, 1, True), timestep,
                                diffusion.alpha_bar(timestep), embedding_dim=timestep_embedding_dim)
    transfer_denoiser_weights(network, denoiser_weights)
    return {k: v for k, v in plain_state_dict(network.eval()).items() if ".seg_layers." not in k}
