"""Cost of the pixel classifier against stock nnU-Net: training step and sliding-window forward, time and memory.

Same plans as ``bench_training_step.py`` (nnU-Net's 2d plan for 4-channel 128 x 128 slices, batch 12). Variants differ
in the number of feature timesteps, of decoder stages and in patch size. Times: one process, variants interleaved,
medians after warm-up. Memory: each variant alone in a fresh process (peak RSS on CPU, max allocated on GPU), so the
peaks do not mix; the stock process is the reference.

    python benchmarks/bench_pixel_classifier.py --out documentation/benchmarks/pixel_classifier_cpu.json
    python benchmarks/bench_pixel_classifier.py --memory --out documentation/benchmarks/pixel_classifier_memory_cpu.json
"""
import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tqdm import tqdm

from common import BATCH, CHANNELS, CLASSES, PLANS_2D, peak_rss, segmentation_step  # noqa: E402

from nnunet_ddpm.networks import EnsembleLoss  # noqa: E402
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier  # noqa: E402

# name: (timesteps, number of highest-resolution decoder stages, patch size[, members one at a time[, nnU-Net's own
# train_step]]); the first pixel row is the default. nnU-Net's step (as under DDP or torch.compile) trains the members
# one at a time under activation checkpointing, the trainer's own interleaves their forward and backward passes.
VARIANTS = {
    "stock nnU-Net": None,
    "pixel classifier (default: 3 timesteps, 3 stages)": ((50, 150, 250), 3, 128),
    "pixel classifier (default), members checkpointed (nnU-Net's train_step)": ((50, 150, 250), 3, 128, True, True),
    "pixel classifier (default), members not checkpointed": ((50, 150, 250), 3, 128, False),
    "pixel classifier, 1 timestep": ((50,), 3, 128),
    "pixel classifier, 2 timesteps": ((50, 150), 3, 128),
    "pixel classifier, 2 stages": ((50, 150, 250), 2, 128),
    "pixel classifier, 1 stage": ((50, 150, 250), 1, 128),
    "stock nnU-Net, 64 px": 64,
    "pixel classifier (default), 64 px": ((50, 150, 250), 3, 64),
}


def pixel_classifier(timesteps, num_stages, checkpoint_members=True):
    trainer = type("Variant", (nnUNetTrainerDDPMPixelClassifier,),
                   {"feature_timesteps": timesteps, "feature_stages": tuple(range(-num_stages, 0)),
                    "checkpoint_members": checkpoint_members})
    return trainer.build_network_architecture(None, PLANS_2D, CHANNELS, CLASSES, False)


def pixel_step(network, device, batch_size, patch_size, nnunet_step=False):
    """The trainer's ``train_step`` (per-member DC+CE, no deep supervision, clipping, Adam on the head), or nnU-Net's,
    on a trainer that holds what nnU-Net's ``initialize`` would give it. In float32 on every device, as the stock
    step here runs (nnU-Net's float16 autocast on CUDA is off: like against like)."""
    trainer = nnUNetTrainerDDPMPixelClassifier.__new__(nnUNetTrainerDDPMPixelClassifier)
    trainer.network, trainer.device, trainer.is_ddp, trainer.grad_scaler = network, device, False, None
    trainer.autocast = contextlib.nullcontext
    trainer.loss = EnsembleLoss(DC_and_CE_loss({'batch_dice': True, 'smooth': 1e-5, 'do_bg': False, 'ddp': False}, {},
                                               weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss))
    trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = 1e-3, 0.0, 100
    trainer.optimizer, _ = trainer.configure_optimizers()
    batch = {"data": torch.randn(batch_size, CHANNELS, *patch_size, device=device),
             "target": torch.randint(0, CLASSES, (batch_size, 1, *patch_size), device=device).float()}
    if not nnunet_step:
        return lambda: trainer.train_step(batch)

    def step():  # nnU-Net's train_step (members checkpointed in the forward pass), without its CUDA autocast
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.loss(network(batch["data"]), batch["target"]).backward()
        trainer.clip_and_step(12)
    return step


def forward_step(network, device, size):
    """One sliding-window tile as nnU-Net's predictor runs it: batch 1, eval, no grad."""
    x = torch.randn(1, CHANNELS, size, size, device=device)

    @torch.no_grad()
    def step():
        network(x)
    return step


def build(name, device, mode):
    spec = VARIANTS[name]
    if spec is None or isinstance(spec, int):
        size = spec or 128
        network = nnUNetTrainer.build_network_architecture(None, PLANS_2D, CHANNELS, CLASSES, mode == "train")
        network = network.to(device)
        return segmentation_step(network, device) if mode == "train" and size == 128 else \
            _stock_step(network, device, size, mode)
    timesteps, num_stages, size, checkpoint_members, nnunet_step = (*spec, True, False)[:5]
    network = pixel_classifier(timesteps, num_stages, checkpoint_members).to(device)
    network.train(mode == "train")
    return pixel_step(network, device, BATCH, (size, size), nnunet_step) if mode == "train" else \
        forward_step(network, device, size)


def _stock_step(network, device, size, mode):
    if mode == "forward":
        network.eval()
        return forward_step(network, device, size)
    # training at another patch size, without deep supervision
    network.decoder.deep_supervision = False
    loss = DC_and_CE_loss({'batch_dice': True, 'smooth': 1e-5, 'do_bg': False, 'ddp': False}, {}, weight_ce=1,
                          weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(BATCH, CHANNELS, size, size, device=device)
    target = torch.randint(0, CLASSES, (BATCH, 1, size, size), device=device).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(network(x), target).backward()
        optimizer.step()
    return step


def device_name(device):
    return torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"


def measure_times(args, device):
    result = {"device": device_name(device), "torch_threads": torch.get_num_threads(), "batch": BATCH,
              "repeats": args.repeats, "warmup": args.warmup, "rows": []}
    for mode in args.steps:
        torch.manual_seed(0)
        steps = {name: build(name, device, mode) for name in args.variants}
        times = {name: [] for name in steps}
        for repeat in tqdm(range(args.warmup + args.repeats), desc=f"{mode}: interleaved repeats"):
            for name, step in steps.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if repeat >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        for name, t in times.items():
            reference = "stock nnU-Net, 64 px" if "64 px" in name else "stock nnU-Net"
            result["rows"].append({"mode": mode, "variant": name, "median_s": statistics.median(t),
                                   "ratio_to_stock": statistics.median(t) / statistics.median(times[reference]),
                                   "times_s": t})
    print(f"\n{result['device']}, {result['torch_threads']} threads; training batch {BATCH}, forward batch 1; "
          f"median of {args.repeats} after {args.warmup} warm-up; ratio to stock at the same patch size")
    print("| step | variant | s | x stock |\n|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['mode']} | {row['variant']} | {row['median_s']:.3f} | {row['ratio_to_stock']:.2f} |")
    return result


def measure_memory(args, device):
    result = {"device": device_name(device), "batch": BATCH, "rows": []}
    for mode in args.steps:
        for name in tqdm(args.variants, desc=f"{mode}: one process per variant"):
            output = subprocess.run([sys.executable, __file__, "--only", name, "--mode", mode, "--device",
                                     args.device], capture_output=True, text=True, check=True).stdout
            result["rows"].append({"mode": mode, "variant": name,
                                   "peak_bytes": json.loads(output.strip().splitlines()[-1])["peak_bytes"]})
    for row in result["rows"]:
        reference = "stock nnU-Net, 64 px" if "64 px" in row["variant"] else "stock nnU-Net"
        stock = next(r for r in result["rows"] if r["mode"] == row["mode"] and r["variant"] == reference)
        row["ratio_to_stock"] = row["peak_bytes"] / stock["peak_bytes"]
    print("| step | variant | peak (GiB) | x stock |\n|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['mode']} | {row['variant']} | {row['peak_bytes'] / 2 ** 30:.2f} | "
              f"{row['ratio_to_stock']:.2f} |")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="peak memory per variant instead of times")
    parser.add_argument("--steps", nargs="+", choices=("train", "forward"), default=("train", "forward"),
                        help="which steps to measure (default: both)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: one variant's peak
    parser.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which variants to measure (default: all; include the stock rows they are compared to)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.only is not None:
        step = build(args.only, device, args.mode)
        for _ in range(2):
            step()
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
        print(json.dumps({"peak_bytes": peak}))
        return
    result = measure_memory(args, device) if args.memory else measure_times(args, device)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
