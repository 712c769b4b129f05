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
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tqdm import tqdm

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain

from common import (BATCH, CHANNELS, CLASSES, NO_RECOMPUTE, PLANS_2D, SIZE, TensorMemory, denoising_step,  # noqa: E402
                    paper_denoiser, peak_rss, segmentation_step)


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
