"""What the training-step benchmarks share: nnU-Net's planned 2D configuration for BraTS-like slices, one training
step of each kind of network, and memory measurements."""
import contextlib
import json
import resource
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch.profiler import record_function



CHANNELS, CLASSES, SIZE, BATCH = 4, 4, 128, 12
NO_RECOMPUTE = "DDPM pretraining, nothing recomputed"


def planned_configuration(patch_size, batch_size):
    """The configuration nnU-Net's default planner makes for this patch size at isotropic spacing: its pooling rule
    (``get_pool_and_conv_props``, down to 4 voxels), 32 features doubling per stage up to 512 (2D) or 320 (3D)."""
    dim = len(patch_size)
    _, pools, kernels, _, _ = get_pool_and_conv_props([1.0] * dim, list(patch_size), 4, 999999)
    n = len(pools)
    conv, norm = ("Conv2d", "InstanceNorm2d") if dim == 2 else ("Conv3d", "InstanceNorm3d")
    return ConfigurationManager({
        "patch_size": list(patch_size), "batch_size": batch_size, "pool_op_kernel_sizes": [list(p) for p in pools],
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": [min(32 * 2 ** i, 512 if dim == 2 else 320)
                                                                  for i in range(n)],
                            "conv_op": f"torch.nn.modules.conv.{conv}", "kernel_sizes": [list(k) for k in kernels],
                            "strides": [list(p) for p in pools], "n_conv_per_stage": [2] * n,
                            "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                            "norm_op": f"torch.nn.modules.instancenorm.{norm}",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}})


PLANS_2D = planned_configuration((SIZE, SIZE), BATCH)  # nnU-Net's 2d plan for BraTS-like 128 x 128 slices: 6 stages


def paper_denoiser():
    from diffusers import UNet2DModel
    levels = (64, 64, 128, 128, 256, 256)  # 64 x (1, 1, 2, 2, 4, 4) at 128, 64, 32, 16, 8, 4 pixels
    down = tuple("AttnDownBlock2D" if SIZE // 2 ** i == 32 else "DownBlock2D" for i in range(len(levels)))
    return UNet2DModel(sample_size=SIZE, in_channels=CHANNELS, out_channels=CHANNELS, block_out_channels=levels,
                       layers_per_block=3, down_block_types=down,
                       up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
                       attention_head_dim=32, norm_num_groups=32)  # 128 channels at 32 px / 4 heads


def peak_rss() -> int:
    """This process's peak resident set size in bytes. Linux's VmHWM belongs to the process image, so a child
    started by ``subprocess`` from a large parent reports its own peak; ``ru_maxrss`` keeps the parent's RSS at the
    fork across exec (which would make every child look as large as the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux; other systems: approximate


class TensorMemory:
    """Peak bytes of tensors that torch's allocator held inside the block, less those alive at its start.

    On a GPU that is ``torch.cuda.max_memory_allocated``. On the CPU it is read from ``torch.profiler``'s memory events
    (the CPU allocator reports every allocation and free to it): the counterpart of the GPU number, tensors only,
    without the interpreter, libraries and freed-but-kept pages that RSS includes. Kernels' own scratch memory differs
    between devices (cuDNN workspaces, oneDNN buffers), so the two agree closely but not exactly.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes, self._profiler = device, None, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                    profile_memory=True)
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc):
        if self._profiler is None:
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
            return
        self._profiler.__exit__(*exc)
        with tempfile.TemporaryDirectory() as folder:
            trace = Path(folder) / "trace.json"
            self._profiler.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
        # "Total Allocated" counts from the profiler's start; device type 0 is the CPU
        self.peak_bytes = max((e["args"]["Total Allocated"] for e in events
                               if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0), default=0)


def autocast(device, bf16):
    """bf16 autocast around forward and loss, as nnU-Net's trainer does with its own autocast on GPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def segmentation_step(network, device, bf16=False, plans=PLANS_2D, channels=CHANNELS):
    """nnU-Net's step: forward, DC+CE loss with deep supervision, backward, clip, SGD step."""
    pools = torch.tensor(plans.pool_op_kernel_sizes, dtype=torch.float64)
    scales = (1 / torch.cumprod(pools, 0))[:-1].tolist()  # nnU-Net's deep supervision scales
    weights = torch.tensor([1 / 2 ** i for i in range(len(scales))])
    weights[-1] = 0
    loss = DeepSupervisionWrapper(DC_and_CE_loss({'batch_dice': True, 'smooth': 1e-5, 'do_bg': False, 'ddp': False},
                                                 {}, weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss),
                                  (weights / weights.sum()).tolist())
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    batch, patch = plans.batch_size, plans.patch_size
    x = torch.randn(batch, channels, *patch, device=device)
    targets = [torch.randint(0, CLASSES, (batch, 1, *(round(p * f) for p, f in zip(patch, s))), device=device).float()
               for s in scales]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            value = loss(network(x), targets)
        value.backward()
        with record_function("Optimizer.clip_and_step"):  # a label for profile_step.py
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()
    return step


def denoising_step(network, device, call, ema=None, bf16=False, plans=PLANS_2D, channels=CHANNELS):
    """DDPM step: forward on x_t, MSE on the noise, backward, clip, AdamW step, (EMA update)."""
    optimizer = torch.optim.AdamW(network.parameters(), 2e-4, weight_decay=0)
    x = torch.randn(plans.batch_size, channels, *plans.patch_size, device=device)
    timesteps = torch.randint(0, 1000, (plans.batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        noise = torch.randn_like(x)
        with autocast(device, bf16):
            value = F.mse_loss(call(network, x + noise, timesteps).float(), noise)
        value.backward()
        with record_function("Optimizer.clip_and_step"):
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
        if ema is not None:
            with torch.no_grad(), record_function("Optimizer.ema_update"):  # as nnUNetTrainerDDPMPretrain's
                torch._foreach_lerp_(list(ema.parameters()), list(network.parameters()), 0.001)
    return step
