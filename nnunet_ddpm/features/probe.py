"""``nnUNetv2_ddpm_probe_features``: which decoder stages and timesteps of the pretrained denoiser carry the
segmentation, measured on the labelled training cases of one fold, and the pixel classifier's choice of them.

Baranchuk et al. (ICLR 2022, ddpm-segmentation) and Alshenoudy et al. (AIAI 2023, Figure 2) chose the blocks and
timesteps of their pixel classifiers by looking at k-means clusters of the activations. This tool draws those pictures
for the user's data, and also measures: for every decoder stage x timestep, a linear probe (a logistic regression,
scikit-learn) is trained on sampled pixels of some labelled cases and scored on the others (cross-validation grouped
by case), as the mean Dice over foreground labels of its pixel predictions. Only the fold's labelled training cases
are read (the label budget's cases when ``--budget`` is given), never its validation cases or the test set.

The best stages and timesteps under a cost limit (at most ``--max-stages`` stages and ``--max-timesteps`` timesteps,
as many as the defaults by default) are written beside the pretraining checkpoint, where
``nnUNetTrainerDDPMPixelClassifier`` finds and uses them: as ``pixel_features_<N>labels.json`` with ``--budget N``
(for the ``_<N>labels`` trainers, which read the same N cases), else as ``pixel_features.json`` (for every pixel
classifier without a choice of its own budget). One choice serves all folds of a trainer, because nnU-Net builds one
network for a model folder's folds.

A pixel classifier given its pretraining by nnU-Net's ``-pretrained_weights`` learns only the weights, not the file
(``training/ddpm_trainer_base.py``). So every choice is also filed by the content hash of the weights it was made for
(``denoiser_sha256``), under ``$nnUNet_results/<dataset>/ddpm_pixel_features/<hash>/`` (``indexed_choice_file``),
where such a run looks it up.

Decoder stages are counted from the end everywhere (files, messages, logs): -1 is the full-resolution stage, -2 the
one below it; that numbering does not depend on the network's depth.

Memory is bounded by the sampled pixels: each case is run on one patch (the plans' patch size, around its centre),
its features upsampled, and only ``--pixels-per-case`` of its pixels kept.
"""
import argparse
import csv
import glob
import os
import sys
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p, save_json

from nnunet_ddpm.files import written_atomically
from nnunet_ddpm.folders import require_nnunet_folders

CHOICE_FILE = "pixel_features.json"
PROBE_FOLDER = "feature_probe"
DEFAULT_TIMESTEPS = (10, 50, 100, 150, 250, 400, 600)


def choice_file(budget: Optional[int] = None) -> str:
    """The choice's file name: one per label budget, so that a ``_<N>labels`` trainer uses the choice made on its
    own N cases; ``pixel_features.json`` for a probe of all of a fold's training cases."""
    return CHOICE_FILE if budget is None else f"pixel_features_{budget}labels.json"


def indexed_choice_file(results_folder: str, dataset_name: str, weights_sha256: str,
                        budget: Optional[int] = None) -> str:
    """Where the choice made for the weights with content hash ``weights_sha256`` is filed for ``dataset_name``."""
    return join(results_folder, dataset_name, "ddpm_pixel_features", weights_sha256[:16], choice_file(budget))


def case_patch(data: np.ndarray, seg: np.ndarray, patch_size: Sequence[int], divisor: Sequence[int]):
    """The patch of ``data`` (C, *spatial) and ``seg`` (1, *spatial) around the centre, at most ``patch_size`` and
    zero-padded to a multiple of the network's total stride ``divisor``; returns (data, seg, valid slices)."""
    if data.ndim - 1 > len(patch_size):  # a 2D configuration reads 3D arrays: take the middle slice, as one case
        middle = data.shape[1] // 2
        data, seg = data[:, middle], seg[:, middle]
    spatial = data.shape[1:]
    start = [max(0, (s - p) // 2) for s, p in zip(spatial, patch_size)]
    crop = tuple(slice(b, b + min(s, p)) for b, s, p in zip(start, spatial, patch_size))
    data, seg = data[(slice(None),) + crop], seg[(slice(None),) + crop]
    padded = [int(np.ceil(s / d) * d) for s, d in zip(data.shape[1:], divisor)]
    pad = [(0, 0)] + [(0, p - s) for s, p in zip(data.shape[1:], padded)]
    valid = tuple(slice(0, s) for s in data.shape[1:])
    return np.pad(data, pad), np.pad(seg, pad, constant_values=-1), valid


@torch.no_grad()
def stage_timestep_features(network, x: torch.Tensor) -> Dict[Tuple[int, int], torch.Tensor]:
    """{(stage, timestep): (C_stage, *spatial of x)} for one case x (1, C, *spatial): the pixel classifier's
    features (same fixed noise, same decoder stages), each upsampled to the input's size."""
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    result = {}
    for stage, features in zip(network.stages, network.features(x)):
        per_timestep = features.shape[1] // len(network.timesteps)
        upsampled = F.interpolate(features.float(), size=x.shape[2:], mode=mode, align_corners=False)[0]
        for k, t in enumerate(network.timesteps):
            result[(stage, t)] = upsampled[k * per_timestep:(k + 1) * per_timestep]
    return result


def sample_pixels(seg: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of up to ``count`` pixels of ``seg`` (*spatial), as many per label as possible (rare labels
    keep all their pixels); pixels outside the image (-1) are never drawn."""
    flat = seg.reshape(-1)
    labels = [v for v in np.unique(flat) if v >= 0]
    chosen = []
    for i, label in enumerate(labels):
        where = np.flatnonzero(flat == label)
        share = (count - sum(len(c) for c in chosen)) // (len(labels) - i)
        chosen.append(rng.choice(where, min(share, len(where)), replace=False))
    return np.concatenate(chosen) if chosen else np.zeros(0, int)


def probe_scores(features: Dict[Tuple[int, int], np.ndarray], labels: np.ndarray, groups: np.ndarray,
                 num_folds: int = 3, seed: int = 0) -> Dict[Tuple[int, int], float]:
    """Cross-validated mean foreground Dice of a logistic-regression probe per (stage, timestep), folds grouped by
    case so that a case's pixels are never in training and scoring at once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    foreground = [v for v in np.unique(labels) if v > 0]
    splits = list(GroupKFold(n_splits=min(num_folds, len(np.unique(groups)))).split(labels, labels, groups))
    scores = {}
    for key, x in features.items():
        predicted = np.zeros_like(labels)
        for train, test in splits:
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed))
            if len(np.unique(labels[train])) < 2:
                continue
            predicted[test] = probe.fit(x[train], labels[train]).predict(x[test])
        dice = []
        for v in foreground:
            tp = np.sum((predicted == v) & (labels == v))
            denominator = np.sum(predicted == v) + np.sum(labels == v)
            dice.append(2 * tp / denominator if denominator else 1.0)
        scores[key] = float(np.mean(dice)) if dice else float("nan")
    return scores


def choose_features(scores: Dict[Tuple[int, int], float], max_stages: int, max_timesteps: int) -> dict:
    """The ``max_stages`` stages with the best mean score over timesteps, then the ``max_timesteps`` timesteps with
    the best mean score over those stages (both sorted)."""
    stages = sorted({s for s, _ in scores})
    timesteps = sorted({t for _, t in scores})
    stage_score = {s: np.mean([scores[(s, t)] for t in timesteps]) for s in stages}
    best_stages = sorted(sorted(stages, key=lambda s: -stage_score[s])[:max_stages])
    timestep_score = {t: np.mean([scores[(s, t)] for s in best_stages]) for t in timesteps}
    best_timesteps = sorted(sorted(timesteps, key=lambda t: -timestep_score[t])[:max_timesteps])
    return {"stages": [int(s) for s in best_stages], "timesteps": [int(t) for t in best_timesteps]}


def cluster_picture(image: np.ndarray, seg: np.ndarray, features: Dict[Tuple[int, int], torch.Tensor],
                    path: str, title: str, num_clusters: int = 5, seed: int = 0) -> Tuple[int, int]:
    """One PNG: the image (first channel) and its labels, then a grid of k-means clusters of the features, rows
    stages, columns timesteps (the paper's Figure 2). A 3D case shows its middle slice. Returns (rows, columns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.cluster import KMeans
    stages = sorted({s for s, _ in features})
    timesteps = sorted({t for _, t in features})
    middle = (lambda a: a[a.shape[0] // 2]) if image.ndim == 4 else (lambda a: a)
    figure, axes = plt.subplots(len(stages), len(timesteps) + 1, squeeze=False,
                                figsize=(1.8 * (len(timesteps) + 1), 1.8 * len(stages)))
    axes[0][0].imshow(middle(image[0]), cmap="gray")
    axes[0][0].set_title("image", fontsize=7)
    if len(stages) > 1:
        axes[1][0].imshow(middle(np.maximum(seg[0], 0)), cmap="viridis", interpolation="nearest")
        axes[1][0].set_title("labels", fontsize=7)
    for r, stage in enumerate(stages):
        for c, t in enumerate(timesteps):
            f = middle(features[(stage, t)].permute(*range(1, features[(stage, t)].ndim), 0).numpy())
            clusters = KMeans(num_clusters, n_init=2, random_state=seed).fit_predict(f.reshape(-1, f.shape[-1]))
            axes[r][c + 1].imshow(clusters.reshape(f.shape[:-1]), cmap="tab10", interpolation="nearest")
            axes[r][c + 1].set_title(f"stage {stage}, t={t}", fontsize=7)
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return len(stages), len(timesteps) + 1


def heat_map(scores: Dict[Tuple[int, int], float], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = sorted({s for s, _ in scores})
    timesteps = sorted({t for _, t in scores})
    table = np.array([[scores[(s, t)] for t in timesteps] for s in stages])
    figure, axis = plt.subplots(figsize=(1 + 0.8 * len(timesteps), 1 + 0.5 * len(stages)))
    image = axis.imshow(table, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    axis.set_yticks(range(len(stages)), [f"stage {s}" for s in stages])
    axis.set_xlabel("timestep")
    for (i, j), value in np.ndenumerate(table):
        axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")
    figure.colorbar(image, label="probe Dice (foreground mean)")
    axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


class ProbeError(ValueError):
    """Bad input to the feature probe, found before any feature is computed."""


def file_digest(path: str) -> str:
    import hashlib
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def labelled_cases(dataset: str, configuration: str = "2d", fold: int = 0, budget: Optional[int] = None,
                   plans: str = "nnUNetPlans"):
    """(dataset name, preprocessed folder, plans manager, configuration manager, cases): the labelled training cases of
    fold ``fold`` that a probe may read (the label budget's with ``budget``), refused with a ProbeError if missing."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ddpm.splits.label_budget import choose_labelled_cases
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise ProbeError(f"Dataset {dataset} not found: {e}") from None
    preprocessed = join(str(nnUNet_preprocessed), dataset_name)
    plans_manager = PlansManager(join(preprocessed, f"{plans}.json"))
    configuration_manager = plans_manager.get_configuration(configuration)
    splits_file = join(preprocessed, "splits_final.json")
    if not isfile(splits_file):
        raise ProbeError(f"{splits_file} does not exist: the probe reads only a fold's training cases. Write the "
                         f"folds first (nnUNetv2_ddpm_make_splits -d {dataset_name}, or train any fold once).")
    splits = load_json(splits_file)
    if not 0 <= fold < len(splits):
        raise ProbeError(f"Fold {fold} does not exist: {splits_file} has {len(splits)} folds.")
    try:
        cases = choose_labelled_cases(splits[fold]["train"], budget, fold) if budget else \
            sorted(splits[fold]["train"])
    except ValueError as e:
        raise ProbeError(str(e)) from None
    if len(cases) < 2:
        raise ProbeError(f"The probe cross-validates over cases and needs at least 2 labelled cases; fold {fold} "
                         f"gives {len(cases)}.")
    return dataset_name, preprocessed, plans_manager, configuration_manager, cases


def probe_checkpoint(checkpoint: Union[str, dict], preprocessed: str, configuration_manager, cases: Sequence[str],
                     timesteps: Sequence[int] = DEFAULT_TIMESTEPS, pixels_per_case: int = 2000,
                     picture_folder: Optional[str] = None, picture_cases: int = 0, picture_title: str = "",
                     progress: bool = True):
    """The linear probe's score of every (decoder stage, timestep) of the denoiser in ``checkpoint`` (a pretraining
    checkpoint's path, or the checkpoint ``load_checkpoint_file`` read from it) on ``cases``, and k-means pictures of
    the first ``picture_cases`` cases in ``picture_folder``.

    Returns (scores {(stage, timestep): Dice}, number of decoder stages, the feature network, picture paths)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from tqdm import tqdm

    from nnunet_ddpm.diffusion import DiffusionSettings
    from nnunet_ddpm.networks import PixelClassifierNetwork, build_unet_from_plans, network_downsampling
    from nnunet_ddpm.networks.pretrained_checkpoint import load_checkpoint_file, transfer_denoiser_weights
    pretrained = checkpoint if isinstance(checkpoint, dict) else load_checkpoint_file(checkpoint)
    diffusion = DiffusionSettings.from_dict(pretrained["ddpm"]["diffusion"])
    bad = [t for t in timesteps if not 0 <= t < diffusion.num_train_timesteps]
    if bad:
        raise ProbeError(f"Timesteps {bad} lie outside [0, {diffusion.num_train_timesteps - 1}].")
    num_channels = pretrained["ddpm"]["num_input_channels"]
    unet = build_unet_from_plans(configuration_manager, num_channels, num_channels, deep_supervision=False)
    all_stages = list(range(len(unet.decoder.stages)))
    network = PixelClassifierNetwork(unet, all_stages, timesteps, [diffusion.alpha_bar(t) for t in timesteps], 2,
                                     embedding_dim=pretrained["ddpm"]["timestep_embedding_dim"],
                                     timesteps_per_pass=1)
    transfer_denoiser_weights(network, pretrained["network_weights"])
    network.eval()
    strides = network_downsampling(configuration_manager)
    folder = join(preprocessed, configuration_manager.data_identifier)
    data_source = infer_dataset_class(folder)(folder, list(cases))
    rng = np.random.default_rng(0)
    sampled, labels, groups, pictures = {}, [], [], []
    for index, case in enumerate(tqdm(cases, desc="Probing decoder features", unit="case", disable=not progress)):
        data, seg, _, _ = data_source.load_case(case)
        data, seg, _ = case_patch(np.asarray(data, np.float32), np.asarray(seg), configuration_manager.patch_size,
                                  strides)
        features = stage_timestep_features(network, torch.from_numpy(data)[None])
        if index < picture_cases:
            path = join(picture_folder, f"clusters_{case}.png")
            cluster_picture(data, seg, features, path, f"{picture_title} {case}: k-means of decoder features")
            pictures.append(path)
        chosen = sample_pixels(seg[0], pixels_per_case, rng)
        for key, f in features.items():
            sampled.setdefault(key, []).append(f.reshape(f.shape[0], -1)[:, chosen].T.numpy())
        labels.append(seg[0].reshape(-1)[chosen])
        groups.append(np.full(len(chosen), index))
    scores = probe_scores({k: np.concatenate(v) for k, v in sampled.items()}, np.concatenate(labels),
                          np.concatenate(groups))
    return scores, len(all_stages), network, pictures


def probe_features(dataset: str, *, configuration: str = "2d", fold: int = 0, budget: Optional[int] = None,
                   plans: str = "nnUNetPlans", checkpoint: Optional[str] = None,
                   timesteps: Sequence[int] = DEFAULT_TIMESTEPS, max_stages: int = 3, max_timesteps: int = 3,
                   pixels_per_case: int = 2000, picture_cases: int = 2, pretraining_trainer: str =
                   "nnUNetTrainerDDPMPretrain", progress: bool = True) -> dict:
    """Probe the pretraining of ``dataset``/``configuration`` on fold ``fold``'s labelled training cases; write the
    scores, pictures and the choice (see the module docstring). Returns the choice record."""
    from nnunetv2.paths import nnUNet_results

    from nnunet_ddpm.networks.pretrained_checkpoint import denoiser_sha256, find_pretraining_checkpoint
    dataset_name, preprocessed, _, configuration_manager, cases = labelled_cases(dataset, configuration, fold,
                                                                                  budget, plans)
    checkpoint = checkpoint or find_pretraining_checkpoint(str(nnUNet_results), dataset_name, plans, configuration,
                                                           pretraining_trainer)
    output = join(os.path.dirname(os.path.abspath(checkpoint)), PROBE_FOLDER)
    maybe_mkdir_p(output)
    for stale in glob.glob(join(output, "clusters_*.png")):  # the folder shows one probe: pictures of earlier runs go
        os.remove(stale)
    scores, num_stages, network, pictures = probe_checkpoint(checkpoint, preprocessed, configuration_manager, cases,
                                                             timesteps, pixels_per_case, output, picture_cases,
                                                             dataset_name, progress)
    all_stages = list(range(num_stages))
    choice = choose_features(scores, max_stages, max_timesteps)
    # stages as the pixel classifier counts them from the end (-1 = full resolution), which do not depend on depth
    choice["stages"] = sorted(s - len(all_stages) for s in choice["stages"])
    with open(join(output, "scores.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", "stage_from_end", "timestep", "probe_dice"])
        for (stage, t), value in sorted(scores.items()):
            writer.writerow([stage, stage - len(all_stages), t, f"{value:.4f}"])
    timesteps_sorted = sorted({t for _, t in scores})
    table = ["| stage (from the end) | " + " | ".join(f"t={t}" for t in timesteps_sorted) + " |",
             "|---" * (len(timesteps_sorted) + 1) + "|"]
    for stage in all_stages:
        table.append(f"| {stage - len(all_stages)} | " +
                     " | ".join(f"{scores[(stage, t)]:.3f}" for t in timesteps_sorted) + " |")
    with open(join(output, "scores.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    heat_map(scores, join(output, "scores.png"), f"{dataset_name} fold {fold}: linear probe per stage and timestep")
    record = {**choice, "checkpoint": os.path.abspath(checkpoint), "checkpoint_sha1": file_digest(checkpoint),
              "weights_sha256": denoiser_sha256(network.state_dict()), "fold": fold, "budget": budget, "cases": cases, "pixels_per_case": pixels_per_case,
              "max_stages": max_stages, "max_timesteps": max_timesteps,
              "scores": {f"{stage - len(all_stages)},{t}": v for (stage, t), v in sorted(scores.items())},
              "pictures": pictures}
    record["file"] = join(os.path.dirname(os.path.abspath(checkpoint)), choice_file(budget))
    written = [record["file"]]
    if nnUNet_results.is_set():  # where a trainer given these weights by nnU-Net looks for their choice
        written.append(indexed_choice_file(str(nnUNet_results), dataset_name, record["weights_sha256"], budget))
        maybe_mkdir_p(os.path.dirname(written[-1]))
    for path in written:
        with written_atomically(path) as partial:  # a trainer starting now reads the old or the new choice
            save_json(record, partial, sort_keys=False)
    return record


def add_labelled_case_arguments(parser: argparse.ArgumentParser) -> None:
    """-d, -c, -f, --budget, -p: which labelled cases a probe reads (``labelled_cases``)."""
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", default="2d", help="configuration (default: %(default)s)")
    parser.add_argument("-f", type=int, default=0, help="fold whose labelled training cases are probed (default: 0)")
    parser.add_argument("--budget", type=int, default=None,
                        help="probe only the N labelled cases of the label budget (as the _<N>labels trainers)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    """The command's options; -pretrained_weights is nnU-Net's spelling, the older --pretrained-weights still works."""
    parser = argparse.ArgumentParser(
        description="Measure which decoder stages and timesteps of a DDPM pretraining separate the labels (a linear "
                    "probe per stage x timestep, cross-validated over one fold's labelled training cases), draw "
                    "k-means pictures of the features, and write the best choice beside the pretraining "
                    "(pixel_features_<N>labels.json with --budget N, else pixel_features.json), where "
                    "nnUNetTrainerDDPMPixelClassifier and its _<N>labels variants use it.")
    add_labelled_case_arguments(parser)
    parser.add_argument("-pretrained_weights", "--pretrained-weights", dest="pretrained_weights", default=None,
                        help="pretraining checkpoint (default: the nnUNetTrainerDDPMPretrain run of the dataset)")
    parser.add_argument("-tr", default="nnUNetTrainerDDPMPretrain",
                        help="the pretraining's trainer, whose fold 'all' holds the checkpoint (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--max-stages", type=int, default=3)
    parser.add_argument("--max-timesteps", type=int, default=3)
    parser.add_argument("--pixels-per-case", type=int, default=2000)
    parser.add_argument("--picture-cases", type=int, default=2, help="cases to draw k-means pictures for")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parser().parse_args(argv)
    # nnUNet_results holds the pretraining and, where set, the choice indexed by the weights' hash
    require_nnunet_folders("nnUNetv2_ddpm_probe_features", read=("nnUNet_preprocessed",),
                           write=("nnUNet_results",) if args.pretrained_weights is None or
                           os.environ.get("nnUNet_results") else ())
    from nnunet_ddpm.networks.pretrained_checkpoint import PretrainingCheckpointError
    try:
        record = probe_features(args.d, configuration=args.c, fold=args.f, budget=args.budget, plans=args.p,
                                checkpoint=args.pretrained_weights, timesteps=args.timesteps,
                                max_stages=args.max_stages, max_timesteps=args.max_timesteps,
                                pixels_per_case=args.pixels_per_case, picture_cases=args.picture_cases,
                                pretraining_trainer=args.tr)
    except (ProbeError, PretrainingCheckpointError) as e:
        sys.exit(f"nnUNetv2_ddpm_probe_features: {e}")
    folder = os.path.dirname(record["checkpoint"])
    print(open(join(folder, PROBE_FOLDER, "scores.md")).read())
    print(f"Chosen: decoder stages {record['stages']} at timesteps {record['timesteps']}; written to "
          f"{record['file']} (scores, heat map and pictures in {join(folder, PROBE_FOLDER)}).")
