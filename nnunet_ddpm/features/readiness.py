"""``nnUNetv2_ddpm_pretraining_readiness``: is the DDPM pretraining long enough?

The denoising loss flattens long before the denoiser's features separate the labels, so it cannot say. This command
scores every snapshot of a pretraining (``checkpoint_iteration<N>.pth``, kept by ``nnUNet_ddpm_pretrain_snapshots``,
and ``checkpoint_final.pth``) with the feature probe of ``nnUNetv2_ddpm_probe_features``: a linear probe per decoder
stage and timestep, cross-validated over one fold's labelled training cases (never its validation cases). The best of
those scores over every stage and timestep, tracked over the iterations, is the readiness curve (the mean moves less
from probe to probe than the best single score does). While it still rises from half the iterations to the last
snapshot, the features are still forming and a longer pretraining is worth trying; once it is flat, more pretraining
is unlikely to change them. ``documentation/evidence.md`` measures how the curve and the fine-tune's gain
over the supervised nnU-Net move together on real patients.

Writes ``readiness.json`` and ``readiness.png`` into the pretraining's output folder; writes nothing else (the probe's
choice of features stays with ``nnUNetv2_ddpm_probe_features``).
"""
import argparse
import glob
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, save_json

from nnunet_ddpm.features.probe import (DEFAULT_TIMESTEPS, ProbeError, add_labelled_case_arguments,
                                        labelled_cases, probe_checkpoint)
from nnunet_ddpm.files import written_atomically
from nnunet_ddpm.folders import require_nnunet_folders

READINESS_FILE = "readiness.json"
READINESS_PLOT = "readiness.png"
DEFAULT_TOLERANCE = 0.01  # mean probe Dice gained from half the iterations to the last snapshot that counts as rising


def pretraining_snapshots(folder: str) -> List[Tuple[int, str, Optional[dict]]]:
    """(iterations, path, checkpoint) of every snapshot in a pretraining's output folder, in training order: the kept
    ``checkpoint_iteration<N>.pth`` (checkpoint None: read when probed) and, once training has finished,
    ``checkpoint_final.pth``, read here for its iterations and handed on loaded so that it is read once."""
    from nnunet_ddpm.networks.pretrained_checkpoint import load_checkpoint_file
    snapshots = []
    for path in glob.glob(join(folder, "checkpoint_iteration*.pth")):
        match = re.fullmatch(r"checkpoint_iteration(\d+)\.pth", os.path.basename(path))
        if match:
            snapshots.append((int(match.group(1)), path, None))
    final = join(folder, "checkpoint_final.pth")
    if isfile(final):
        checkpoint = load_checkpoint_file(final)
        iterations = checkpoint.get("ema_updates")
        if iterations is not None and iterations not in {n for n, _, _ in snapshots}:
            snapshots.append((int(iterations), final, checkpoint))
    return sorted(snapshots, key=lambda snapshot: snapshot[:2])


def verdict(curve: Sequence[Tuple[int, float]], tolerance: float = DEFAULT_TOLERANCE) -> Tuple[str, Optional[float]]:
    """('rising' | 'flat' | 'unknown', the gain) from the probe's mean Dice per snapshot: the gain is the last
    snapshot's score minus that of the latest snapshot at no more than half its iterations."""
    if not curve:
        return "unknown", None
    last_iterations, last_score = curve[-1]
    earlier = [score for n, score in curve if 2 * n <= last_iterations]
    if not earlier:
        return "unknown", None
    gain = last_score - earlier[-1]
    return ("rising" if gain > tolerance else "flat"), float(gain)


def plot_readiness(record: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = record["snapshots"]
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    iterations = [r["iterations"] for r in rows]
    axis.plot(iterations, [r["mean_probe_dice"] for r in rows], marker="o", color="C1",
              label="mean over decoder stages and timesteps")
    axis.plot(iterations, [r["best_probe_dice"] for r in rows], marker=".", color="C1", alpha=0.4,
              linestyle="--", label="best stage and timestep")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("pretraining iterations")
    axis.set_ylabel("linear-probe Dice")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    axis.set_title(f"{record['dataset']} {record['configuration']}: {record['verdict']}"
                   + (f" ({record['gain']:+.3f} since half the iterations)" if record["gain"] is not None else ""),
                   fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)


def pretraining_readiness(dataset: str, *, configuration: str = "2d", fold: int = 0, budget: Optional[int] = None,
                          plans: str = "nnUNetPlans", pretraining_trainer: str = "nnUNetTrainerDDPMPretrain",
                          timesteps: Sequence[int] = DEFAULT_TIMESTEPS, pixels_per_case: int = 2000,
                          tolerance: float = DEFAULT_TOLERANCE, progress: bool = True) -> dict:
    """Score every snapshot of the pretraining of ``dataset``/``configuration`` (see the module docstring); returns
    the record written to ``readiness.json``."""
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    dataset_name, preprocessed, _, configuration_manager, cases = labelled_cases(dataset, configuration, fold,
                                                                                  budget, plans)
    folder = get_output_folder(dataset_name, pretraining_trainer, plans, configuration, "all")
    snapshots = pretraining_snapshots(folder) if isdir(folder) else []
    if not snapshots:
        raise ProbeError(f"No pretraining snapshot in {folder} (checkpoint_iteration<N>.pth or checkpoint_final.pth). "
                         f"Pretrain with snapshots, for example: nnUNet_ddpm_pretrain_snapshots=2000,4000 "
                         f"nnUNetv2_train {dataset_name} {configuration} all -tr {pretraining_trainer}"
                         + ("" if nnUNet_results else " (and set nnUNet_results)"))
    rows = []
    for iterations, path, checkpoint in snapshots:
        scores, num_stages, _, _ = probe_checkpoint(path if checkpoint is None else checkpoint, preprocessed,
                                                    configuration_manager, cases, timesteps, pixels_per_case,
                                                    progress=progress)
        (stage, timestep), best = max(scores.items(), key=lambda item: item[1])
        rows.append({"iterations": iterations, "checkpoint": os.path.basename(path),
                     "mean_probe_dice": float(np.mean(list(scores.values()))), "best_probe_dice": best,
                     "best_stage": stage - num_stages, "best_timestep": timestep})
    state, gain = verdict([(r["iterations"], r["mean_probe_dice"]) for r in rows], tolerance)
    record = {"dataset": dataset_name, "configuration": configuration, "fold": fold, "budget": budget,
              "cases": cases, "timesteps": list(timesteps), "pixels_per_case": pixels_per_case,
              "tolerance": tolerance, "verdict": state, "gain": gain, "snapshots": rows}
    with written_atomically(join(folder, READINESS_FILE)) as partial:
        save_json(record, partial, sort_keys=False)
    with written_atomically(join(folder, READINESS_PLOT)) as partial:
        plot_readiness(record, partial)
    record["folder"] = folder
    return record


def advice(record: dict) -> str:
    """The one line the command ends with."""
    last = record["snapshots"][-1]["iterations"]
    change = f"the probe's mean Dice changed by {record['gain']:+.3f} from half the iterations to {last}" \
        if record["gain"] is not None else ""
    if record["verdict"] == "rising":
        return (f"Still rising: {change}. The features are still forming; pretrain longer (for example "
                f"{2 * last} iterations) and check again.")
    if record["verdict"] == "flat":
        return (f"Flat: {change} (tolerance {record['tolerance']}). Longer pretraining is unlikely to improve the "
                f"features.")
    return (f"Not enough snapshots to tell: keep one at half the iterations or earlier "
            f"(nnUNet_ddpm_pretrain_snapshots={last // 2}) and check again.")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Is the DDPM pretraining long enough? Scores every snapshot of the pretraining "
                    "(checkpoint_iteration<N>.pth from nnUNet_ddpm_pretrain_snapshots, and checkpoint_final.pth) with "
                    "a linear probe of its decoder features on one fold's labelled training cases, and says whether "
                    "the probe's Dice still rises. Writes readiness.json and readiness.png beside the checkpoints.")
    add_labelled_case_arguments(parser)
    parser.add_argument("-tr", default="nnUNetTrainerDDPMPretrain",
                        help="the pretraining's trainer, whose fold 'all' holds the snapshots (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--pixels-per-case", type=int, default=2000)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="probe Dice gained since half the iterations below which the curve counts as flat "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    require_nnunet_folders("nnUNetv2_ddpm_pretraining_readiness", read=("nnUNet_preprocessed",),
                           write=("nnUNet_results",))  # the snapshots' folder, where readiness.json goes
    from nnunet_ddpm.networks.pretrained_checkpoint import PretrainingCheckpointError
    try:
        record = pretraining_readiness(args.d, configuration=args.c, fold=args.f, budget=args.budget, plans=args.p,
                                       pretraining_trainer=args.tr, timesteps=args.timesteps,
                                       pixels_per_case=args.pixels_per_case, tolerance=args.tolerance)
    except (ProbeError, PretrainingCheckpointError) as e:
        sys.exit(f"nnUNetv2_ddpm_pretraining_readiness: {e}")
    print("| iterations | checkpoint | mean probe Dice | best probe Dice | its stage (from the end) | its timestep |\n"
          "|---|---|---|---|---|---|")
    for row in record["snapshots"]:
        print(f"| {row['iterations']} | {row['checkpoint']} | {row['mean_probe_dice']:.3f} | "
              f"{row['best_probe_dice']:.3f} | {row['best_stage']} | {row['best_timestep']} |")
    print(advice(record))
    print(f"Written: {join(record['folder'], READINESS_FILE)}, {join(record['folder'], READINESS_PLOT)}")


if __name__ == "__main__":
    main()
