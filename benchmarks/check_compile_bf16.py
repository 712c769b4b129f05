"""Do the plugin's networks work under torch.compile and bf16 autocast, and how far do their outputs move?

For each network (fine-tune U-Net, pretraining denoiser, pixel classifier; stock nnU-Net as the reference) on the
plans of ``bench_training_step.py``: the eager fp32 output is compared with the torch.compile output (fp32) and with
the bf16-autocast output, as the largest absolute difference relative to the output's largest magnitude, and one
backward pass is run through each. Meant for a GPU (``--device cuda``); on CPU it runs too, slowly.

    python benchmarks/check_compile_bf16.py --device cuda --out documentation/benchmarks/compile_bf16_cuda.json
"""
import argparse
import json
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from common import BATCH, CHANNELS, CLASSES, PLANS_2D  # noqa: E402

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune  # noqa: E402
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier  # noqa: E402
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain  # noqa: E402


def networks(device):
    """name -> (network, callable giving its main output tensor); the plugin's networks first, the stock one last (a
    run cut short by a time limit has checked what has not been checked before)."""
    t = torch.randint(0, 1000, (BATCH,), device=device)
    stock = nnUNetTrainer.build_network_architecture(None, PLANS_2D, CHANNELS, CLASSES, True)
    finetune = nnUNetTrainerDDPMFinetune.build_network_architecture(None, PLANS_2D, CHANNELS, CLASSES, True)
    denoiser = nnUNetTrainerDDPMPretrain.build_network_architecture(None, PLANS_2D, CHANNELS, CHANNELS)
    pixel = nnUNetTrainerDDPMPixelClassifier.build_network_architecture(None, PLANS_2D, CHANNELS, CLASSES, False)
    return {"pixel classifier": (pixel, lambda n, x: n(x)),
            "DDPM denoiser (pretraining)": (denoiser, lambda n, x: n(x, t)),
            "DDPM fine-tune": (finetune, lambda n, x: n(x)[0]),
            "stock nnU-Net": (stock, lambda n, x: n(x)[0])}


def relative_difference(a, b):
    return float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-12))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    parser.add_argument("--networks", nargs="+", default=None, metavar="WORD",
                        help="only the networks whose name contains one of these words (e.g. pixel denoiser)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, 128, 128, device=device)
    rows = []
    for name, (network, call) in networks(device).items():
        if args.networks and not any(word in name for word in args.networks):
            continue
        network = network.to(device).eval()  # deterministic: no fine-tuning noise, the pixel head's running stats
        row = {"network": name}
        with torch.no_grad():
            reference = call(network, x)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                row["bf16_rel_max_diff"] = relative_difference(reference, call(network, x))
        try:
            start = time.perf_counter()
            compiled = torch.compile(network)
            with torch.no_grad():
                out = call(compiled, x)
            row["compile_s"] = time.perf_counter() - start
            row["compile_rel_max_diff"] = relative_difference(reference, out)
            with torch.autocast(device.type, dtype=torch.bfloat16):  # a training step's graphs compile too
                loss = call(compiled.train(), x).float().square().mean()
            loss.backward()
            row["compile_bf16_backward_ok"] = bool(torch.isfinite(loss))
        except Exception as error:  # record, do not hide: this is what the check is for
            row["compile_error"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch": BATCH, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
