"""DDPM weights through nnU-Net's development branch, measured: ``nnUNetv2_train_pretrained``'s trainer from the file
that ``nnUNetv2_ddpm_export_weights`` writes, against the same trainer ``--from_scratch``, against this plugin's
fine-tune from the same pretraining and against the supervised nnU-Net, on a 3D phantom or on real BraTS patients,
same labelled cases, same iterations. Paired per-case Dice differences (per label or region and their mean) with a
95 % bootstrap interval over the evaluated cases.

Runs in the environment that ``benchmarks/dev_branch_check.sh`` builds (the branch's nnunetv2 and this repository):

    /tmp/nnunet_dev_branch_check/venv/bin/python benchmarks/dev_branch_comparison.py -o /tmp/dev_branch_comparison
    ... -o /tmp/dev_branch_brats --brats $nnUNet_raw/Dataset600_BraTSReal    # nnUNetv2_ddpm_convert_brats's output

On BraTS, every patient is shrunk to 5 mm voxels (block means of the 1 mm images, the label of each block's centre),
which makes a 3D nnU-Net trainable on a CPU; the labelled patients are a seeded draw, the others are evaluated. The
pretraining sees every case's images (no labels), the evaluated ones included.

The branch's trainers run 1,000 (or 150, 300) epochs of 250 iterations and are found in nnunetv2's own folder only;
this script trains ``PretrainedTrainer`` with the comparison's budget (``BudgetedPretrainedTrainer``: the epochs and
iterations of the other methods, the branch's warm-up kept at the same share of the epochs, 50 of 1,000) through the
branch's own ``train_pretrained``, which it lets find that class. Writes ``comparison.json`` into the output folder.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

PHANTOM = 977, "PhantomDevBranch"
BRATS = 978, "BraTSDevBranch"
CHANNELS = 2


def sh(command: list, env: dict, log: Path) -> None:
    print("$", " ".join(map(str, command)), flush=True)
    with open(log, "a") as out:
        if subprocess.run(list(map(str, command)), env=env, stdout=out, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"{command[0]} failed: see {log}")


def budgeted_pretrained_trainer(epochs: int, iterations: int):
    from nnunetv2.training.nnUNetTrainer.pretraining.pretrainedTrainer import PretrainedTrainer

    class BudgetedPretrainedTrainer(PretrainedTrainer):
        """The branch's fine-tuning at the comparison's budget: only the epochs, iterations and warm-up length change."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=None):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs, self.num_iterations_per_epoch = epochs, iterations
            self.warmup_duration_whole_net = max(1, round(epochs * 50 / 1000))

    return BudgetedPretrainedTrainer


def train_with_the_branch(dataset_id: int, fold: int, from_scratch: bool, plans: str, epochs: int,
                          iterations: int) -> None:
    """The branch's ``train_pretrained`` (what ``nnUNetv2_train_pretrained`` calls), finding the budgeted trainer."""
    import torch
    from nnunetv2.run import run_training_from_pretrained as branch
    trainer = budgeted_pretrained_trainer(epochs, iterations)
    find = branch.recursive_find_python_class
    branch.recursive_find_python_class = lambda folder, name, module: (
        trainer if name == trainer.__name__ else find(folder, name, module))
    branch.train_pretrained(str(dataset_id), "3d_fullres", fold, trainer.__name__, plans, from_scratch,
                            device=torch.device("cpu"))


def case_dice(validation: Path, names: dict) -> dict:
    """{case: {label or region name: Dice, "mean": their mean}} of a model's validation (nnU-Net's
    summary.json; a label absent from both reference and prediction has no Dice and is left out of the mean)."""
    summary = json.loads((validation / "summary.json").read_text())
    dice = {}
    for case in summary["metric_per_case"]:
        per_label = {names[key]: float(m["Dice"]) for key, m in case["metrics"].items()}
        with np.errstate(invalid="ignore"):
            dice[Path(case["prediction_file"]).name] = per_label | {"mean": float(np.nanmean(list(per_label.values())))}
    return dice


def label_names(dataset_json: dict) -> dict:
    """{summary.json's key of a label or region: its name in dataset.json}"""
    return {str(tuple(v)) if isinstance(v, list) else str(v): name
            for name, v in dataset_json["labels"].items() if name != "background"}


def write_shrunk_brats(source: Path, target: Path, dataset_id: int, name: str, factor: int) -> None:
    """A copy of a BraTS raw dataset at ``factor`` times the voxel size: each image block-averaged (SimpleITK's
    BinShrink), each label map sampled at the centres of those blocks."""
    import SimpleITK as sitk
    from nnunet_ddpm.files import folder_written_atomically
    with folder_written_atomically(str(target / f"Dataset{dataset_id}_{name}")) as partial:  # a rerun finds all or none
        folder = Path(partial)
        for sub in ("imagesTr", "labelsTr"):
            (folder / sub).mkdir()
        for label_file in sorted((source / "labelsTr").glob("*.nii.gz")):
            case = label_file.name[:-len(".nii.gz")]
            grid = None
            for image_file in sorted((source / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz")):
                grid = sitk.BinShrink(sitk.ReadImage(str(image_file), sitk.sitkFloat32), [factor] * 3)
                sitk.WriteImage(grid, str(folder / "imagesTr" / image_file.name))
            labels = sitk.Resample(sitk.ReadImage(str(label_file)), grid, sitk.Transform(), sitk.sitkNearestNeighbor)
            sitk.WriteImage(labels, str(folder / "labelsTr" / label_file.name))
        dataset_json = json.loads((source / "dataset.json").read_text()) | {"name": name}
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", required=True, help="working folder; a rerun goes on where it stopped (a model with a "
                                                  "validation summary, the pretraining, the datasets are kept)")
    parser.add_argument("--brats", help="a raw BraTS dataset folder written by nnUNetv2_ddpm_convert_brats: compare on "
                                        "its patients instead of the phantom")
    parser.add_argument("--shrink", type=int, default=5, help="--brats: voxels this many times larger (default: 5)")
    parser.add_argument("--cases", type=int, default=20, help="phantom cases (default: %(default)s)")
    parser.add_argument("--labelled", type=int, default=6, help="labelled training cases; the others are evaluated")
    parser.add_argument("--draws", type=int, default=1,
                        help="runs, each on its own seeded draw of labelled cases (nnU-Net fold k is draw k); every "
                             "run starts from the same pretraining")
    parser.add_argument("--size", type=int, nargs=3, default=[24, 32, 32])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=25, help="per epoch")
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--report-only", action="store_true", help="write comparison.json from the trained models")
    parser.add_argument("--in-process-branch", choices=["pretrained", "scratch"], help=argparse.SUPPRESS)
    parser.add_argument("--fold", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    work = Path(args.o).resolve()
    ptplans_file = work / "ptplans.txt"
    dataset_id, name = BRATS if args.brats else PHANTOM
    if args.in_process_branch:  # a child: one branch training, so each gets a fresh process and log
        train_with_the_branch(dataset_id, args.fold, args.in_process_branch == "scratch",
                              ptplans_file.read_text().strip(), args.epochs, args.iterations)
        return

    if not args.report_only:
        train_every_model(args, work, ptplans_file, dataset_id, name)
    report(args, work, ptplans_file.read_text().strip(), f"Dataset{dataset_id}_{name}")


def labelled_draws(cases: list, labelled: int, draws: int) -> list:
    """nnU-Net's splits: fold k trains on draw k (seed k) of ``labelled`` cases and validates on all the others."""
    splits = []
    for draw in range(draws):
        train = sorted(np.random.default_rng(draw).permutation(cases)[:labelled].tolist())
        splits.append({"train": train, "val": [c for c in cases if c not in train]})
    return splits


def train_every_model(args, work: Path, ptplans_file: Path, dataset_id: int, name: str) -> None:
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    from nnunet_ddpm.steps import working_folder_environment
    env = working_folder_environment(  # nnU-Net's folders in the work folder, the plugin's trainers findable
        work, folder_names=("raw", "preprocessed", "results"), this_copy_first=False,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),  # this venv's console scripts
        nnUNet_n_proc_DA="1", OMP_WAIT_POLICY="PASSIVE", nnUNet_ddpm_demo_epochs=str(args.epochs),
        nnUNet_ddpm_demo_iterations=str(args.iterations), nnUNet_ddpm_demo_pretrain_epochs=str(args.pretrain_epochs))
    env.pop("nnUNet_ddpm_demo_skip_validation", None)  # the comparison reads each model's validation
    log = work / "commands.log"
    dataset = f"Dataset{dataset_id}_{name}"
    results = work / "results" / dataset

    if not (work / "preprocessed" / dataset / "nnUNetPlans.json").is_file():
        for folder in ("raw", "preprocessed", "results"):
            (work / folder).mkdir(parents=True, exist_ok=True)
        if not (work / "raw" / dataset).is_dir():
            if args.brats:
                write_shrunk_brats(Path(args.brats), work / "raw", dataset_id, name, args.shrink)
            else:
                write_phantom_dataset(str(work / "raw"), dataset_id, name, num_cases=args.cases,
                                      size=tuple(args.size), num_channels=CHANNELS)
        sh(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", "1", "-npfp", "1"], env, log)
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (work / "raw" / dataset / "imagesTr").glob("*_0000.nii.gz"))
    splits = labelled_draws(cases, args.labelled, args.draws)
    (work / "preprocessed" / dataset / "splits_final.json").write_text(json.dumps(splits, indent=1))

    pretraining = results / "nnUNetTrainerDDPMPretrain_demo__nnUNetPlans__3d_fullres" / "fold_all"
    if not (pretraining / "checkpoint_final.pth").is_file():
        sh(["nnUNetv2_train", dataset_id, "3d_fullres", "all", "-tr", "nnUNetTrainerDDPMPretrain_demo", "-device",
            "cpu"], env, log)
    if not ptplans_file.is_file():
        exported = work / "ddpm_t50.pth"
        sh(["nnUNetv2_ddpm_export_weights", "-i", pretraining / "checkpoint_final.pth", "-o", exported], env, log)
        sh(["nnUNetv2_preprocess_like_nnssl", "-d", dataset_id, "-n", "DDPM", "-pc", exported, "-am",
            "default_nnunet"], env, log)
        ptplans = [p.stem for p in (work / "preprocessed" / dataset).glob("ptPlans__DDPM*.json")]
        if len(ptplans) != 1:
            raise SystemExit(f"Expected one ptPlans__DDPM*.json, found {ptplans}")
        ptplans_file.write_text(ptplans[0])

    folders = model_folders(results, ptplans_file.read_text().strip())
    for fold in range(args.draws):
        for method, command in (
                ("supervised nnU-Net", ["nnUNetv2_train", dataset_id, "3d_fullres", fold, "-tr", "nnUNetTrainer_demo",
                                        "-device", "cpu"]),
                ("plugin fine-tune", ["nnUNetv2_train", dataset_id, "3d_fullres", fold, "-tr",
                                      "nnUNetTrainerDDPMFinetune_demo", "-device", "cpu"]),
                *[(f"train_pretrained{' --from_scratch' if mode == 'scratch' else ''}",
                   [sys.executable, __file__, "-o", work, "--epochs", args.epochs, "--iterations", args.iterations,
                    *(["--brats", args.brats] if args.brats else []), "--fold", fold, "--in-process-branch", mode])
                  for mode in ("pretrained", "scratch")]):
            if not (folders[method] / f"fold_{fold}" / "validation" / "summary.json").is_file():
                sh(command, env, log)


def model_folders(results: Path, ptplans: str) -> dict:
    return {"supervised nnU-Net": results / "nnUNetTrainer_demo__nnUNetPlans__3d_fullres",
            "plugin fine-tune": results / "nnUNetTrainerDDPMFinetune_demo__nnUNetPlans__3d_fullres",
            "train_pretrained": results / f"BudgetedPretrainedTrainer__{ptplans}__3d_fullres",
            "train_pretrained --from_scratch": results / f"BudgetedPretrainedTrainer__{ptplans}__from_scratch__3d_fullres"}


def report(args, work: Path, ptplans: str, dataset: str) -> None:
    """Per method and label (or region): a (draws, cases) array of Dice, NaN where the case was labelled in that draw;
    paired differences over draws and cases (``run_aware_difference``: cases, then draws, resampled)."""
    from nnunet_ddpm.comparison.statistics import run_aware_difference
    folders = model_folders(work / "results" / dataset, ptplans)
    names = label_names(json.loads((work / "raw" / dataset / "dataset.json").read_text()))
    draws = sorted(int(summary.parts[-3][len("fold_"):])
                   for summary in folders["supervised nnU-Net"].glob("fold_*/validation/summary.json"))
    dice = {method: [case_dice(folder / f"fold_{k}" / "validation", names) for k in draws]
            for method, folder in folders.items()}
    cases = sorted(set().union(*dice["supervised nnU-Net"]))
    regions = [*names.values(), "mean"]
    values = {method: {r: np.array([[run[c][r] if c in run else np.nan for c in cases] for run in runs])
                       for r in regions} for method, runs in dice.items()}
    pairs = [("train_pretrained", "train_pretrained --from_scratch"), ("train_pretrained", "plugin fine-tune"),
             ("plugin fine-tune", "supervised nnU-Net"), ("train_pretrained", "supervised nnU-Net")]
    summary = {"settings": vars(args) | {"branch_plans": ptplans, "draws": draws, "evaluated_cases": len(cases)},
               "note": "dropped_pairs counts the undefined values of the evaluated cases: a case's draws in which it "
                       "was labelled, and Dice of a label empty in both reference and prediction",
               "mean_dice": {m: {r: float(np.nanmean(v)) for r, v in by_region.items()}
                             for m, by_region in values.items()},
               "paired": [{"method": a, "against": b, "region": r,
                           **run_aware_difference(values[a][r], values[b][r], paired_runs=True)}
                          for a, b in pairs for r in regions]}
    (work / "comparison.json").write_text(json.dumps(summary, indent=1))
    plot_paired(summary["paired"], regions, f"{len(draws)} draw{'s' * (len(draws) > 1)} of {args.labelled} labelled, "
                f"{len(cases)} cases evaluated", work / "comparison.png")
    print(json.dumps(summary, indent=1))


def plot_paired(paired: list, regions: list, subtitle: str, path: Path) -> None:
    """One panel per label or region: each paired difference with its 95 % interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pairs = list(dict.fromkeys((d["method"], d["against"]) for d in paired))
    figure, axes = plt.subplots(1, len(regions), figsize=(3.2 * len(regions) + 2.6, 0.6 + 0.45 * len(pairs)),
                                sharey=True)
    for axis, region in zip(axes, regions):
        for y, (method, against) in enumerate(pairs):
            d = next(d for d in paired if (d["method"], d["against"], d["region"]) == (method, against, region))
            axis.errorbar(d["mean"], y, xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], marker="o", capsize=3)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(region, fontsize=9)
        axis.set_xlabel("Dice difference", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0].set_yticks(range(len(pairs)), [f"{m}\nminus {a}" for m, a in pairs], fontsize=7)
    axes[0].invert_yaxis()
    figure.suptitle(subtitle, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
