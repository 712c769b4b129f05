"""Dice (nnU-Net's evaluator) and HD95 (MONAI's surface distances) per test case and label or region."""
import os
import warnings
from typing import Dict, List, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json, subfiles

EVALUATION_FILE = "evaluation.json"


def region_key(region: Union[int, tuple]) -> str:
    """nnU-Net's summary key of a label (``"1"``) or region (``"(2, 3)"``, ``"(3,)"``)."""
    return str(tuple(int(v) for v in region)) if isinstance(region, (list, tuple)) else str(int(region))


def region_names(dataset_json: dict, regions_or_labels: List[Union[int, tuple]]) -> Dict[str, str]:
    """nnU-Net's summary key of each label or region -> its name in dataset.json.

    A label or region is matched by the set of labels it covers, so a one-label region (``"enhancing tumor": [3]``,
    nnU-Net's region ``(3,)``) finds its name like a plain label (``"edema": 1``) does."""
    by_labels = {}
    for name, value in dataset_json["labels"].items():
        by_labels.setdefault(frozenset(np.atleast_1d(value).astype(int).tolist()), name)
    return {region_key(r): by_labels.get(frozenset(np.atleast_1d(r).astype(int).tolist()), region_key(r))
            for r in regions_or_labels}


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between two boolean masks, on the case's own
    dimensionality: axes of size 1 are dropped with their spacing, so nnU-Net's (1, H, W) volume of a 2D image (whose
    out-of-plane spacing is a placeholder such as 999) is measured as the H x W image it is. In 3D, a one-slice mask
    has no interior: every pixel would count as surface.

    Definition (MONAI's ``compute_hausdorff_distance``): the surface of a mask is the mask minus its binary erosion
    (face connectivity); for each surface pixel of one mask, the Euclidean distance (with the spacing) to the nearest
    surface pixel of the other; the 95th percentile of those distances (linear interpolation) in each direction; the
    larger of the two directed values. Both masks empty: 0. Exactly one empty: NaN, the distance is undefined (the
    report leaves such cases out and counts them)."""
    if not prediction.any() and not reference.any():
        return 0.0
    if not prediction.any() or not reference.any():
        return float("nan")
    import torch
    from monai.metrics import compute_hausdorff_distance
    axes = [a for a, size in enumerate(prediction.shape) if size > 1] or list(range(prediction.ndim))
    shape = [prediction.shape[a] for a in axes]
    masks = (torch.from_numpy(np.ascontiguousarray(m, dtype=bool).reshape(shape)[None, None])
             for m in (prediction, reference))
    with warnings.catch_warnings():  # MONAI's own call of a deprecated argument of its get_mask_edges
        warnings.filterwarnings("ignore", "monai.metrics.utils get_mask_edges", FutureWarning)
        value = compute_hausdorff_distance(*masks, include_background=True, percentile=95,
                                           spacing=[float(spacing[a]) for a in axes])
    return float(value.item())


def _mask(segmentation: np.ndarray, region) -> np.ndarray:
    return np.isin(segmentation, region) if isinstance(region, (list, tuple)) else segmentation == region


def metrics_on_folder_in_process(labels_folder: str, prediction_folder: str, output_file: str, reader,
                                 file_ending: str, regions: list, ignore_label) -> dict:
    """nnU-Net's ``compute_metrics_on_folder`` without its spawned worker pool, whose start (a fresh interpreter
    importing nnU-Net) costs more than evaluating a small test set: the same per-case ``compute_metrics`` and the same
    summary (mean per label or region, then the mean over foreground)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, save_summary_json
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    cases = subfiles(prediction_folder, suffix=file_ending, join=False)
    results = [compute_metrics(join(labels_folder, c), join(prediction_folder, c), reader, regions, ignore_label)
               for c in cases]
    metric_names = list(results[0]["metrics"][regions[0]])
    means = {r: {m: np.nanmean([c["metrics"][r][m] for c in results]) for m in metric_names} for r in regions}
    foreground_mean = {m: np.mean([means[r][m] for r in regions if r not in (0, "0")]) for m in metric_names}
    for item in (*results, means, foreground_mean):
        recursive_fix_for_json_export(item)
    summary = {"metric_per_case": results, "mean": means, "foreground_mean": foreground_mean}
    save_summary_json(summary, output_file)
    return summary


def evaluate_prediction_folder(prediction_folder: str, labels_folder: str, preprocessed_dataset_folder: str,
                               plans: str = "nnUNetPlans", num_processes: int = 2) -> dict:
    """Write ``summary.json`` (nnU-Net's evaluator) and ``evaluation.json`` (Dice and HD95 per case and region)."""
    # imported here: nnU-Net's evaluator brings torch, which the runner's own process (the report) never needs
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    dataset_json = load_json(join(preprocessed_dataset_folder, "dataset.json"))
    plans_manager = PlansManager(join(preprocessed_dataset_folder, f"{plans}.json"))
    label_manager = plans_manager.get_label_manager(dataset_json)
    regions = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    reader = plans_manager.image_reader_writer_class()
    arguments = (labels_folder, prediction_folder, join(prediction_folder, "summary.json"), reader,
                 dataset_json["file_ending"], regions, label_manager.ignore_label)
    summary = compute_metrics_on_folder(*arguments, num_processes) if num_processes > 1 else \
        metrics_on_folder_in_process(*arguments)
    names = region_names(dataset_json, regions)
    per_case = []
    for case_result in summary["metric_per_case"]:
        prediction, properties = reader.read_seg(case_result["prediction_file"])
        reference, _ = reader.read_seg(case_result["reference_file"])
        for region in regions:
            key = region_key(region)
            metrics = case_result["metrics"][key] if key in case_result["metrics"] else \
                case_result["metrics"][region]
            per_case.append({
                "case": os.path.basename(case_result["reference_file"])[:-len(dataset_json["file_ending"])],
                "region": names[key], "dice": metrics["Dice"],
                "hd95": hd95(_mask(prediction[0], region), _mask(reference[0], region), properties["spacing"]),
                # the region's size in reference and prediction: a case without it in the reference where the
                # prediction has it is a false-positive case, which neither Dice (NaN or 0) nor HD95 (NaN) shows
                "reference_voxels": int(metrics["n_ref"]), "predicted_voxels": int(metrics["n_pred"])})
    result = {"regions": [names[k] for k in names], "per_case": per_case}
    save_json(result, join(prediction_folder, EVALUATION_FILE), sort_keys=False)
    return result


def evaluate_predictions_entry():
    """nnUNetv2_ddpm_evaluate_predictions: the comparison's evaluation step as a command of its own, so that a dry run
    or a cluster job can run it like nnUNetv2_train and nnUNetv2_predict."""
    import argparse
    import sys

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ddpm.folders import require_nnunet_folders
    parser = argparse.ArgumentParser(description="Score a folder of predictions against reference segmentations: "
                                                 f"nnU-Net's summary.json and {EVALUATION_FILE} (Dice and HD95 per "
                                                 "case and named label or region).")
    parser.add_argument("-i", required=True, help="folder of predicted segmentations")
    parser.add_argument("-ref", required=True, help="folder of reference segmentations (same file names)")
    parser.add_argument("-d", required=True, help="dataset name or id (its preprocessed dataset.json and plans name "
                                                  "the labels and regions)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    parser.add_argument("-np", type=int, default=2, help="processes (default: %(default)s)")
    args = parser.parse_args()
    require_nnunet_folders("nnUNetv2_ddpm_evaluate_predictions", read=("nnUNet_preprocessed",))
    try:
        preprocessed = join(str(nnUNet_preprocessed), maybe_convert_to_dataset_name(args.d))
    except RuntimeError:
        sys.exit(f"nnUNetv2_ddpm_evaluate_predictions: dataset {args.d} not found (no folder of that name or id in "
                 f"nnUNet_raw, nnUNet_preprocessed or nnUNet_results): give the dataset the predictions are of.")
    missing = [f for f in (join(preprocessed, "dataset.json"), join(preprocessed, f"{args.p}.json"))
               if not os.path.isfile(f)]
    if missing:
        sys.exit(f"nnUNetv2_ddpm_evaluate_predictions: {missing[0]} does not exist: plan and preprocess the dataset "
                 f"(nnUNetv2_plan_and_preprocess) first.")
    unmatched = [f for f in subfiles(args.i, suffix=load_json(join(preprocessed, "dataset.json"))["file_ending"],
                                     join=False) if not os.path.isfile(join(args.ref, f))]
    if unmatched:
        sys.exit(f"nnUNetv2_ddpm_evaluate_predictions: {len(unmatched)} predictions have no reference in {args.ref} "
                 f"(first: {unmatched[0]}).")
    evaluate_prediction_folder(args.i, args.ref, preprocessed, args.p, args.np)
    print(f"Wrote {join(args.i, EVALUATION_FILE)}")
