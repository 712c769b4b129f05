"""How training-step time and memory grow with the patch size, for stock nnU-Net and the plugin's trainers.

For each patch size (2D 64, 128, 256 at batch 12; 3D 32, 64, 96 at batch 2, nnU-Net's default batch sizes) the
network is what nnU-Net's planner makes for it (``bench_training_step.planned_configuration``: more stages for larger
patches). Times: per patch size one process, variants interleaved, medians after warm-up. Memory: each (patch size,
variant) alone in a fresh process (peak RSS on CPU, max allocated on GPU). The table gives each cost per input voxel
relative to the smallest patch of the same dimension, so growth faster than the input shows as a number above 1;
memory there is the step's own (peak less what the process held before the first step: libraries, network).

    python benchmarks/bench_scaling.py --out documentation/benchmarks/scaling_cpu.json
    python benchmarks/bench_scaling.py --sizes 2d:64 2d:128 --repeats 2      # a subset
    python benchmarks/bench_scaling.py --skip-times --tensors --sizes 3d:32 3d:64   # memory with the peak of tensors
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tqdm import tqdm

from bench_pixel_classifier import pixel_step  # noqa: E402
from common import CHANNELS, CLASSES, TensorMemory, denoising_step, peak_rss, planned_configuration, \
    segmentation_step  # noqa

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune  # noqa: E402
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier  # noqa: E402
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain  # noqa: E402

SIZES = ["2d:64", "2d:128", "2d:256", "3d:32", "3d:64", "3d:96"]
BATCH = {"2d": 12, "3d": 2}
VARIANTS = ["stock nnU-Net", "DDPM fine-tune", "DDPM pretraining (with EMA)", "DDPM pixel classifier"]
NO_RECOMPUTE = "DDPM pretraining, nothing recomputed"  # recomputed_encoder_stages = 0: what the recomputation saves


def configuration(size: str):
    dim, edge = size.split(":")
    return planned_configuration([int(edge)] * int(dim[0]), BATCH[dim])


def build(variant: str, plans, device):
    if variant == "stock nnU-Net" or variant == "DDPM fine-tune":
        trainer = nnUNetTrainer if variant == "stock nnU-Net" else nnUNetTrainerDDPMFinetune
        network = trainer.build_network_architecture(None, plans, CHANNELS, CLASSES, True).to(device)
        return segmentation_step(network, device, plans=plans)
    if variant == "DDPM pixel classifier":
        network = nnUNetTrainerDDPMPixelClassifier.build_network_architecture(None, plans, CHANNELS, CLASSES, False)
        return pixel_step(network.to(device).train(), device, plans.batch_size, plans.patch_size)
    denoiser, ema = (nnUNetTrainerDDPMPretrain.build_network_architecture(None, plans, CHANNELS, CHANNELS).to(device)
                     for _ in range(2))
    if variant == NO_RECOMPUTE:
        denoiser.recomputed_encoder_stages = 0
    return denoising_step(denoiser, device, lambda n, x, t: n(x, t), ema, plans=plans)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_times(size, variants, args, device):
    torch.manual_seed(0)
    plans = configuration(size)
    steps = {v: build(v, plans, device) for v in variants}
    times = {v: [] for v in variants}
    for repeat in tqdm(range(args.warmup + args.repeats), desc=f"{size}: interleaved repeats", leave=False):
        for variant, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if repeat >= args.warmup:
                times[variant].append(time.perf_counter() - start)
    return {v: statistics.median(t) for v, t in times.items()}, times


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024


def measure_memory(size, variant, args):
    """Peak of a fresh process over two steps, what it held before the first (libraries, network, inputs), and with
    ``--tensors`` the peak of tensors from the network's construction on (on the CPU in a second process: the
    profiler that counts them adds to the RSS)."""
    def child(*extra):
        output = subprocess.run([sys.executable, __file__, "--only", size, variant, "--device", args.device, *extra],
                                capture_output=True, text=True)
        if output.returncode != 0:  # e.g. out of memory: recorded, not fatal
            raise RuntimeError(output.stderr.strip().splitlines()[-1] if output.stderr.strip() else "killed")
        return json.loads(output.stdout.strip().splitlines()[-1])
    try:
        result = child()
        if args.tensors and result.get("tensor_peak_bytes") is None:
            result["tensor_peak_bytes"] = child("--count-tensors")["tensor_peak_bytes"]
    except RuntimeError as error:
        return {"memory_error": str(error)}
    return result | {"memory_error": None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="dim:edge, e.g. 2d:128 3d:64")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS + [NO_RECOMPUTE])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-times", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--tensors", action="store_true",
                        help="also the peak of tensors (the GPU's max allocated; on the CPU read from torch.profiler)")
    parser.add_argument("--only", nargs=2, default=None, help=argparse.SUPPRESS)  # internal: one peak
    parser.add_argument("--count-tensors", action="store_true", help=argparse.SUPPRESS)  # internal, with --only
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.only is not None:
        if args.count_tensors:
            with TensorMemory(device) as tensors:
                step = build(args.only[1], configuration(args.only[0]), device)
                for _ in range(2):
                    step()
            print(json.dumps({"tensor_peak_bytes": tensors.peak_bytes}))
            return
        step = build(args.only[1], configuration(args.only[0]), device)
        before = torch.cuda.memory_allocated() if device.type == "cuda" else current_rss()
        for _ in range(2):
            step()
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
        # on a GPU the peak of tensors is the max allocated (the process starts empty)
        print(json.dumps({"peak_bytes": peak, "before_steps_bytes": before,
                          "tensor_peak_bytes": peak if device.type == "cuda" else None}))
        return

    rows = []
    for size in tqdm(args.sizes, desc="patch sizes"):
        plans = configuration(size)
        medians, times = ({v: None for v in args.variants}, {v: [] for v in args.variants}) if args.skip_times \
            else measure_times(size, args.variants, args, device)
        for variant in args.variants:
            memory = {"memory_error": "skipped"} if args.skip_memory else measure_memory(size, variant, args)
            rows.append({"size": size, "patch": plans.patch_size, "batch": plans.batch_size,
                         "stages": len(plans.pool_op_kernel_sizes), "variant": variant,
                         "voxels": plans.batch_size * math.prod(plans.patch_size), "median_s": medians[variant],
                         "times_s": times[variant], "peak_bytes": memory.get("peak_bytes"),
                         "before_steps_bytes": memory.get("before_steps_bytes"),
                         "tensor_peak_bytes": memory.get("tensor_peak_bytes"), "memory_error": memory["memory_error"]})
        if args.out:  # after every size, so that a long run keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"device": args.device, "threads": torch.get_num_threads(),
                                                  "repeats": args.repeats, "warmup": args.warmup, "rows": rows},
                                                 indent=2))
    print_table(rows)


def print_table(rows):
    """Markdown table; "step memory" is the peak less what the process held before its first step."""
    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}"

    def step_memory(row):
        return None if row.get("before_steps_bytes") is None else row["peak_bytes"] - row["before_steps_bytes"]

    print("| patch (batch) | stages | variant | s / step | x stock | time per voxel, x smallest | peak (GiB) | "
          "step memory (GiB) | x stock | step memory per voxel, x smallest | peak of tensors (GiB) | x stock |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        stock = next(r for r in rows if r["size"] == row["size"] and r["variant"] == "stock nnU-Net")
        first = next(r for r in rows if r["size"].split(":")[0] == row["size"].split(":")[0]
                     and r["variant"] == row["variant"])
        per_voxel = [None if r["median_s"] is None else r["median_s"] / r["voxels"] for r in (row, first)]
        memory = [None if step_memory(r) is None else step_memory(r) / r["voxels"] for r in (row, first)]
        seconds = "-" if row["median_s"] is None else f"{row['median_s']:.3f}"
        peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2 ** 30:.2f}"
        step = "-" if step_memory(row) is None else f"{step_memory(row) / 2 ** 30:.2f}"
        tensors = row.get("tensor_peak_bytes")
        print(f"| {' x '.join(map(str, row['patch']))} ({row['batch']}) | {row['stages']} | {row['variant']} | "
              f"{seconds} | {ratio(row['median_s'], stock['median_s'])} | {ratio(*per_voxel)} | {peak} | {step} | "
              f"{ratio(step_memory(row), step_memory(stock))} | {ratio(*memory)} | "
              f"{'-' if tensors is None else f'{tensors / 2 ** 30:.3f}'} | "
              f"{ratio(tensors, stock.get('tensor_peak_bytes'))} |")


if __name__ == "__main__":
    main()
