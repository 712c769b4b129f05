"""One 3D sliding-window tile (batch 1, eval, no gradients): stock nnU-Net against the pixel classifier's prediction.

The network is what nnU-Net's planner makes for a cubic patch (``bench_training_step.planned_configuration``). Variants:
``stock`` (nnU-Net's U-Net), ``members`` (the pixel classifier as it predicts: member by member, BatchNorms folded),
``fused`` (the same weights through the fused head, ``MLPEnsembleHead._fused``, the formulation that member-by-member
prediction replaced). Each variant runs alone in a fresh process: peak RSS (``VmHWM``) and the median time of the tiles after one
warm-up tile.

    python benchmarks/bench_pixel_tile_3d.py --edge 96 --out documentation/benchmarks/pixel_tile_3d96_cpu.json
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tqdm import tqdm

from common import CHANNELS, CLASSES, peak_rss, planned_configuration  # noqa: E402

from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier  # noqa: E402

VARIANTS = ("stock", "members", "fused")


def measure(edge: int, variant: str, tiles: int) -> dict:
    plans = planned_configuration([edge] * 3, 2)
    trainer = nnUNetTrainer if variant == "stock" else nnUNetTrainerDDPMPixelClassifier
    network = trainer.build_network_architecture(None, plans, CHANNELS, CLASSES, False).eval()
    if variant == "fused":
        head = network.head
        head.forward = head._fused
    x = torch.randn(1, CHANNELS, edge, edge, edge)
    times = []
    with torch.no_grad():
        for _ in range(tiles + 1):
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
    return {"variant": variant, "edge": edge, "median_s": statistics.median(times[1:]), "times_s": times,
            "peak_bytes": peak_rss()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge", type=int, default=96, help="cubic patch edge (default 96)")
    parser.add_argument("--tiles", type=int, default=2, help="timed tiles after one warm-up tile")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: one variant in this process
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.edge, args.only, args.tiles)))
        return
    rows = []
    for variant in tqdm(args.variants, desc="one process per variant"):
        output = subprocess.run([sys.executable, __file__, "--edge", str(args.edge), "--tiles", str(args.tiles),
                                 "--only", variant], capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    stock = next((r for r in rows if r["variant"] == "stock"), None)
    print(f"| variant ({args.edge}^3 tile) | s | x stock | peak RSS (GiB) | x stock |\n|---|---|---|---|---|")
    for row in rows:
        t_ratio = row["median_s"] / stock["median_s"] if stock else float("nan")
        m_ratio = row["peak_bytes"] / stock["peak_bytes"] if stock else float("nan")
        print(f"| {row['variant']} | {row['median_s']:.2f} | {t_ratio:.2f} | {row['peak_bytes'] / 2 ** 30:.2f} | "
              f"{m_ratio:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "rows": rows},
                                             indent=2))


if __name__ == "__main__":
    main()
