"""A time-conditioned denoising U-Net whose topology is nnU-Net's planned network.

We build the network exactly as nnU-Net does (``get_network_from_plans``: stages, features, kernels, strides, conv and
norm ops; 2D or 3D follows from ``conv_op``) and add the diffusion timestep to it: a sinusoidal embedding and an MLP
(diffusers' ``Timesteps`` / ``TimestepEmbedding``), projected to a per-sample scale and shift that modulates every
instance normalisation of encoder and decoder (AdaGN of Dhariwal & Nichol 2021; FiLM of Perez et al. 2018).

The modulation is folded into the normalisation's affine parameters: instance norm of a (B, C, *spatial) tensor is a
batch norm of its (1, B*C, *spatial) view, so per-sample scales are per-channel weights there. That costs what a plain
instance norm costs (measured in ``documentation/performance.md``).

State-dict keys are those of the plain nnU-Net network under ``unet.`` plus ``time_embedding.*``, one
``*.norm.time_projection.*`` per normalisation and ``pretraining_metadata``, for the denoiser and the segmentation
network alike, so pretrained weights move between them (and through nnU-Net's ``-pretrained_weights``) by key; only
``.seg_layers.`` differ.

``pretraining_metadata`` is a fixed-size byte buffer holding the pretraining's description as JSON (noise schedule,
plans, configuration, patch: what must agree with a run that uses it; ``networks/pretrained_checkpoint.py``), zeros in
a network that no pretraining has filled. It travels with the weights, so a trainer given a pretraining by nnU-Net's
``-pretrained_weights`` (which copies weights and tells the trainer nothing else) can still check what it was given.
"""
import json
import math
from contextlib import contextmanager
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.utils.checkpoint import checkpoint

from nnunet_ddpm.diffusion import add_noise

PRETRAINING_METADATA_KEY = "pretraining_metadata"
PRETRAINING_METADATA_BYTES = 8192  # a few hundred bytes are used; nnU-Net's loader needs one shape for every network


def encode_pretraining_metadata(metadata: dict) -> torch.Tensor:
    """``metadata`` as the ``pretraining_metadata`` buffer: compact JSON in UTF-8, zero-padded."""
    encoded = json.dumps(metadata, separators=(",", ":")).encode()
    if len(encoded) > PRETRAINING_METADATA_BYTES:
        raise ValueError(f"The pretraining metadata takes {len(encoded)} bytes, the network's buffer holds "
                         f"{PRETRAINING_METADATA_BYTES}: {encoded[:200]!r}...")
    buffer = torch.zeros(PRETRAINING_METADATA_BYTES, dtype=torch.uint8)
    buffer[:len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
    return buffer


def decode_pretraining_metadata(buffer: torch.Tensor) -> Optional[dict]:
    """The metadata in a ``pretraining_metadata`` buffer, None for a buffer that no pretraining filled."""
    encoded = bytes(buffer.detach().cpu().numpy().tobytes()).rstrip(b"\0")
    return json.loads(encoded.decode()) if encoded else None


class _Conditioning:
    """The modulated affine parameters of the forward pass under way, for all norms of one network at once, split
    by norm: ``weights[i]`` and ``biases[i]`` of shape (B or 1, channels of norm i)."""

    weights: Optional[Sequence[torch.Tensor]] = None
    biases: Optional[Sequence[torch.Tensor]] = None


class TimestepModulatedInstanceNorm(nn.Module):
    """Instance norm with per-sample affine parameters weight * (1 + scale_t), bias * (1 + scale_t) + shift_t.

    Keeps the wrapped norm's ``weight`` and ``bias`` under the same names. ``time_projection`` (embedding -> scale,
    shift) is zero-initialised so a fresh network starts as the plain nnU-Net network. The modulated parameters are
    computed for all norms together by ``TimeConditionedUNet`` (a handful of kernels instead of a handful per norm)
    and split by norm; this module, the ``index``-th norm, whose channels start at ``offset`` in the concatenation,
    normalises with its piece.
    """

    def __init__(self, norm: _InstanceNorm, embedding_dim: int, conditioning: _Conditioning, index: int,
                 offset: int):
        super().__init__()
        if norm.track_running_stats:
            raise ValueError("Timestep modulation needs instance norm without running statistics "
                             "(nnU-Net's default: norm_op_kwargs {'eps': 1e-5, 'affine': True}).")
        self.num_features = norm.num_features
        self.eps = norm.eps
        self.index, self.offset = index, offset
        if norm.affine:
            self.weight, self.bias = norm.weight, norm.bias
        else:  # identity affine, not saved: the state dict keeps the plain norm's keys
            self.register_buffer("weight", torch.ones(norm.num_features), persistent=False)
            self.register_buffer("bias", torch.zeros(norm.num_features), persistent=False)
        self.time_projection = nn.Linear(embedding_dim, 2 * norm.num_features)
        nn.init.zeros_(self.time_projection.weight)
        nn.init.zeros_(self.time_projection.bias)
        self._conditioning = conditioning

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._conditioning.weights is None:
            raise RuntimeError("TimestepModulatedInstanceNorm was called outside TimeConditionedUNet.forward")
        weight, bias = self._conditioning.weights[self.index], self._conditioning.biases[self.index]
        if weight.shape[0] == 1:  # one timestep for the whole batch: a plain instance norm with these parameters
            return F.instance_norm(x, weight=weight.view(-1), bias=bias.view(-1), eps=self.eps)
        # per-sample parameters: instance norm of (B, C, ...) is batch norm of its (1, B*C, ...) view
        batch, channels = x.shape[:2]
        folded = x.reshape(1, batch * channels, *x.shape[2:])
        out = F.batch_norm(folded, None, None, weight.reshape(-1), bias.reshape(-1), True, 0.0, self.eps)
        return out.reshape(x.shape)


def build_unet_from_plans(configuration_manager: ConfigurationManager, num_input_channels: int,
                          num_output_channels: int, deep_supervision: bool) -> nn.Module:
    """nnU-Net's planned network (e.g. ``PlainConvUNet``), initialised as nnU-Net initialises it."""
    return get_network_from_plans(configuration_manager.network_arch_class_name,
                                  configuration_manager.network_arch_init_kwargs,
                                  configuration_manager.network_arch_init_kwargs_req_import,
                                  num_input_channels, num_output_channels, allow_init=True,
                                  deep_supervision=deep_supervision)


def network_downsampling(configuration_manager: ConfigurationManager) -> List[int]:
    """The planned network's total downsampling per axis (the product of its pooling strides): every input it takes
    must be a multiple of it along each axis."""
    return [int(n) for n in np.prod(np.array(configuration_manager.pool_op_kernel_sizes), axis=0)]


class TimeConditionedUNet(nn.Module):
    """Noise predictor eps_theta(x_t, t): the planned U-Net with every instance norm modulated by the timestep.

    Input x of shape (B, C, *spatial) and integer timesteps of shape (B,) (or a scalar); output as the wrapped U-Net's.

    ``recomputed_encoder_stages``: in training with gradients, the first (highest-resolution) encoder stages keep only
    their input and output for the backward pass, which recomputes what is inside them (activation checkpointing).
    Same outputs and gradients; the pretraining uses it to pay for its optimiser state (``_encode_recomputing``).
    """

    def __init__(self, unet: nn.Module, embedding_dim: Optional[int] = None, recomputed_encoder_stages: int = 0):
        super().__init__()
        self.recomputed_encoder_stages = recomputed_encoder_stages
        norms = [(parent, name, child) for parent in unet.modules() for name, child in parent.named_children()
                 if isinstance(child, _InstanceNorm)]
        if not norms:
            found = sorted({type(m).__name__ for m in unet.modules() if 'Norm' in type(m).__name__}) or ['none']
            raise ValueError("Timestep conditioning needs instance normalisation in the planned network (nnU-Net's "
                             f"default norm_op), but the plans use: {', '.join(found)}.")
        base_channels = _first_conv(unet).out_channels
        embedding_dim = embedding_dim or 4 * base_channels  # DDPM convention: 4 x the first stage's width
        self.unet = unet
        self.time_embedding = nn.Sequential(
            Timesteps(base_channels, flip_sin_to_cos=True, downscale_freq_shift=0),
            TimestepEmbedding(base_channels, embedding_dim))
        self._conditioning = _Conditioning()
        modulated, offset = {}, 0
        # DNA blocks reference one norm from two parents (``.norm`` and ``.all_modules``): replace it in both.
        for parent, name, norm in norms:
            if id(norm) not in modulated:
                modulated[id(norm)] = TimestepModulatedInstanceNorm(norm, embedding_dim, self._conditioning,
                                                                    len(modulated), offset)
                offset += norm.num_features
            setattr(parent, name, modulated[id(norm)])
        self._norms = list(modulated.values())  # a plain list: the modules are registered inside ``unet``
        # where each norm's scale and shift sit in the concatenated projection: its block starts at 2 * offset
        self.register_buffer("_scale_index", torch.cat([2 * n.offset + torch.arange(n.num_features)
                                                        for n in self._norms]), persistent=False)
        self.register_buffer("_shift_index", torch.cat([2 * n.offset + n.num_features + torch.arange(n.num_features)
                                                        for n in self._norms]), persistent=False)
        self.register_buffer(PRETRAINING_METADATA_KEY, torch.zeros(PRETRAINING_METADATA_BYTES, dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models and pretrainings saved before the buffer existed load with an empty one (what their metadata was is
        # not in their weights), instead of failing a strict load in nnU-Net's predictor
        state_dict.setdefault(prefix + PRETRAINING_METADATA_KEY, torch.zeros_like(self.pretraining_metadata))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, timesteps: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Timestep embedding of shape (B or 1, embedding_dim) for integer timesteps of shape (B,), (1,) or ()."""
        return self.time_embedding(torch.as_tensor(timesteps, device=device).reshape(-1))

    @contextmanager
    def conditioned_on(self, embedding: torch.Tensor):
        """Compute every norm's modulated weight and bias for this embedding (B or 1 rows) in one go."""
        projection = F.linear(embedding, torch.cat([n.time_projection.weight for n in self._norms]),
                              torch.cat([n.time_projection.bias for n in self._norms]))
        scale, shift = projection.index_select(1, self._scale_index), projection.index_select(1, self._shift_index)
        weight = torch.cat([n.weight for n in self._norms])
        bias = torch.cat([n.bias for n in self._norms])
        # split, not sliced by each norm: the backward pass then joins the norms' gradients in one concatenation
        # instead of a zero-filled full-width copy per norm (measured with benchmarks/profile_step.py)
        widths = [n.num_features for n in self._norms]
        self._conditioning.weights = torch.addcmul(weight, weight, scale).split(widths, 1)  # weight * (1 + scale)
        self._conditioning.biases = torch.addcmul(bias + shift, bias, scale).split(widths, 1)  # bias*(1+scale)+shift
        try:
            yield
        finally:
            self._conditioning.weights = self._conditioning.biases = None

    @property
    def decoder(self) -> nn.Module:
        """nnU-Net toggles deep supervision through ``network.decoder.deep_supervision``."""
        return self.unet.decoder

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor):
        with self.conditioned_on(self.embed(timesteps, x.device)):
            if self.recomputed_encoder_stages and self.training and torch.is_grad_enabled():
                return self.unet.decoder(self._encode_recomputing(x))
            return self.unet(x)

    def _encode_recomputing(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The encoder's skips, as dynamic-network-architectures' ``PlainConvEncoder`` / ``ResidualEncoder``
        compute them, with the first ``recomputed_encoder_stages`` stages checkpointed.

        Why: the pretraining holds the denoiser's weights four times (weights, AdamW's two moments, the EMA copy)
        where stock nnU-Net holds them twice (weights, SGD momentum). The highest-resolution stages hold most
        activations per channel but cost little arithmetic (few channels), so recomputing them brings the step's
        peak memory back near stock's for almost no time (``documentation/performance.md``).
        """
        encoder, recomputed = self.unet.encoder, self.recomputed_encoder_stages
        if getattr(encoder, 'stem', None) is not None:
            x = encoder.stem(x)
        skips = []
        for i, stage in enumerate(encoder.stages):
            x = checkpoint(self._with_this_conditioning(stage), x, use_reentrant=False) if i < recomputed \
                else stage(x)
            skips.append(x)
        return skips

    def _with_this_conditioning(self, module: nn.Module):
        """``module`` as a function that runs with the current forward pass's norm parameters, also when the backward
        pass recomputes it, after ``conditioned_on`` has ended. Under torch.compile the traced graph holds those
        tensors already, and setting them would be a side effect that breaks the graph: then it runs as is."""
        weights, biases = self._conditioning.weights, self._conditioning.biases

        def run(x):
            if torch.compiler.is_compiling():
                return module(x)
            outer = self._conditioning.weights, self._conditioning.biases
            self._conditioning.weights, self._conditioning.biases = weights, biases
            try:
                return module(x)
            finally:
                self._conditioning.weights, self._conditioning.biases = outer
        return run

    @property
    def decoder_stage_channels(self) -> List[int]:
        """Output channels of each decoder stage, lowest resolution first (dynamic-network-architectures order)."""
        encoder_channels = list(self.unet.encoder.output_channels)
        return [encoder_channels[-(s + 2)] for s in range(len(self.unet.decoder.stages))]

    def decoder_features(self, x: torch.Tensor, timesteps: torch.Tensor, stages: Sequence[int]) -> List[torch.Tensor]:
        """Outputs of the given decoder stages (indices into ``decoder.stages``, lowest resolution first).

        Runs the encoder and the decoder stages up to the last one asked for, the loop of dynamic-network-
        architectures' ``UNetDecoder.forward`` without its segmentation layers.
        """
        decoder = self.unet.decoder
        with self.conditioned_on(self.embed(timesteps, x.device)):
            skips = self.unet.encoder(x)
            features, lower = {}, skips[-1]
            for s in range(max(stages) + 1):
                lower = decoder.stages[s](torch.cat((decoder.transpconvs[s](lower), skips[-(s + 2)]), 1))
                features[s] = lower
            return [features[s] for s in stages]


class FixedTimestepUNet(TimeConditionedUNet):
    """The noise predictor run at one fixed diffusion timestep as a segmentation network.

    This is the fine-tuning of Alshenoudy et al. 2023: the input is brought to the timestep's signal level,
    sqrt(alpha_bar_t) * x; during training Gaussian noise of that timestep, sqrt(1 - alpha_bar_t) * eps, is added as the
    paper's code does. In eval mode no noise is drawn, so prediction is deterministic. The timestep is a constant of
    the class that builds the network (a trainer attribute), not a state-dict entry, so keys stay those of the
    denoiser.
    """

    def __init__(self, unet: nn.Module, timestep: int, alpha_bar: float, noise_in_training: bool = True,
                 embedding_dim: Optional[int] = None):
        super().__init__(unet, embedding_dim)
        self.timestep = int(timestep)
        self.alpha_bar = float(alpha_bar)
        self.signal_scale = math.sqrt(alpha_bar)  # the eval-mode input scaling (folded into the first convolution)
        self.noise_in_training = noise_in_training
        # the sinusoidal features of the fixed timestep are a constant (the MLP after them trains)
        with torch.no_grad():
            self.register_buffer("_timestep_features", self.time_embedding[0](torch.tensor([self.timestep])),
                                 persistent=False)

    def forward(self, x: torch.Tensor):
        if self.training and self.noise_in_training:
            x_t = add_noise(x, torch.randn_like(x), self.alpha_bar)
        else:
            x_t = self.signal_scale * x
        with self.conditioned_on(self.time_embedding[1](self._timestep_features)):
            return self.unet(x_t)


def _first_conv(unet: nn.Module) -> nn.Module:
    for module in unet.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module
    raise ValueError(f"{type(unet).__name__} has no convolution; it cannot be a planned nnU-Net network")
