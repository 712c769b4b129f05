"""The report from hand-made evaluation.json files: tables, best values, paired differences, CSV/JSON and plot."""
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from nnunet_ddpm.comparison.grid import Run
from nnunet_ddpm.comparison.report import write_report
from nnunet_ddpm.comparison.statistics import paired_difference

CASES = ["c0", "c1", "c2"]
# (method, fold) -> per-case Dice of region "tumour"; HD95 = 10 * (1 - Dice), one undefined
DICE = {("baseline", 0): [0.5, 0.6, 0.7], ("baseline", 1): [0.4, 0.6, 0.8],
        ("finetune", 0): [0.6, 0.7, 0.7], ("finetune", 1): [0.6, 0.8, 0.8]}


@dataclass
class FakeBenchmark:
    """The attributes of runner.Benchmark that the report reads."""
    output_folder: str
    methods: tuple = ("baseline", "finetune")
    budgets: tuple = (5,)
    folds: tuple = (0, 1)
    dataset_name: str = "Dataset999_Hand"
    configuration: str = "2d"
    plans: str = "nnUNetPlans"
    device: str = "cpu"
    trains_pretraining: bool = False
    seeds: tuple = (12345,)
    label_draws: tuple = (0,)

    @property
    def runs(self):
        return [Run(seed, draw) for draw in self.label_draws for seed in self.seeds]

    def trainer(self, method, budget):
        return f"{method}_{budget}labels"

    def _run(self, run):
        return "" if run is None or run == self.runs[0] else f"_{run.name}"

    def model_folder(self, trainer, fold, run=None):
        return str(Path(self.output_folder) / "models" / trainer / f"fold_{fold}{self._run(run)}")

    def prediction_folder(self, method, budget, fold, run=None):
        return str(Path(self.output_folder) / "predictions" / method / f"{budget}labels" /
                   f"fold_{fold}{self._run(run)}")


def hd(method, fold, case):
    return float("nan") if (method, fold, case) == ("finetune", 1, 2) else 10 * (1 - DICE[(method, fold)][case])


@pytest.fixture
def report(tmp_path):
    benchmark = FakeBenchmark(str(tmp_path))
    for (method, fold), dice in DICE.items():
        folder = Path(benchmark.model_folder(benchmark.trainer(method, 5), fold))
        folder.mkdir(parents=True)
        (folder / "debug.json").write_text(json.dumps({"num_epochs": "2"}))
        folder = Path(benchmark.prediction_folder(method, 5, fold))
        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text(json.dumps({"regions": ["tumour"], "per_case": [
            {"case": c, "region": "tumour", "dice": d, "hd95": hd(method, fold, i)}
            for i, (c, d) in enumerate(zip(CASES, dice))]}))
    return benchmark, write_report(benchmark, CASES)


def test_means_over_folds_and_best_values(report):
    benchmark, report = report
    rows = {r["method"]: r for r in report["results"]}
    # per-fold means over cases 0.6 and 0.6 (baseline), 0.6667 and 0.7333 (finetune)
    assert rows["baseline"]["dice_mean"] == pytest.approx(0.6) and rows["baseline"]["dice_std"] == pytest.approx(0)
    assert rows["finetune"]["dice_mean"] == pytest.approx(0.7)
    assert rows["finetune"]["dice_std"] == pytest.approx(np.std([2 / 3, 2.2 / 3], ddof=1))
    assert rows["finetune"]["hd95_mean"] == pytest.approx(np.mean([10 / 3, 3]))  # fold 1: the defined cases
    assert rows["finetune"]["hd95_undefined_cases"] == 1
    markdown = report["markdown"]
    assert "| labelled cases | nnU-Net (supervised) | DDPM fine-tune |" in markdown
    assert "| 5 | 0.600 ± 0.000 | **0.700 ± 0.047** |" in markdown  # Dice: highest in bold
    assert "| 5 | 4.00 ± 0.00 | **3.17 ± 0.24** (1 undefined) |" in markdown  # HD95: lowest in bold


def test_paired_differences(report):
    benchmark, report = report
    (row,) = report["paired_differences"]
    # per case, finetune - baseline averaged over folds: (0.1 + 0.2) / 2, (0.1 + 0.2) / 2, (0 + 0) / 2
    expected = paired_difference(np.array(list(DICE.values())[2:]), np.array(list(DICE.values())[:2]))
    assert row["dice_difference"] == pytest.approx(0.1) and row["dice_difference"] == expected["mean"]
    assert (row["dice_low"], row["dice_high"]) == (expected["low"], expected["high"])
    assert row["dice_low"] == pytest.approx(0.0) and row["dice_high"] == pytest.approx(0.15)
    assert row["hd95_cases"] == 3 and row["hd95_dropped_pairs"] == 1
    assert row["hd95_difference"] == pytest.approx(np.mean([-1.5, -1.5, 0.0]))  # case 2: fold 0 only
    assert "| 5 | +0.100 [+0.000, +0.150] (3 cases) | -1.00 [" in report["markdown"]
    assert "(3 cases, 1 pairs dropped) |" in report["markdown"]
    with open(Path(benchmark.output_folder) / "paired_differences.csv") as f:
        (saved,) = csv.DictReader(f)
    assert float(saved["dice_difference"]) == pytest.approx(0.1)
    saved = json.loads((Path(benchmark.output_folder) / "results.json").read_text())
    assert saved["paired_differences"][0]["dice_high"] == pytest.approx(0.15)
    assert saved["bootstrap"]["seed"] == 0 and len(saved["per_case"]) == 4 * 3
    assert write_report(benchmark, CASES)["paired_differences"] == report["paired_differences"]  # reproducible


def test_one_fold_has_no_standard_deviation(tmp_path):
    benchmark = FakeBenchmark(str(tmp_path), folds=(0,))
    for method in benchmark.methods:
        folder = Path(benchmark.model_folder(benchmark.trainer(method, 5), 0))
        folder.mkdir(parents=True)
        (folder / "debug.json").write_text("{}")
        folder = Path(benchmark.prediction_folder(method, 5, 0))
        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text(json.dumps({"regions": ["tumour"], "per_case": [
            {"case": c, "region": "tumour", "dice": d, "hd95": 1.0} for c, d in zip(CASES, DICE[(method, 0)])]}))
    report = write_report(benchmark, CASES)
    assert all(math.isnan(r["dice_std"]) for r in report["results"])
    assert "| 5 | 0.600 | **0.667** |" in report["markdown"] and "±" not in report["markdown"]


def test_plot_has_a_row_of_paired_differences(report):
    benchmark, report = report
    image = imread(Path(benchmark.output_folder) / "dice_vs_labels.png")
    # one region: 4.2 x 7.2 inches at 120 dpi (two rows of panels)
    assert image.shape[:2] == (864, 504)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_every_label_is_a_row_of_its_own(tmp_path):
    """``--budgets 5 all``: the 'all' row follows the numbers in the tables, the CSV and the plot."""
    benchmark = FakeBenchmark(str(tmp_path), folds=(0,), budgets=("all", 5))
    for method in benchmark.methods:
        for budget, shift in ((5, 0.0), ("all", 0.2)):
            folder = Path(benchmark.model_folder(benchmark.trainer(method, budget), 0))
            folder.mkdir(parents=True)
            (folder / "debug.json").write_text("{}")
            folder = Path(benchmark.prediction_folder(method, budget, 0))
            folder.mkdir(parents=True)
            (folder / "evaluation.json").write_text(json.dumps({"regions": ["tumour"], "per_case": [
                {"case": c, "region": "tumour", "dice": d + shift, "hd95": 1.0}
                for c, d in zip(CASES, DICE[(method, 0)])]}))
    report = write_report(benchmark, CASES)
    assert "| all | 0.800 | **0.867** |" in report["markdown"] and "| 5 | 0.600 | **0.667** |" in report["markdown"]
    with open(tmp_path / "results.csv") as f:
        rows = {(r["method"], r["labelled_cases"]): float(r["dice_mean"]) for r in csv.DictReader(f)}
    assert rows[("finetune", "all")] == pytest.approx(0.8 + 0.2 / 3) and rows[("baseline", "5")] == pytest.approx(0.6)
    assert imread(tmp_path / "dice_vs_labels.png").shape[:2] == (864, 504)


def write_model(benchmark, method, fold, run, dice, hd95=1.0, reference_voxels=None, predicted_voxels=None):
    folder = Path(benchmark.model_folder(benchmark.trainer(method, 5), fold, run))
    folder.mkdir(parents=True)
    (folder / "debug.json").write_text("{}")
    folder = Path(benchmark.prediction_folder(method, 5, fold, run))
    folder.mkdir(parents=True)
    rows = [{"case": c, "region": "tumour", "dice": d, "hd95": hd95} for c, d in zip(CASES, dice)]
    if reference_voxels is not None:
        for row, r, p in zip(rows, reference_voxels, predicted_voxels):
            row |= {"reference_voxels": r, "predicted_voxels": p}
    (folder / "evaluation.json").write_text(json.dumps({"regions": ["tumour"], "per_case": rows}))


def test_runs_are_averaged_and_their_spread_enters_the_interval(tmp_path):
    """Two runs, one fold: fine-tune minus baseline is +0.1 on every case in run 1 and -0.1 in run 2. Over the runs
    the mean is 0; resampling the two runs gives the means of (1, 1), (1, 2), (2, 1), (2, 2): +0.1, 0, 0, -0.1, so the
    95 % interval is [-0.1, +0.1], where each run alone would claim an interval of zero width."""
    benchmark = FakeBenchmark(str(tmp_path), folds=(0,), seeds=(1, 2))
    for run, sign in zip(benchmark.runs, (1, -1)):
        write_model(benchmark, "baseline", 0, run, [0.5, 0.6, 0.7])
        write_model(benchmark, "finetune", 0, run, [0.5 + sign * 0.1, 0.6 + sign * 0.1, 0.7 + sign * 0.1])
    report = write_report(benchmark, CASES)
    (row,) = report["paired_differences"]
    assert row["runs"] == 2 and row["dice_difference"] == pytest.approx(0.0, abs=1e-12)
    assert (row["dice_low"], row["dice_high"]) == (pytest.approx(-0.1), pytest.approx(0.1))
    rows = {r["method"]: r for r in report["results"]}
    assert rows["finetune"]["models"] == 2 and rows["finetune"]["dice_mean"] == pytest.approx(0.6)
    assert rows["finetune"]["dice_std"] == pytest.approx(np.std([0.7, 0.5], ddof=1))
    assert "2 runs (seeds [1, 2] x label draws [0])" in report["markdown"]
    assert "then runs, so that it holds the training noise" in report["markdown"]
    assert [(r["seed"], r["label_draw"]) for r in report["per_case"][:4]] == [(1, 0)] * 3 + [(2, 0)]


def test_false_positive_cases_are_counted(tmp_path):
    """c0 and c1 have no tumour in the reference; the fine-tune predicts it on both, the baseline on c1 only."""
    benchmark = FakeBenchmark(str(tmp_path), folds=(0,))
    write_model(benchmark, "baseline", 0, None, [float("nan"), 0.0, 0.7], reference_voxels=[0, 0, 40],
                predicted_voxels=[0, 3, 35])
    write_model(benchmark, "finetune", 0, None, [0.0, 0.0, 0.8], reference_voxels=[0, 0, 40],
                predicted_voxels=[5, 9, 41])
    report = write_report(benchmark, CASES)
    rows = {r["method"]: r for r in report["results"]}
    assert (rows["baseline"]["false_positive_cases"], rows["baseline"]["region_absent_cases"]) == (1, 2)
    assert rows["finetune"]["false_positive_share"] == 1.0
    assert "### Cases without the region where it is predicted (false-positive cases)" in report["markdown"]
    assert "| 5 | 1 of 2 | 2 of 2 |" in report["markdown"]


def test_paired_differences_are_drawn_in_each_methods_colour(tmp_path):
    """The lower row draws the fine-tune's difference in the fine-tune's colour (matplotlib's C1, orange), never in the
    baseline's (C0, blue)."""
    benchmark = FakeBenchmark(str(tmp_path), folds=(0,))
    write_model(benchmark, "baseline", 0, None, [0.5, 0.6, 0.7])
    write_model(benchmark, "finetune", 0, None, [0.6, 0.65, 0.9])
    write_report(benchmark, CASES)
    image = imread(tmp_path / "dice_vs_labels.png")[..., :3]
    lower = image[image.shape[0] // 2:]

    def near(rgb):
        return (np.abs(lower - np.array(rgb) / 255).max(axis=-1) < 0.08).sum()

    assert near((255, 127, 14)) > 50  # C1
    assert near((31, 119, 180)) == 0  # C0
