"""torch.profiler view of one training step: how many operators (on a GPU: kernels) each variant launches, and which.

On a GPU a 128 x 128 nnU-Net step is bound by kernel launches, not arithmetic (``documentation/performance.md``), so
the count of launched kernels explains a step-time ratio better than FLOPs. On the CPU the script counts leaf
operators (those that call no other operator) that compute, outside clipping, optimizer step and EMA update: what becomes a
kernel on a GPU. The table lists, per
variant, the counts and the operator types whose counts differ most from stock nnU-Net's.

    python benchmarks/profile_step.py --out documentation/benchmarks/profile_step_cpu.json
    python benchmarks/profile_step.py --device cuda --size 128 --batch 12 --trace /tmp/traces   # + Chrome traces
"""
import argparse
import collections
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import CHANNELS, CLASSES, denoising_step, planned_configuration, segmentation_step  # noqa

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune  # noqa: E402
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain  # noqa: E402


def steps(plans, device):
    def segmentation(trainer):
        network = trainer.build_network_architecture(None, plans, CHANNELS, CLASSES, True).to(device)
        return segmentation_step(network, device, plans=plans)

    def pretraining():
        denoiser, ema = (nnUNetTrainerDDPMPretrain.build_network_architecture(None, plans, CHANNELS, CHANNELS)
                         .to(device) for _ in range(2))
        return denoising_step(denoiser, device, lambda n, x, t: n(x, t), ema, plans=plans)
    return {"stock nnU-Net": segmentation(nnUNetTrainer), "DDPM fine-tune": segmentation(nnUNetTrainerDDPMFinetune),
            "DDPM pretraining (with EMA)": pretraining()}


# leaf operators that only make tensor metadata (views, allocations, no-op casts): no kernel on a GPU
NO_KERNEL = {"aten::" + op for op in (
    "as_strided", "view", "_reshape_alias", "reshape", "empty", "empty_strided", "empty_like", "resize_", "detach",
    "alias", "t", "transpose", "permute", "expand", "slice", "select", "unsqueeze", "squeeze", "_unsafe_view",
    "split", "split_with_sizes", "unbind", "resolve_conj", "resolve_neg", "to", "lift_fresh", "is_nonzero",
    "_local_scalar_dense", "item", "size", "stride", "result_type")}


def in_optimizer(event):
    while event is not None:
        if event.name.startswith("Optimizer."):
            return True
        event = event.cpu_parent
    return False


def count(prof, device):
    """Leaf CPU operators that compute, by name, outside gradient clipping, optimizer step and EMA update; on a GPU
    also the number of device kernels of the whole step.

    Clipping, optimizer and EMA are left out of the operator counts: on a GPU they run as a few multi-tensor (foreach)
    kernels, on the CPU as a handful of operators per parameter tensor, which would count the plugin's extra small
    tensors (the per-norm projections) many times over.
    """
    leaves = collections.Counter(e.name for e in prof.events()
                                 if e.device_type == torch.autograd.DeviceType.CPU and not e.cpu_children
                                 and e.name.startswith("aten::") and e.name not in NO_KERNEL
                                 and not in_optimizer(e))
    kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) \
        if device.type == "cuda" else None
    return leaves, kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128, help="2D patch edge (the plans follow nnU-Net's rule)")
    parser.add_argument("--batch", type=int, default=2, help="counts do not depend on it; small is quick on a CPU")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--trace", default=None, help="folder for one Chrome trace per variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    plans = planned_configuration((args.size, args.size), args.batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    results = {}
    for name, step in steps(plans, device).items():
        for _ in range(3):  # warm-up: lazy initialisation, optimizer state, cuDNN autotuning
            step()
        with profile(activities=activities) as prof:
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        leaves, kernels = count(prof, device)
        results[name] = {"leaf_operators": sum(leaves.values()), "kernels": kernels, "by_operator": dict(leaves)}
        if args.trace:
            Path(args.trace).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(Path(args.trace) / f"{name.split(' (')[0].replace(' ', '_')}.json"))

    stock = results["stock nnU-Net"]
    print(f"\n2D {args.size} x {args.size}, batch {args.batch}, {device}: one training step (forward, loss, backward, "
          "optimizer)")
    print("| variant | computing operators (without clip, optimizer, EMA) | x stock | kernels | x stock | largest differences to stock |\n"
          "|---|---|---|---|---|---|")
    for name, result in results.items():
        diff = collections.Counter(result["by_operator"])
        diff.subtract(stock["by_operator"])
        largest = ", ".join(f"{op.removeprefix('aten::')} {n:+d}" for op, n in
                            sorted(diff.items(), key=lambda item: -abs(item[1]))[:6] if n)
        result["difference_to_stock"] = {op: n for op, n in diff.items() if n}
        kernels = "-" if result["kernels"] is None else result["kernels"]
        kernel_ratio = "-" if result["kernels"] is None else f"{result['kernels'] / stock['kernels']:.2f}"
        print(f"| {name} | {result['leaf_operators']} | {result['leaf_operators'] / stock['leaf_operators']:.2f} | "
              f"{kernels} | {kernel_ratio} | {largest or '-'} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": str(device), "size": args.size, "batch": args.batch,
                                              "variants": results}, indent=2))


if __name__ == "__main__":
    main()
