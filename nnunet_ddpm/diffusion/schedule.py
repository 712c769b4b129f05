"""Noise schedule, forward noising and sampling for DDPM pretraining.

The schedule maths is diffusers' (``DDPMScheduler`` for training, ``DDIMScheduler`` for previews); this module only
fixes our defaults, validates them, and keeps them in a plain dict that is stored in every checkpoint and round-trips.
No trainer imports here.

References: Ho et al. 2020 (DDPM, epsilon prediction), Nichol & Dhariwal 2021 (cosine schedule, eq. 17),
Song et al. 2021 (DDIM sampling), Salimans & Ho 2022 (v-prediction), Hang et al. 2023 (min-SNR loss weights).
"""
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence, Union

import torch
from diffusers import DDIMScheduler, DDPMScheduler

# diffusers' names: 'squaredcos_cap_v2' is the cosine schedule of Nichol & Dhariwal.
SUPPORTED_BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
# what the denoiser predicts, in diffusers' names: the noise eps, or v = sqrt(a_t) eps - sqrt(1 - a_t) x_0
PREDICTION_TYPES = ("epsilon", "v_prediction")
# the timestep at which the fine-tune runs the noise predictor (nnUNetTrainerDDPMFinetune.finetune_timestep) and the
# stock export folds it by default; alpha_bar_50 ~ 0.99 on the cosine schedule
FINETUNE_TIMESTEP = 50


@dataclass(frozen=True)
class DiffusionSettings:
    """What defines the forward process. Stored in checkpoints (``to_dict``) and compared on fine-tuning."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self):
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        if self.beta_schedule not in SUPPORTED_BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {SUPPORTED_BETA_SCHEDULES}, got {self.beta_schedule!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DiffusionSettings":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown diffusion settings {sorted(unknown)}; known settings are {sorted(known)}")
        return cls(**values)

    def training_scheduler(self) -> DDPMScheduler:
        """Epsilon-prediction DDPM scheduler; training uses its ``alphas_cumprod``."""
        return DDPMScheduler(num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                             prediction_type="epsilon", clip_sample=False)

    def alpha_bar(self, timestep: int) -> float:
        """Cumulative signal fraction alpha_bar_t (Ho et al. 2020, eq. 4) at one timestep."""
        if not 0 <= timestep < self.num_train_timesteps:
            raise ValueError(f"timestep must lie in [0, {self.num_train_timesteps - 1}], got {timestep}")
        return float(self.training_scheduler().alphas_cumprod[timestep])


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: Union[float, torch.Tensor]) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps: a draw from q(x_t | x_0) (Ho et al. 2020, eq. 4)
    given the draw eps. The pretraining's loss, the fine-tune's input and the pixel classifier's features all noise
    their images here. ``alpha_bar`` is a float, or a tensor that broadcasts against ``x0`` (one value per sample,
    per timestep, ...)."""
    if isinstance(alpha_bar, torch.Tensor):
        alpha_bar = alpha_bar.to(x0.dtype)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    return torch.add(noise * math.sqrt(1 - alpha_bar), x0, alpha=math.sqrt(alpha_bar))


def prediction_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                      prediction_type: str = "epsilon") -> torch.Tensor:
    """What the denoiser learns to output for x_t = add_noise(x0, noise, alpha_bar): the noise itself (Ho et al.
    2020), or the velocity v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho, ICLR 2022, "Progressive
    Distillation"), whose scale does not vanish at either end of the schedule."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        alpha_bar = alpha_bar.to(x0.dtype)
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def min_snr_weights(alpha_bar: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR loss weights, SNR_t = alpha_bar_t / (1 - alpha_bar_t): min(SNR_t, gamma) / SNR_t for epsilon
    prediction, min(SNR_t, gamma) / (SNR_t + 1) for v-prediction (whose loss already carries the factor SNR_t + 1).

    Hang et al. (ICCV 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"): the nearly clean
    timesteps, whose noise is hard to see and whose gradients conflict with the others', weigh less; reported to reach
    the same quality in several times fewer iterations. For epsilon the weight is 1 where SNR_t <= gamma."""
    snr = alpha_bar / (1 - alpha_bar)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return snr.clamp(max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)


def sample_training_timesteps(batch_size: int, settings: DiffusionSettings, device: torch.device,
                              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform timesteps t ~ U{0, ..., T-1}, shape (B,), as in Ho et al. 2020, Algorithm 1."""
    return torch.randint(0, settings.num_train_timesteps, (batch_size,), generator=generator,
                         device='cpu').to(device)


@torch.no_grad()
def ddim_sample(denoiser: torch.nn.Module, shape: Sequence[int], settings: DiffusionSettings,
                num_inference_steps: int = 50, generator: Optional[torch.Generator] = None,
                device: torch.device = torch.device('cpu'), prediction_type: str = "epsilon") -> torch.Tensor:
    """Generate images of ``shape`` (B, C, *spatial) with deterministic DDIM (eta = 0, Song et al. 2021).

    ``denoiser(x_t, t)`` predicts what ``prediction_type`` names. Sampling is seeded by ``generator`` (a CPU
    generator).
    """
    if num_inference_steps < 1 or num_inference_steps > settings.num_train_timesteps:
        raise ValueError(f"num_inference_steps must lie in [1, {settings.num_train_timesteps}], "
                         f"got {num_inference_steps}")
    scheduler = DDIMScheduler(num_train_timesteps=settings.num_train_timesteps, beta_schedule=settings.beta_schedule,
                              prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(num_inference_steps)
    x = torch.randn(tuple(shape), generator=generator).to(device)
    for t in scheduler.timesteps:
        timesteps = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        noise_prediction = denoiser(x, timesteps)
        x = scheduler.step(noise_prediction, t, x, eta=0.0).prev_sample
    return x
