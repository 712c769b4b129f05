"""The comparison report: per region, the mean Dice / HD95 of every method and budget (mean and standard deviation
over models, one per fold and run, of each model's mean over test cases), the share of cases without the region where
the method predicts it, and each DDPM method's paired difference to the supervised baseline on the same test cases,
with a bootstrap interval over test cases and runs; as CSV, JSON (with the case-level results and the settings),
Markdown tables and a PNG plot.

Honesty rules: the settings every model was trained with (epochs, iterations, diffusion timesteps) are read from
its own output folder, and models of one method must agree, else the report is refused; the machine and the number
of test cases are stated; a standard deviation is only given where there are several folds, and a difference
between methods only with its interval.
"""
import csv
import math
import platform
import warnings
from typing import Dict, List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json

from nnunet_ddpm.comparison.evaluation import EVALUATION_FILE
from nnunet_ddpm.comparison.methods import BASELINE, title as method_title
from nnunet_ddpm.comparison.grid import Benchmark, BenchmarkError
from nnunet_ddpm.comparison.statistics import RESAMPLES, SEED, run_aware_difference
from nnunet_ddpm.splits.label_budget import budget_order

SETTINGS_KEYS = ("num_epochs", "num_iterations_per_epoch", "batch_size", "pretraining_patch_size", "initial_lr",
                 "finetune_timestep", "feature_timesteps", "feature_stages", "ensemble_size", "diffusion")


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
        for run in benchmark.runs:
            for budget in benchmark.budgets:
                for fold in benchmark.folds:
                    folder = benchmark.model_folder(benchmark.trainer(method, budget), fold, run)
                    name = f"{benchmark.trainer(method, budget)} fold {fold}" + \
                        (f" {run.name}" if len(benchmark.runs) > 1 else "")
                    found[name] = trained_settings(folder)
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
    """Mean and sample standard deviation over models (folds x runs); no standard deviation (NaN) from one model."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _paired_rows(benchmark: Benchmark, case_rows: List[dict], regions: List[str], cases: List[str]) -> List[dict]:
    """Each DDPM method minus the supervised baseline, per budget and region, on the same test cases: per run, each
    case's difference averaged over folds; then ``statistics.run_aware_difference`` over cases and runs (run r of every
    method shares its seed and labelled cases, so the runs are paired). None without the baseline."""
    if BASELINE not in benchmark.methods:
        return []
    value = {(r["method"], r["labelled_cases"], r["seed"], r["label_draw"], r["fold"], r["region"], r["case"]): r
             for r in case_rows}

    def table(method, budget, region, metric):  # (runs, folds, cases); NaN where a case has no result
        return np.array([[[value[key][metric] if key in value else float("nan") for key in
                           ((method, budget, run.seed, run.draw, fold, region, case) for case in cases)]
                          for fold in benchmark.folds] for run in benchmark.runs], dtype=float)

    rows = []
    for method in (m for m in benchmark.methods if m != BASELINE):
        for budget in benchmark.budgets:
            for region in regions:
                row = {"method": method, "baseline": BASELINE, "labelled_cases": budget, "region": region,
                       "runs": len(benchmark.runs)}
                for metric in ("dice", "hd95"):
                    differences = table(method, budget, region, metric) - table(BASELINE, budget, region, metric)
                    with np.errstate(invalid="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # a case undefined in every fold: NaN
                        per_run = np.nanmean(differences, axis=1)
                    found = run_aware_difference(per_run, np.zeros_like(per_run), paired_runs=True)
                    row |= {f"{metric}_difference": found["mean"], f"{metric}_low": found["low"],
                            f"{metric}_high": found["high"], f"{metric}_cases": found["cases"],
                            f"{metric}_dropped_pairs": int(np.isnan(differences).sum())}
                rows.append(row)
    return rows


def _false_positive_cases(values: List[dict]) -> tuple:
    """(cases without the region in the reference where the prediction has it, cases without it in the reference);
    (0, 0) for evaluations written before the region sizes were recorded."""
    absent = [r for r in values if r.get("reference_voxels") == 0]
    return sum(r["predicted_voxels"] > 0 for r in absent), len(absent)


def write_report(benchmark: Benchmark, cases: List[str]) -> dict:
    settings = _settings_by_method(benchmark)
    case_rows, rows = [], []
    regions = None
    for method in benchmark.methods:
        for budget in benchmark.budgets:
            per_model = {}
            for run in benchmark.runs:
                for fold in benchmark.folds:
                    evaluation = load_json(join(benchmark.prediction_folder(method, budget, fold, run),
                                                EVALUATION_FILE))
                    regions = regions or evaluation["regions"]
                    for r in evaluation["per_case"]:
                        case_rows.append({"method": method, "labelled_cases": budget, "seed": run.seed,
                                          "label_draw": run.draw, "fold": fold, **r})
                    for region in evaluation["regions"]:
                        values = [r for r in evaluation["per_case"] if r["region"] == region]
                        per_model.setdefault(region, []).append(
                            (float(np.nanmean([r["dice"] for r in values]))
                             if any(not math.isnan(r["dice"]) for r in values) else float("nan"),
                             float(np.nanmean([r["hd95"] for r in values]))
                             if any(not math.isnan(r["hd95"]) for r in values) else float("nan"),
                             sum(math.isnan(r["hd95"]) for r in values), *_false_positive_cases(values)))
            for region, models in per_model.items():
                dice_mean, dice_std = _mean_std([f[0] for f in models])
                hd_mean, hd_std = _mean_std([f[1] for f in models])
                false_positives, absent = sum(f[3] for f in models), sum(f[4] for f in models)
                rows.append({"method": method, "labelled_cases": budget, "region": region,
                             "runs": len(benchmark.runs), "folds": len(benchmark.folds), "models": len(models),
                             "dice_mean": dice_mean, "dice_std": dice_std, "hd95_mean": hd_mean, "hd95_std": hd_std,
                             "hd95_undefined_cases": sum(f[2] for f in models),
                             "false_positive_cases": false_positives, "region_absent_cases": absent,
                             "false_positive_share": false_positives / absent if absent else float("nan")})
    paired = _paired_rows(benchmark, case_rows, regions, cases)
    folder = benchmark.output_folder
    files = {"csv": join(folder, "results.csv"), "case_csv": join(folder, "results_per_case.csv"),
             "paired_csv": join(folder, "paired_differences.csv"), "json": join(folder, "results.json"),
             "markdown": join(folder, "results.md"), "plot": join(folder, "dice_vs_labels.png")}
    header = (f"{benchmark.dataset_name}, {benchmark.configuration}, {len(cases)} test cases, folds "
              f"{list(benchmark.folds)}, " + (f"{len(benchmark.runs)} runs (seeds {list(benchmark.seeds)} x label "
                                              f"draws {list(benchmark.label_draws)}), " if len(benchmark.runs) > 1
                                              else "") + machine(benchmark.device))
    markdown = _markdown(benchmark, rows, paired, regions, settings, header)
    report = {"dataset": benchmark.dataset_name, "configuration": benchmark.configuration, "plans": benchmark.plans,
              "machine": machine(benchmark.device), "test_cases": len(cases), "methods": list(benchmark.methods),
              "budgets": list(benchmark.budgets), "folds": list(benchmark.folds),
              "runs": [{"seed": r.seed, "label_draw": r.draw} for r in benchmark.runs], "regions": regions,
              "settings": settings, "results": rows, "paired_differences": paired,
              "bootstrap": {"confidence": 0.95, "resamples": RESAMPLES, "seed": SEED,
                            "unit": "test case, then run" if len(benchmark.runs) > 1 else "test case"},
              "per_case": case_rows, "markdown": markdown, "files": files}
    _write_csv(files["csv"], rows)
    _write_csv(files["case_csv"], case_rows)
    if paired:
        _write_csv(files["paired_csv"], paired)
    save_json({k: v for k, v in report.items() if k not in ("markdown", "files")}, files["json"], sort_keys=False)
    with open(files["markdown"], "w") as f:
        f.write(markdown)
    _plot(benchmark, rows, paired, regions, files["plot"], header)
    return report


def _write_csv(path: str, rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(mean: float, std: float, digits: int, best: bool = False) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")
    return f"**{text}**" if best else text


def _difference_cell(row: dict, metric: str, digits: int) -> str:
    mean, low, high = (row[f"{metric}_{k}"] for k in ("difference", "low", "high"))
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" + ("" if math.isnan(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]")
    dropped = row[f"{metric}_dropped_pairs"]
    return text + f" ({row[f'{metric}_cases']} cases" + (f", {dropped} pairs dropped)" if dropped else ")")


METRICS = (("dice", 3, "Dice", max), ("hd95", 2, "HD95 (mm)", min))  # name, digits, title, which value is best


def _markdown(benchmark: Benchmark, rows: List[dict], paired: List[dict], regions: List[str], settings: dict,
              header: str) -> str:
    lookup = {(r["method"], r["labelled_cases"], r["region"]): r for r in rows}
    one_model = len(benchmark.folds) * len(benchmark.runs) == 1
    models = " and ".join(n for n, k in (("folds", benchmark.folds), ("runs", benchmark.runs)) if len(k) > 1)
    lines = [f"# Semi-supervised comparison: {benchmark.dataset_name}", "", header + ".", "",
             ("Each value is the mean over the test cases (one model: no standard deviation)." if one_model else
              f"Each value is the mean ± standard deviation over models ({models}) of each model's mean over the "
              f"test cases.") +
             " The best value of each row is in bold (Dice: highest, HD95: lowest). HD95 in mm; a case where exactly "
             "one of prediction and reference is empty has no HD95 and is left out (the count follows the value).", ""]
    if paired:
        runs = len(benchmark.runs)
        lines += ["Paired difference: method minus nnU-Net (supervised) on the same test cases and folds, per case "
                  "(averaged over folds), then the mean over cases" + (f" and the {runs} runs" if runs > 1 else "") +
                  " [95 % percentile bootstrap interval over test cases" +
                  (", then runs, so that it holds the training noise" if runs > 1 else
                   "; one run: the interval leaves out how much a second training would differ") +
                  f", {RESAMPLES} resamples, seed {SEED}]. Dice: positive is better; HD95: negative is better. "
                  "Pairs where either value is undefined are dropped.", ""]
    for region in regions:
        lines += [f"## {region}", ""]
        for metric, digits, title, best in METRICS:
            lines += [f"### {title}", "", "| labelled cases | " + " | ".join(
                method_title(m) for m in benchmark.methods) + " |", "|---" * (len(benchmark.methods) + 1) + "|"]
            for budget in benchmark.budgets:
                found = [lookup[(m, budget, region)] for m in benchmark.methods]
                means = [r[f"{metric}_mean"] for r in found if not math.isnan(r[f"{metric}_mean"])]
                top = best(means) if len(means) > 1 else None
                cells = [_cell(r[f"{metric}_mean"], r[f"{metric}_std"], digits, r[f"{metric}_mean"] == top) +
                         (f" ({r['hd95_undefined_cases']} undefined)" if metric == "hd95" and
                          r["hd95_undefined_cases"] else "") for r in found]
                lines.append(f"| {budget} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["### Cases without the region where it is predicted (false-positive cases)", "",
                  "| labelled cases | " + " | ".join(method_title(m) for m in benchmark.methods) + " |",
                  "|---" * (len(benchmark.methods) + 1) + "|"]
        for budget in benchmark.budgets:
            found = [lookup[(m, budget, region)] for m in benchmark.methods]
            lines.append(f"| {budget} | " + " | ".join(
                f"{r['false_positive_cases']} of {r['region_absent_cases']}" if r["region_absent_cases"] else "n/a"
                for r in found) + " |")
        lines.append("")
        if paired:
            compared = [m for m in benchmark.methods if m != BASELINE]
            lines += [f"### Paired difference to {method_title(BASELINE)}", "",
                      "| labelled cases | " + " | ".join(f"{method_title(m)}: {title}" for m in compared
                                                         for _, _, title, _ in METRICS) + " |",
                      "|---" * (2 * len(compared) + 1) + "|"]
            by_key = {(r["method"], r["labelled_cases"], r["region"]): r for r in paired}
            for budget in benchmark.budgets:
                cells = [_difference_cell(by_key[(m, budget, region)], metric, digits)
                         for m in compared for metric, digits, _, _ in METRICS]
                lines.append(f"| {budget} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Training settings (read from each model's debug.json)", ""]
    for name, values in settings.items():
        lines.append(f"- {method_title(name)}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines) + "\n"


def _plot(benchmark: Benchmark, rows: List[dict], paired: List[dict], regions: List[str], path: str,
          header: str) -> None:
    """Dice against labelled cases per region (error bars: standard deviation over models, where there are several);
    below, with the baseline, each DDPM method's paired Dice difference with its bootstrap interval, in the method's
    colour of the upper row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panel_rows = 2 if paired else 1
    budgets = sorted(benchmark.budgets, key=budget_order)
    position = {budget: i for i, budget in enumerate(budgets)}  # evenly spaced, 'all' last
    figure, axes = plt.subplots(panel_rows, len(regions), figsize=(4.2 * len(regions), 3.6 * panel_rows),
                                squeeze=False)
    colour = {method: f"C{i}" for i, method in enumerate(benchmark.methods)}  # one colour per method in every panel
    for column, region in enumerate(regions):
        axis = axes[0][column]
        for method in benchmark.methods:
            series = sorted((r for r in rows if r["method"] == method and r["region"] == region),
                            key=lambda r: position[r["labelled_cases"]])
            std = np.array([r["dice_std"] for r in series])
            axis.errorbar([position[r["labelled_cases"]] for r in series], [r["dice_mean"] for r in series],
                          yerr=None if np.isnan(std).all() else np.nan_to_num(std), marker="o", capsize=3,
                          label=method_title(method), color=colour[method])
        axis.set(title=region, xlabel="labelled training cases", ylabel="Dice", ylim=(0, 1))
        axis.grid(alpha=0.3)
        if paired:
            axis = axes[1][column]
            for method in (m for m in benchmark.methods if m != BASELINE):
                series = sorted((r for r in paired if r["method"] == method and r["region"] == region),
                                key=lambda r: position[r["labelled_cases"]])
                mean = np.array([r["dice_difference"] for r in series])
                interval = np.nan_to_num([mean - [r["dice_low"] for r in series],
                                          [r["dice_high"] for r in series] - mean])
                axis.errorbar([position[r["labelled_cases"]] for r in series], mean, yerr=interval, marker="o",
                              capsize=3, label=method_title(method), color=colour[method])
            axis.axhline(0, color="black", linewidth=0.8)
            axis.set(title=f"{region}: paired difference", xlabel="labelled training cases",
                     ylabel=f"Dice minus {method_title(BASELINE)}\n(95 % bootstrap interval)")
            axis.grid(alpha=0.3)
    for axis in axes.flat:
        axis.set_xticks(range(len(budgets)), [str(b) for b in budgets])
    for row in axes:
        row[0].legend(fontsize=8)
    figure.suptitle(header, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
