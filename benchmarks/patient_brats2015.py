"""The patient walk-through of documentation/patient.md on the real BraTS 2015 sample, measured.

For one patient of DeepMedic's BraTS 2015 sample (four patients): annotate N tumour slices by taking the ground truth on
them (evenly spread through the tumour's extent), run ``nnUNetv2_ddpm_segment_patient`` with every method, and compare
the whole segmented volume with the full ground truth (Dice per BraTS region), also on the slices nobody annotated.
The DDPM pretraining runs once, in the first run; later runs reuse its checkpoint with ``-pretrained_weights`` (it
saw the same slices: every slice of the patient). Writes ``documentation/benchmarks/patient_brats2015.json``.

    python benchmarks/patient_brats2015.py -o /tmp/patient_runs [--counts 3 5] [--size 128 128]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from nnunet_ddpm.dataset_conversion.brats import convert_brats  # noqa: E402
from nnunet_ddpm.patient.evaluation import dice_per_label  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "brats2015_deepmedic_sample"


def tumour_slices(labels: np.ndarray, count: int) -> list:
    """``count`` slices evenly spread through the tumour's extent along axis 0 (quantiles (k+1)/(count+1))."""
    tumour = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    return sorted({int(tumour[int(round((k + 1) / (count + 1) * (len(tumour) - 1)))]) for k in range(count)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", required=True, help="working folder")
    parser.add_argument("--sample", default=str(SAMPLE))
    parser.add_argument("--patient", default=None, help="default: the first patient of the sample")
    parser.add_argument("--counts", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--methods", nargs="+", default=["finetune", "pixel", "baseline"])
    parser.add_argument("--size", nargs=2, default=["128", "128"])
    parser.add_argument("--budget", nargs=3, default=None, metavar=("EPOCHS", "PRETRAIN_EPOCHS", "ITERATIONS"),
                        help="default: the command's")
    parser.add_argument("--result", default=str(REPO / "documentation" / "benchmarks" / "patient_brats2015.json"))
    args = parser.parse_args()
    work = Path(args.o).resolve()
    raw = work / "raw" / "Dataset985_BraTS2015Sample"
    if not (raw / "dataset.json").is_file():
        convert_brats([args.sample], str(work / "raw"), 985, "BraTS2015Sample", channels=["flair", "t1ce"])
    patient = args.patient or sorted(p.name for p in (raw / "labelsTr").iterdir())[0][:-len(".nii.gz")]
    label_file = raw / "labelsTr" / f"{patient}.nii.gz"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    regions = json.loads((raw / "dataset.json").read_text())["labels"]
    budget = [] if args.budget is None else ["--epochs", args.budget[0], "--pretrain-epochs", args.budget[1],
                                             "--iterations", args.budget[2]]
    results = {"patient": patient, "volume_shape": list(truth.shape), "size": args.size, "runs": []}
    pretrained = None
    for count in args.counts:
        annotated = tumour_slices(truth, count)
        output = work / f"{patient}_{count}slices"
        command = [sys.executable, "-m", "nnunet_ddpm.patient.segment_patient",
                   "-i", str(raw / "imagesTr" / f"{patient}_0000.nii.gz"),
                   str(raw / "imagesTr" / f"{patient}_0001.nii.gz"), "-a", str(label_file),
                   "--slices", *map(str, annotated), "--require-foreground",
                   "-dataset_json", str(raw / "dataset.json"),
                   "--methods", *args.methods, "--size", *args.size, *budget, "-device", "cpu", "-o", str(output)]
        if pretrained:
            command += ["-pretrained_weights", pretrained]
        print("$", " ".join(command), flush=True)
        start = time.time()
        subprocess.run(command, check=True, env=os.environ | {"PYTHONPATH": str(REPO)})
        seconds = time.time() - start
        summary = json.loads((output / "summary.json").read_text())
        unannotated = [i for i in range(len(truth)) if i not in annotated]
        for method in args.methods:
            segmentation = sitk.GetArrayFromImage(sitk.ReadImage(summary["methods"][method]["segmentation"]))
            results["runs"].append({
                "annotated_slices": annotated, "method": method, "budget": summary["budget"],
                "pretrained_here": pretrained is None,
                "dice_whole_volume": dice_per_label(segmentation, truth, regions),
                "dice_unannotated_slices": dice_per_label(segmentation, truth, regions, unannotated),
                "model_dice_on_annotated_slices": summary["methods"][method]["dice_on_annotated_slices"],
                "wall_seconds_of_run": round(seconds)})
            print(json.dumps(results["runs"][-1]), flush=True)
        pretraining = output / "nnUNet_results" / "Dataset800_Patient" / \
            "nnUNetTrainerDDPMPretrain_demo__nnUNetPlans__2d" / "fold_all" / "checkpoint_final.pth"
        if pretrained is None and pretraining.is_file():
            pretrained = str(pretraining)
        Path(args.result).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
