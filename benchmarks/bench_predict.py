"""Wall time of ``nnUNetv2_predict`` for trained models of different trainers on the same folder of test cases.

The commands run exactly as a user types them (process start, model loading, preprocessing, sliding window with the
default mirroring, export), interleaved (A B C A B C ...), and the medians are compared with the first trainer's (the
stock nnU-Net). Needs trained models in $nnUNet_results, e.g. those of ``nnUNetv2_ddpm_demo``:

    export nnUNet_raw=nnunet_ddpm_demo/nnUNet_raw nnUNet_preprocessed=nnunet_ddpm_demo/nnUNet_preprocessed \\
           nnUNet_results=nnunet_ddpm_demo/nnUNet_results nnUNet_extTrainer=$(nnUNetv2_ddpm_trainer_dir)
    python benchmarks/bench_predict.py -d 990 -c 2d -i TEST_IMAGES -f 0 \\
        -tr nnUNetTrainer_demo_10labels nnUNetTrainerDDPMFinetune_demo_10labels \\
            nnUNetTrainerDDPMPixelClassifier_demo_10labels --out documentation/benchmarks/predict_cpu.json
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tqdm import tqdm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True)
    parser.add_argument("-c", default="2d")
    parser.add_argument("-i", required=True, help="folder of test images")
    parser.add_argument("-f", default="0", help="fold of every model")
    parser.add_argument("-tr", nargs="+", required=True, help="trainers; the first is the reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more nnUNetv2_predict arguments")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cases = len({f.name.rsplit("_", 1)[0] for f in Path(args.i).iterdir()})
    env = dict(os.environ, nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "0"))
    times = {trainer: [] for trainer in args.tr}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in tqdm(range(args.warmup + args.repeats), desc="interleaved repeats"):
            for trainer in args.tr:
                output = Path(scratch) / trainer
                shutil.rmtree(output, ignore_errors=True)
                command = ["nnUNetv2_predict", "-i", args.i, "-o", str(output), "-d", args.d, "-c", args.c, "-f",
                           args.f, "-tr", trainer, "-device", args.device, "-npp", "1", "-nps", "1", *args.extra]
                start = time.perf_counter()
                subprocess.run(command, env=env, check=True, capture_output=True)
                if repeat >= args.warmup:
                    times[trainer].append(time.perf_counter() - start)
    reference = statistics.median(times[args.tr[0]])
    rows = [{"trainer": t, "median_s": statistics.median(v), "ratio": statistics.median(v) / reference, "times_s": v}
            for t, v in times.items()]
    result = {"machine": platform.processor() or platform.machine(), "device": args.device, "cases": cases,
              "dataset": args.d, "configuration": args.c, "extra_arguments": args.extra, "repeats": args.repeats,
              "warmup": args.warmup, "rows": rows}
    print()
    print(f"nnUNetv2_predict on {cases} cases, device {args.device}, median of {args.repeats} after {args.warmup} "
          f"warm-up\n| trainer | s | s / case | x {args.tr[0]} |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['trainer']} | {row['median_s']:.1f} | {row['median_s'] / cases:.2f} | {row['ratio']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
