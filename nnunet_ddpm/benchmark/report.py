"""The comparison report: mean and standard deviation over folds of the per-fold mean Dice / HD95 per region, as CSV,
JSON (with the case-level results and the settings), a Markdown table laid out like the paper's and a PNG plot.

Honesty rules: the settings every model was trained with (epochs, iterations, diffusion timesteps) are read from
its own output folder, and models of one method must agree, else the report is refused; the machine and the number
of test cases are stated.
"""
import csv
import math
import platform
from typing import Dict, List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json

from nnunet_ddpm.benchmark.evaluation import EVALUATION_FILE
from nnunet_ddpm.benchmark.runner import METHOD_TITLES, Benchmark, BenchmarkError

SETTINGS_KEYS = ("num_epochs", "num_iterations_per_epoch", "initial_lr", "finetune_timestep", "feature_timesteps",
                 "feature_stages", "ensemble_size", "diffusion")


def trained_settings(model_folder: str) -> dict:
    """What the model was trained with, from nnU-Net's debug.json (written at the start of training)."""
    debug = load_json(join(model_folder, "debug.json"))
    return {k: debug[k] for k in SETTINGS_KEYS if k in debug}


def machine(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name()}"
    model = platform.processor() or "unknown CPU"
    if isfile("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        model = names[0] if names else model
    import os
    return f"CPU {model} ({os.cpu_count()} cores)"


def _settings_by_method(benchmark: Benchmark) -> Dict[str, dict]:
    by_method = {}
    for method in benchmark.methods:
        found = {}
        for budget in benchmark.budgets:
            for fold in benchmark.folds:
                folder = benchmark.model_folder(benchmark.trainer(method, budget), fold)
                found[f"{benchmark.trainer(method, budget)} fold {fold}"] = trained_settings(folder)
        distinct = {repr(v) for v in found.values()}
        if len(distinct) > 1:
            raise BenchmarkError(f"The {method} models were trained with different settings, so they cannot share a "
                                 f"table: " + "; ".join(f"{k}: {v}" for k, v in found.items()) +
                                 ". Retrain the odd ones out (delete their folders) or use another output folder.")
        by_method[method] = next(iter(found.values()))
    if benchmark.trains_pretraining:
        by_method["pretraining"] = trained_settings(benchmark.model_folder(benchmark.pretrainer, "all"))
    return by_method


def _mean_std(values: List[float]):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def write_report(benchmark: Benchmark, cases: List[str]) -> dict:
    settings = _settings_by_method(benchmark)
    case_rows, rows = [], []
    regions = None
    for method in benchmark.methods:
        for budget in benchmark.budgets:
            per_fold = {}
            for fold in benchmark.folds:
                evaluation = load_json(join(benchmark.prediction_folder(method, budget, fold), EVALUATION_FILE))
                regions = regions or evaluation["regions"]
                for r in evaluation["per_case"]:
                    case_rows.append({"method": method, "labelled_cases": budget, "fold": fold, **r})
                for region in evaluation["regions"]:
                    values = [r for r in evaluation["per_case"] if r["region"] == region]
                    per_fold.setdefault(region, []).append(
                        (float(np.nanmean([r["dice"] for r in values])) if values else float("nan"),
                         float(np.nanmean([r["hd95"] for r in values]))
                         if any(not math.isnan(r["hd95"]) for r in values) else float("nan"),
                         sum(math.isnan(r["hd95"]) for r in values)))
            for region, folds in per_fold.items():
                dice_mean, dice_std = _mean_std([f[0] for f in folds])
                hd_mean, hd_std = _mean_std([f[1] for f in folds])
                rows.append({"method": method, "labelled_cases": budget, "region": region, "folds": len(folds),
                             "dice_mean": dice_mean, "dice_std": dice_std, "hd95_mean": hd_mean, "hd95_std": hd_std,
                             "hd95_undefined_cases": sum(f[2] for f in folds)})
    folder = benchmark.output_folder
    files = {"csv": join(folder, "results.csv"), "case_csv": join(folder, "results_per_case.csv"),
             "json": join(folder, "results.json"), "markdown": join(folder, "results.md"),
             "plot": join(folder, "dice_vs_labels.png")}
    header = (f"{benchmark.dataset_name}, {benchmark.configuration}, {len(cases)} test cases, folds "
              f"{list(benchmark.folds)}, {machine(benchmark.device)}")
    markdown = _markdown(benchmark, rows, regions, settings, header)
    report = {"dataset": benchmark.dataset_name, "configuration": benchmark.configuration, "plans": benchmark.plans,
              "machine": machine(benchmark.device), "test_cases": len(cases), "methods": list(benchmark.methods),
              "budgets": list(benchmark.budgets), "folds": list(benchmark.folds), "regions": regions,
              "settings": settings, "results": rows, "per_case": case_rows, "markdown": markdown, "files": files}
    _write_csv(files["csv"], rows)
    _write_csv(files["case_csv"], case_rows)
    save_json({k: v for k, v in report.items() if k not in ("markdown", "files")}, files["json"], sort_keys=False)
    with open(files["markdown"], "w") as f:
        f.write(markdown)
    _plot(benchmark, rows, regions, files["plot"], header)
    return report


def _write_csv(path: str, rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(mean: float, std: float, digits: int) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(benchmark: Benchmark, rows: List[dict], regions: List[str], settings: dict, header: str) -> str:
    lookup = {(r["method"], r["labelled_cases"], r["region"]): r for r in rows}
    lines = [f"# Semi-supervised comparison: {benchmark.dataset_name}", "", header + ".",
             "Mean ± standard deviation over folds of the mean over test cases. HD95 in mm; cases where exactly one "
             "of prediction and reference is empty have no HD95 and are left out (counted in results.csv).", ""]
    for metric, digits, title in (("dice", 3, "Dice"), ("hd95", 2, "HD95 (mm)")):
        lines += [f"## {title}", ""]
        columns = [f"{METHOD_TITLES[m]}: {r}" for m in benchmark.methods for r in regions]
        lines.append("| labelled cases | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for budget in benchmark.budgets:
            cells = [_cell(lookup[(m, budget, r)][f"{metric}_mean"], lookup[(m, budget, r)][f"{metric}_std"], digits)
                     for m in benchmark.methods for r in regions]
            lines.append(f"| {budget} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Training settings (read from each model's debug.json)", ""]
    for name, values in settings.items():
        lines.append(f"- {METHOD_TITLES.get(name, name)}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines) + "\n"


def _plot(benchmark: Benchmark, rows: List[dict], regions: List[str], path: str, header: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), squeeze=False)
    for axis, region in zip(axes[0], regions):
        for method in benchmark.methods:
            series = sorted((r for r in rows if r["method"] == method and r["region"] == region),
                            key=lambda r: r["labelled_cases"])
            x = [r["labelled_cases"] for r in series]
            mean = np.array([r["dice_mean"] for r in series])
            std = np.array([r["dice_std"] for r in series])
            axis.plot(x, mean, marker="o", label=METHOD_TITLES[method])
            axis.fill_between(x, mean - std, mean + std, alpha=0.2)
        axis.set_title(region)
        axis.set_xlabel("labelled training cases")
        axis.set_ylabel("Dice")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(header, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
