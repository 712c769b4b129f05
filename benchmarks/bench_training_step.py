"""Training-step cost of the plugin's networks against stock nnU-Net and the paper's denoiser.

Every comparison is a ratio measured in one process with the variants interleaved (A B C D A B C D ...), reported as
medians after warm-up. Runs on CPU or GPU (``--device cuda``). Writes a JSON file and prints a Markdown table.

The plans are those nnU-Net makes for 4-channel 128 x 128 slices (BraTS-like, 2d): 6 stages, features 32..512,
batch 12. The paper's denoiser (improved-DDPM U-Net: 64 channels, multipliers 1,1,2,2,4,4, three residual blocks
per level, attention with 4 heads at 32 x 32) is rebuilt with diffusers' UNet2DModel from those published settings.

    python benchmarks/bench_training_step.py --repeats 5 --out documentation/benchmarks/training_step_cpu.json
    python benchmarks/bench_training_step.py --memory --skip-paper     # peak memory, one process per variant
                                                  # (RSS and tensors on CPU, max allocated on GPU)
    python benchmarks/bench_training_step.py --device cuda --bf16 --compile   # GPU: bf16 autocast, torch.compile
    python benchmarks/bench_training_step.py --skip-paper --no-recompute     # with the pretraining's recomputation off
"""
import contextlib
import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch.profiler import record_function
from tqdm import tqdm

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--skip-paper", action="store_true", help="leave out the (slow) paper denoiser")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around forward and loss")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network (not the optimizer)")
    parser.add_argument("--memory", action="store_true",
                        help="measure peak memory instead: each variant alone in a fresh process (RSS and peak of "
                             "tensors on CPU, max allocated on GPU) over warm-up + repeats steps")
    parser.add_argument("--no-recompute", action="store_true",
                        help="add the pretraining with recomputed_encoder_stages = 0 (what the recomputation buys)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: one variant, print its peak
    parser.add_argument("--tensors", action="store_true", help=argparse.SUPPRESS)  # internal: with --only on CPU
    args = parser.parse_args()
    if args.memory:
        return measure_memory(args)
    device = torch.device(args.device)
    torch.manual_seed(0)

    def compiled(network):
        return torch.compile(network) if args.compile else network

    def build_segmentation(trainer):
        network = trainer.build_network_architecture(None, PLANS_2D, CHANNELS, CLASSES, True).to(device)
        return segmentation_step(compiled(network), device, args.bf16), network

    def build_pretraining(recomputed_encoder_stages=None):
        denoiser = nnUNetTrainerDDPMPretrain.build_network_architecture(None, PLANS_2D, CHANNELS, CHANNELS).to(device)
        if recomputed_encoder_stages is not None:  # the trainer's default otherwise
            denoiser.recomputed_encoder_stages = recomputed_encoder_stages
        ema = nnUNetTrainerDDPMPretrain.build_network_architecture(None, PLANS_2D, CHANNELS, CHANNELS).to(device)
        step = denoising_step(compiled(denoiser), device, lambda n, x, t: n(x, t), ema, args.bf16)
        return step, denoiser

    def build_paper():
        paper = paper_denoiser().to(device)
        return denoising_step(compiled(paper), device, lambda n, x, t: n(x, t).sample, bf16=args.bf16), paper

    builders = {"stock nnU-Net (fine-tune cost reference)": lambda: build_segmentation(nnUNetTrainer),
                "DDPM fine-tune": lambda: build_segmentation(nnUNetTrainerDDPMFinetune),
                "DDPM pretraining (plan-derived denoiser, with EMA)": build_pretraining}
    if args.no_recompute:
        builders[NO_RECOMPUTE] = lambda: build_pretraining(0)
    if not args.skip_paper:
        builders["paper's denoiser (improved DDPM, diffusers)"] = build_paper
    if args.only is not None:  # build only this variant, so that the peak is its own
        # from the network's construction on, as in a trainer; on the CPU the profiler that counts tensors adds to
        # the RSS, so the RSS comes from a run without it
        with TensorMemory(device) if args.tensors or device.type == "cuda" else contextlib.nullcontext() as tensors:
            step, _ = builders[args.only]()
            for _ in range(args.warmup + args.repeats):
                step()
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
        print(json.dumps({"variant": args.only, "peak_bytes": None if args.tensors else peak,
                          "tensor_peak_bytes": tensors.peak_bytes if tensors else None}))
        return
    built = {name: build() for name, build in builders.items()}
    variants = {name: step for name, (step, _) in built.items()}
    parameters = {name: network for name, (_, network) in built.items()}

    times = {name: [] for name in variants}
    for repeat in tqdm(range(args.warmup + args.repeats), desc="interleaved repeats"):
        for name, step in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians["stock nnU-Net (fine-tune cost reference)"]
    plugin_denoiser = medians["DDPM pretraining (plan-derived denoiser, with EMA)"]
    rows = []
    for name, median in medians.items():
        rows.append({"variant": name, "median_s": median, "ratio_to_stock": median / reference,
                     "parameters_M": sum(p.numel() for p in parameters[name].parameters()) / 1e6,
                     "times_s": times[name]})
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "torch_threads": torch.get_num_threads(), "batch": BATCH, "input": [CHANNELS, SIZE, SIZE],
              "repeats": args.repeats, "warmup": args.warmup, "bf16": args.bf16, "compile": args.compile,
              "rows": rows}
    if "paper's denoiser (improved DDPM, diffusers)" in medians:
        result["paper_denoiser_over_plugin_denoiser"] = \
            medians["paper's denoiser (improved DDPM, diffusers)"] / plugin_denoiser
    print(f"\n{result['device']}, {result['torch_threads']} threads, batch {BATCH}, input {CHANNELS}x{SIZE}x{SIZE}, "
          f"median of {args.repeats} after {args.warmup} warm-up, bf16 {args.bf16}, compile {args.compile}")
    print("| variant | parameters (M) | s / step | images / s | x stock |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['parameters_M']:.1f} | {row['median_s']:.4f} | {BATCH / row['median_s']:.0f} "
              f"| {row['ratio_to_stock']:.2f} |")
    if "paper_denoiser_over_plugin_denoiser" in result:
        print(f"paper's denoiser / plugin denoiser: {result['paper_denoiser_over_plugin_denoiser']:.1f} x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


def measure_memory(args):
    """Peak memory of each variant's training step, each in a process of its own (peaks do not mix)."""
    names = ["stock nnU-Net (fine-tune cost reference)", "DDPM fine-tune",
             "DDPM pretraining (plan-derived denoiser, with EMA)"] + ([NO_RECOMPUTE] if args.no_recompute else [])
    if not args.skip_paper:
        names.append("paper's denoiser (improved DDPM, diffusers)")
    peaks, tensor_peaks = {}, {}
    for name in tqdm(names, desc="variants"):
        def child(*extra):
            output = subprocess.run([sys.executable, __file__, "--only", name, "--device", args.device,
                                     "--repeats", str(args.repeats), "--warmup", str(args.warmup), *extra]
                                    + (["--skip-paper"] if args.skip_paper else []) + (["--bf16"] if args.bf16 else [])
                                    + (["--no-recompute"] if args.no_recompute else []),
                                    capture_output=True, text=True, check=True).stdout
            return json.loads(output.strip().splitlines()[-1])
        result = child()
        peaks[name], tensor_peaks[name] = result["peak_bytes"], result["tensor_peak_bytes"]
        if tensor_peaks[name] is None:  # CPU: tensors counted in a run of their own
            tensor_peaks[name] = child("--tensors")["tensor_peak_bytes"]
    kind = "max allocated (GPU)" if args.device.startswith("cuda") else "peak RSS (CPU)"
    print(f"\n{args.device}, batch {BATCH}, input {CHANNELS}x{SIZE}x{SIZE}, {args.warmup + args.repeats} steps, "
          f"bf16 {args.bf16}")
    print(f"| variant | {kind} (GiB) | x stock | peak of tensors (GiB) | x stock |\n|---|---|---|---|---|")
    for name in names:
        print(f"| {name} | {peaks[name] / 2 ** 30:.2f} | {peaks[name] / peaks[names[0]]:.2f} "
              f"| {tensor_peaks[name] / 2 ** 30:.3f} | {tensor_peaks[name] / tensor_peaks[names[0]]:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"kind": kind, "device": args.device, "batch": BATCH, "bf16": args.bf16,
                                              "steps": args.warmup + args.repeats, "peaks_bytes": peaks,
                                              "tensor_peaks_bytes": tensor_peaks}, indent=2))


if __name__ == "__main__":
    main()
