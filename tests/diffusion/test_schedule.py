import math

import pytest
import torch

from nnunet_ddpm.diffusion import (DiffusionSettings, add_noise, ddim_sample, min_snr_weights, prediction_target,
                                   sample_training_timesteps)


def test_cosine_schedule_matches_nichol_dhariwal():
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), s = 0.008 (their eq. 17).

    diffusers builds it from betas clipped at 0.999, which changes only the last steps.
    """
    settings = DiffusionSettings()
    alphas_cumprod = settings.training_scheduler().alphas_cumprod.double()

    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 1, 50, 250, 500, 900):
        # diffusers indexes alpha_bar by t = 0 .. T-1 as the product of the first t + 1 betas
        assert alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-4)
    assert torch.all(alphas_cumprod[1:] < alphas_cumprod[:-1])
    assert settings.alpha_bar(50) == pytest.approx(alphas_cumprod[50].item())


def test_settings_round_trip_and_errors():
    settings = DiffusionSettings(num_train_timesteps=200, beta_schedule="linear")
    assert DiffusionSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        DiffusionSettings(beta_schedule="cosine")
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 2, got 1"):
        DiffusionSettings(num_train_timesteps=1)
    with pytest.raises(ValueError, match="Unknown diffusion settings \\['eta'\\]"):
        DiffusionSettings.from_dict({"eta": 0.0})
    with pytest.raises(ValueError, match=r"timestep must lie in \[0, 999\], got 1000"):
        DiffusionSettings().alpha_bar(1000)


def test_add_noise_is_the_forward_process():
    settings = DiffusionSettings()
    scheduler = settings.training_scheduler()
    x0 = torch.randn(3, 2, 8, 8, 8)  # 3D batch
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    xt = scheduler.add_noise(x0, noise, t)
    for i in range(3):
        a = scheduler.alphas_cumprod[t[i]]
        assert torch.allclose(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i], atol=1e-5)
    # ours, used by every trainer: per-sample alpha_bar, and one float alpha_bar
    ours = add_noise(x0, noise, scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1))
    assert torch.allclose(ours, xt, atol=1e-6)
    a = float(scheduler.alphas_cumprod[500])
    assert torch.allclose(add_noise(x0, noise, a), a ** 0.5 * x0 + (1 - a) ** 0.5 * noise,
                          atol=1e-6)
    timesteps = sample_training_timesteps(1000, settings, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert timesteps.shape == (1000,) and timesteps.min() >= 0 and timesteps.max() <= 999


@pytest.mark.parametrize("shape,prediction_type", [((2, 3, 16, 16), "epsilon"), ((1, 2, 8, 8, 8), "epsilon"),
                                                   ((2, 3, 16, 16), "v_prediction")])
def test_ddim_sampling_is_seeded_and_recovers_data_with_an_oracle(shape, prediction_type):
    """With the exact noise (or v) predictor of a data set that is a single point x*, DDIM lands on x*."""
    settings = DiffusionSettings()
    alphas_cumprod = settings.training_scheduler().alphas_cumprod
    target = torch.linspace(-1, 1, int(torch.tensor(shape[1:]).prod())).reshape(shape[1:])

    def oracle(x, t):
        a = alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))
        noise = (x - a.sqrt() * target) / (1 - a).sqrt()
        return noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * target

    first = ddim_sample(oracle, shape, settings, 20, torch.Generator().manual_seed(3), prediction_type=prediction_type)
    second = ddim_sample(oracle, shape, settings, 20, torch.Generator().manual_seed(3),
                         prediction_type=prediction_type)
    assert torch.equal(first, second)
    assert torch.allclose(first, target.expand(shape), atol=1e-3)
    with pytest.raises(ValueError, match="num_inference_steps must lie in"):
        ddim_sample(oracle, shape, settings, 0)


def test_min_snr_weights_by_hand():
    """SNR = a / (1 - a): 0.9 -> 9 (weight 5 / 9 at gamma 5), 0.5 -> 1 and 0.1 -> 1/9 (both below gamma: weight 1)."""
    weights = min_snr_weights(torch.tensor([0.9, 0.5, 0.1]), 5.0)
    assert weights.tolist() == pytest.approx([5 / 9, 1.0, 1.0])
    # v-prediction: min(SNR, 5) / (SNR + 1): 5 / 10, 1 / 2, (1/9) / (10/9)
    weights = min_snr_weights(torch.tensor([0.9, 0.5, 0.1]), 5.0, "v_prediction")
    assert weights.tolist() == pytest.approx([0.5, 0.5, 0.1])
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        min_snr_weights(torch.tensor([0.5]), 5.0, "sample")


def test_v_target_by_hand():
    """v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022): a = 0.36, eps = 1, x0 = 2 gives 0.6 - 0.8 * 2 = -1.0;
    and x0 = sqrt(a) x_t - sqrt(1 - a) v recovers the image from the noisy one."""
    x0, noise, alpha_bar = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.36])
    assert prediction_target(x0, noise, alpha_bar, "epsilon") is noise
    v = prediction_target(x0, noise, alpha_bar, "v_prediction")
    assert v.tolist() == pytest.approx([-1.0])
    assert (0.6 * add_noise(x0, noise, alpha_bar) - 0.8 * v).tolist() == pytest.approx([2.0])
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        prediction_target(x0, noise, alpha_bar, "x0")
