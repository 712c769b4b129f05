"""Pixel-level classification on frozen diffusion activations (Baranchuk et al., ICLR 2022; Alshenoudy et al. 2023).

The frozen denoiser is run on the input noised to a few timesteps; the outputs of some decoder stages are upsampled
to the input resolution, concatenated and classified pixel by pixel (voxel by voxel) by an ensemble of small MLPs.
The MLPs are 1x1 convolutions, so the whole thing is a segmentation network like any other to nnU-Net: patch
sampling, loss and sliding-window prediction apply unchanged.

Two exact rewrites keep it cheap:

* the first MLP layer is linear and so is (bi/tri)linear upsampling, and both act on different axes, so the layer is
  applied to each stage's features at that stage's own resolution and the results are upsampled and summed; the
  concatenated full-resolution feature tensor (hundreds of channels) is never built;
* the K members are one network: the first layer is one convolution with K x 128 outputs (all members read the same
  features), the later layers are grouped convolutions with K groups.

In training the head's activations at full resolution (K x 384 channels per pixel kept for the backward pass) would
dominate memory, so the members train one at a time (``checkpoint_members``): the trainer backpropagates each
member's loss before running the next (``nnUNetTrainerDDPMPixelClassifier.train_step``, with ``member``); a plain
forward pass in training (nnU-Net's own step under DDP or torch.compile) runs each member in its own activation
checkpoint, whose backward pass recomputes one member at a time from the shared features.
Prediction runs member by member too, each BatchNorm folded into the convolution after it: a member's tensors are
1/K of the fused head's, small enough for the CPU allocator to reuse instead of mapping fresh pages for every tile
(``documentation/performance.md``).
"""
import math
from contextlib import contextmanager, nullcontext
from typing import List, Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from nnunet_ddpm.diffusion import add_noise
from nnunet_ddpm.networks.time_conditioned_unet import TimeConditionedUNet


class _ChannelMoments(torch.autograd.Function):
    """Per-channel biased variance and mean of x (B, C, *spatial), as BatchNorm computes them in training.

    Forward: BatchNorm's own statistics kernel (``torch.batch_norm_update_stats``, one vectorised pass over a
    channels-last tensor); ``torch.var_mean`` over the batch and spatial dimensions took ten times as long on the CPU
    (a sixth of the pixel classifier's training step). Backward: (2 / n) dvar (x - mean) + dmean / n as one
    multiply-add, x * a + c, in x's dtype (``torch.var_mean``'s backward builds three temporaries the size of x). x
    is kept for the backward pass, but the head keeps it anyway (it is the next convolution's input). The moments come
    out in float32, as BatchNorm keeps its statistics under autocast (x is then float16 or bfloat16).
    """

    @staticmethod
    def forward(ctx, x):
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        ctx.save_for_backward(x, mean)
        return var.float(), mean.float()

    @staticmethod
    def backward(ctx, grad_var, grad_mean):
        x, mean = ctx.saved_tensors
        n, per_channel = x.numel() // x.shape[1], (1, -1) + (1,) * (x.ndim - 2)
        scale = grad_var * (2 / n)
        shift = grad_mean / n - scale * mean.float()
        return torch.addcmul(shift.to(x.dtype).view(per_channel), x, scale.to(x.dtype).view(per_channel))


class MLPEnsembleHead(nn.Module):
    """K pixel-wise MLPs, features -> 128 -> 64 -> classes, each hidden layer Linear -> ReLU -> BatchNorm (the layer
    order of the paper's code and of Baranchuk et al.). Input: one feature map per stage; output (B, K, classes, ...).

    ``checkpoint_members``: in training with gradients, run member by member under activation checkpointing (same
    outputs, gradients and running statistics; about 1/K of the activation memory for one more head forward pass).
    Not with SyncBatchNorm (nnU-Net's multi-GPU training), whose statistics only the module itself synchronises.
    """

    def __init__(self, stage_channels: Sequence[int], num_classes: int, ensemble_size: int,
                 hidden: Sequence[int] = (128, 64), dim: int = 2, checkpoint_members: bool = True):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv3d, nn.BatchNorm3d)
        self.ensemble_size, self.num_classes = ensemble_size, num_classes
        self.interpolation = "bilinear" if dim == 2 else "trilinear"
        self.checkpoint_members = checkpoint_members
        self._conv = F.conv2d if dim == 2 else F.conv3d
        self._recomputing = False
        k = ensemble_size
        # first layer split by stage (see module docstring); one bias for the sum
        self.first_layer = nn.ModuleList(conv(c, k * hidden[0], 1, bias=(i == 0))
                                         for i, c in enumerate(stage_channels))
        layers: List[nn.Module] = [nn.ReLU(inplace=True), norm(k * hidden[0])]
        for width_in, width_out in zip(hidden[:-1], hidden[1:]):
            layers += [conv(k * width_in, k * width_out, 1, groups=k), nn.ReLU(inplace=True), norm(k * width_out)]
        layers.append(conv(k * hidden[-1], k * num_classes, 1, groups=k))
        self.layers = nn.Sequential(*layers)
        # whether the classes are nnU-Net regions (sigmoid) or labels (softmax), set by the trainer from the label
        # manager: a buffer, so that nnUNetv2_predict gets it from the checkpoint, mirrored in a Python bool, on which
        # torch.compile can branch without a graph break (on a tensor's value it cannot)
        self.register_buffer("region_based", torch.tensor(False))
        self.predicts_regions = False
        self.register_load_state_dict_post_hook(lambda head, _: head.set_region_based(bool(head.region_based)))

    def forward(self, stage_features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        with_gradients = self.training and torch.is_grad_enabled()
        synchronised = any(isinstance(m, nn.SyncBatchNorm) for m in self.layers)  # only the module syncs statistics
        if self.training and (synchronised or (with_gradients and not self.checkpoint_members)):
            return self._fused(stage_features, size)
        if self.training:
            self.count_batch()
        if with_gradients:
            return self._checkpointed_members(stage_features, size)
        # prediction, or validation without gradients: nothing is kept for a backward pass
        return torch.stack([self.member(k, stage_features, size) for k in range(self.ensemble_size)], 1)

    def set_region_based(self, flag: bool):
        self.region_based.fill_(flag)
        self.predicts_regions = bool(flag)

    def count_batch(self):
        """Count one training batch in every BatchNorm, once per forward pass as the fused head counts; callers that
        run the members one by one (``member``) call it once per batch."""
        for norm in self.layers:
            if isinstance(norm, _BatchNorm) and norm.track_running_stats:
                norm.num_batches_tracked.add_(1)

    def _fused(self, stage_features, size):
        """All members at once, the layers as built."""
        hidden = None
        for layer, features in zip(self.first_layer, stage_features):
            hidden = self._add_upsampled(hidden, layer(features), size)
        logits = self.layers(hidden)
        return logits.reshape(logits.shape[0], self.ensemble_size, self.num_classes, *logits.shape[2:])

    def _add_upsampled(self, hidden, projected, size):
        if tuple(projected.shape[2:]) != tuple(size):
            projected = F.interpolate(projected, size=tuple(size), mode=self.interpolation, align_corners=False)
        # in place: neither the convolution nor the upsampling that made ``hidden`` keeps it for its backward pass
        return projected if hidden is None else hidden.add_(projected)

    @torch.compiler.disable  # TorchDynamo cannot trace a checkpoint with context_fn; nnU-Net compiles on GPUs
    def _checkpointed_members(self, stage_features, size):
        members = [checkpoint(self.member, k, stage_features, size, use_reentrant=False,
                              context_fn=lambda: (nullcontext(), self._recomputation()))
                   for k in range(self.ensemble_size)]
        return torch.stack(members, 1)

    @contextmanager
    def _recomputation(self):
        """While the backward pass recomputes a member: its BatchNorms must not update running statistics again."""
        self._recomputing = True
        try:
            yield
        finally:
            self._recomputing = False

    def member(self, k: int, stage_features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Member k alone, logits (B, classes, *size): its slice of every layer's output channels (its group of each
        grouped convolution). In training it updates the running statistics of its BatchNorm channels.

        Each BatchNorm is folded into the 1x1 convolution after it, conv(W, a * r + b) = conv(W a, r) + W b, with the
        norm's per-channel scale a and shift b (from the batch statistics of r in training, from the running ones in
        eval). The same function, but the norm's output, a full-resolution tensor per hidden layer, is never built:
        in training it is not stored for the backward pass (the ReLU output r is stored anyway), which halves a
        member's activations, and in prediction a pass over the full-resolution tensor is saved.
        """
        def rows(width):
            return slice(k * width // self.ensemble_size, (k + 1) * width // self.ensemble_size)
        hidden = None
        for layer, features in zip(self.first_layer, stage_features):
            r = rows(layer.out_channels)
            bias = None if layer.bias is None else layer.bias[r]
            hidden = self._add_upsampled(hidden, self._conv(features, layer.weight[r], bias), size)
        scale = shift = None  # a BatchNorm's, waiting for the next convolution
        for layer in self.layers:
            if isinstance(layer, nn.ReLU):
                hidden = F.relu_(hidden)  # in place: its input (a sum, a convolution's output) is not kept
            elif isinstance(layer, _BatchNorm):
                scale, shift = self._batch_norm_affine(layer, rows(layer.num_features), hidden)
            else:
                r = rows(layer.out_channels)
                weight, bias = layer.weight[r], layer.bias[r]
                if scale is not None:
                    bias = bias + weight.flatten(1) @ shift
                    weight = weight * scale.view(1, -1, *weight.shape[2:])
                    scale = shift = None
                hidden = self._conv(hidden, weight, bias)
        return hidden

    def _batch_norm_affine(self, norm: _BatchNorm, channels: slice, x: torch.Tensor):
        """Scale and shift with which ``norm`` (these channels) maps x. In training, from x's batch statistics, and
        the running statistics are updated as ``F.batch_norm`` would, except while the backward pass recomputes a
        member."""
        if not norm.training and norm.track_running_stats:
            scale = norm.weight[channels] * torch.rsqrt(norm.running_var[channels] + norm.eps)
            return scale, norm.bias[channels] - norm.running_mean[channels] * scale
        var, mean = _ChannelMoments.apply(x)
        if norm.track_running_stats and not self._recomputing:
            momentum = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
            n = x.numel() // x.shape[1]
            with torch.no_grad():  # the running variance is the unbiased one
                norm.running_mean[channels].lerp_(mean, momentum)
                norm.running_var[channels].lerp_(var * (n / max(n - 1, 1)), momentum)
        scale = norm.weight[channels] * torch.rsqrt(var + norm.eps)
        return scale, norm.bias[channels] - mean * scale


class PixelClassifierNetwork(TimeConditionedUNet):
    """The frozen noise predictor, with an MLP ensemble head on its decoder features in place of its output layers.

    The head sits where nnU-Net keeps a network's task-specific output layers, ``unet.decoder.seg_layers``, so the
    state-dict keys are the denoiser's plus ``.seg_layers.`` ones: nnU-Net's ``-pretrained_weights`` (which loads every
    key but those) and the trainer's own transfer both fill the denoiser and leave the head alone.

    Training mode returns the members' logits, (B, K, classes, *spatial), so that each member gets its own loss.
    Eval mode returns the log of the members' mean probability (B, classes, *spatial): nnU-Net's softmax (or sigmoid
    for regions) of it is exactly that mean, so nnU-Net's predictor averages probabilities, not logits.

    The noise that brings the input to each timestep is drawn from a generator seeded with ``noise_seed`` at every
    call: the features, hence training targets and predictions, are deterministic (one fixed noise image, as in
    Baranchuk et al.'s feature extractor).
    """

    def __init__(self, unet: nn.Module, stages: Sequence[int], timesteps: Sequence[int], alpha_bars: Sequence[float],
                 num_classes: int, ensemble_size: int = 5, hidden: Sequence[int] = (128, 64), noise_seed: int = 0,
                 embedding_dim: int = None, checkpoint_members: bool = True, timesteps_per_pass: int = None):
        super().__init__(unet, embedding_dim)
        num_stages = len(self.unet.decoder.stages)
        if not stages or any(not -num_stages <= s < num_stages for s in stages):
            raise ValueError(f"Decoder stages {list(stages)} do not exist: this network has {num_stages} decoder "
                             f"stages (0 = lowest resolution, -1 = full resolution).")
        if not timesteps:
            raise ValueError("The pixel classifier needs at least one feature timestep.")
        self.requires_grad_(False)  # the denoiser; the head added below trains
        self.stages, self.timesteps = sorted({s % num_stages for s in stages}), [int(t) for t in timesteps]
        self.register_buffer("alpha_bars", torch.tensor([float(a) for a in alpha_bars]), persistent=False)
        self.noise_seed = noise_seed
        if timesteps_per_pass is not None and timesteps_per_pass < 1:
            raise ValueError(f"timesteps_per_pass must be at least 1, or None for all timesteps in one pass; "
                             f"got {timesteps_per_pass}.")
        self.timesteps_per_pass = timesteps_per_pass or len(self.timesteps)
        dim = convert_conv_op_to_dim(self.unet.encoder.conv_op)
        channels = self.decoder_stage_channels
        self.unet.decoder.seg_layers = MLPEnsembleHead([len(self.timesteps) * channels[s] for s in self.stages],
                                                       num_classes, ensemble_size, hidden, dim, checkpoint_members)

    @property
    def head(self) -> MLPEnsembleHead:
        return self.unet.decoder.seg_layers

    @property
    def region_based(self) -> bool:
        return self.head.predicts_regions

    @region_based.setter
    def region_based(self, flag: bool):
        self.head.set_region_based(flag)

    def train(self, mode: bool = True):
        super().train(False)  # the frozen denoiser: no dropout or running statistics may change
        self.head.train(mode)
        self.training = mode
        return self

    @torch.no_grad()
    def features(self, x: torch.Tensor, noise: torch.Tensor = None) -> List[torch.Tensor]:
        """Decoder features of all timesteps; per stage (B, T x C_stage, *stage_spatial), timestep-major channels.
        ``noise``: the image that brings x to each timestep, ``fixed_noise(x)`` unless given.

        The denoiser runs on ``timesteps_per_pass`` noised copies of the batch at once: all of them in one pass saves
        launches where they dominate (2D on a GPU); fewer per pass bound the peak memory of large 3D patches, where
        one pass over T x B volumes would hold T times the activations. The outputs are the same either way.

        The features are stored channels-last: everything the head does to them (1x1 convolutions, bi/trilinear
        upsampling, sums) then runs on that layout, on which the CPU's upsampling kernels are about twice as fast
        (the 3D head's time halves; ``documentation/performance.md``).
        """
        noise = self.fixed_noise(x) if noise is None else noise
        num_t, batch, per_timestep = len(self.timesteps), x.shape[0], (-1,) + (1,) * x.ndim
        features = None
        for start in range(0, num_t, self.timesteps_per_pass):
            chunk = slice(start, start + self.timesteps_per_pass)
            timesteps = torch.tensor(self.timesteps[chunk], device=x.device)
            n = len(timesteps)
            noisy = add_noise(x, noise, self.alpha_bars[chunk].view(per_timestep))  # (n, B, C, ...)
            outputs = self.decoder_features(noisy.reshape(n * batch, *x.shape[1:]), timesteps.repeat_interleave(batch),
                                            self.stages)
            del noisy
            if features is None:
                layout = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
                features = [torch.empty(batch, num_t * f.shape[1], *f.shape[2:], dtype=f.dtype, device=f.device,
                                        memory_format=layout) for f in outputs]
            for out, f in zip(features, outputs):  # (n * B, C, ...) -> channel blocks of (B, T * C, ...)
                out.view(batch, num_t, *f.shape[1:])[:, chunk] = f.view(n, batch, *f.shape[1:]).transpose(0, 1)
            del outputs
        return features

    @torch.compiler.disable  # TorchDynamo cannot trace a seeded generator
    def fixed_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The noise image that brings x to the feature timesteps: drawn from ``noise_seed`` at every call, the same
        for every input of x's shape."""
        generator = torch.Generator(device=x.device).manual_seed(self.noise_seed)
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # no timestep argument: the features use their own
        # the noise first: drawn outside torch.compile's graph, it splits nothing off the graph (drawn inside
        # ``features``, it split the network into three graphs)
        noise = self.fixed_noise(x)
        member_logits = self.head(self.features(x, noise), x.shape[2:])
        if self.training:
            return member_logits
        return self.mean_probability_logits(member_logits)

    def mean_probability_logits(self, member_logits: torch.Tensor) -> torch.Tensor:
        """Logits whose softmax (sigmoid for regions) is the members' mean probability."""
        member_logits = member_logits.float()
        k = member_logits.shape[1]
        if self.region_based:
            log_p = torch.logsumexp(F.logsigmoid(member_logits), 1) - math.log(k)
            log_not_p = torch.logsumexp(F.logsigmoid(-member_logits), 1) - math.log(k)
            return log_p - log_not_p
        return torch.logsumexp(torch.log_softmax(member_logits, 2), 1) - math.log(k)


class EnsembleLoss(nn.Module):
    """nnU-Net's loss for every member: mean over members of ``loss(member_logits, target)``; a plain tensor (the
    eval-mode ensemble output) goes straight to ``loss``."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.ndim == target.ndim + 1:
            return torch.stack([self.loss(output[:, k], target) for k in range(output.shape[1])]).mean()
        return self.loss(output, target)
