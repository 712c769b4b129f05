"""Paired comparison of two methods on the same test cases: the mean difference and a bootstrap interval that
includes the spread between repeated trainings (runs) of each method, not only the choice of test cases."""
import numpy as np

SEED = 0
RESAMPLES = 10_000
_CHUNK = 500  # resamples drawn at once: bounds memory at (chunk, runs, cases) for large test sets


def paired_difference(method: np.ndarray, baseline: np.ndarray, confidence: float = 0.95,
                      resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Mean of ``method - baseline`` over test cases, with a percentile bootstrap interval over cases.

    ``method`` and ``baseline`` are (folds, cases) arrays of one metric from one run: row k holds fold k's models'
    values on the test cases, in the same case order. The unit of resampling is the test case, because every fold's
    models predict the same held-out cases, so the folds' values of one case are not independent: a case's difference
    is the mean over its folds. A pair where either value is NaN (an HD95 with exactly one empty mask, a Dice of two
    empty masks) is dropped and counted. Returns ``mean``, ``low``, ``high``, ``cases``, ``dropped_pairs`` and
    ``runs``; see ``run_aware_difference`` for several runs."""
    method, baseline = np.atleast_2d(np.asarray(method, float)), np.atleast_2d(np.asarray(baseline, float))
    if method.shape != baseline.shape:
        raise ValueError(f"Paired values need the same (folds, cases) shape, got {method.shape} and {baseline.shape}")
    differences = method - baseline
    dropped = int(np.isnan(differences).sum())
    with np.errstate(invalid="ignore"), _quiet_empty_means():
        per_case = np.nanmean(differences, axis=0)
    result = run_aware_difference(per_case[None], np.zeros_like(per_case)[None], True, confidence, resamples, seed)
    return result | {"dropped_pairs": dropped}


def run_aware_difference(method: np.ndarray, baseline: np.ndarray, paired_runs: bool, confidence: float = 0.95,
                         resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Mean of ``method - baseline`` over runs and test cases, with a two-level percentile bootstrap: each resample
    draws the test cases with replacement, then the runs with replacement, so the interval holds both the choice of
    test cases and the training noise (resampling the higher level of a hierarchy, then the lower: Davison & Hinkley,
    Bootstrap Methods and their Application, 1997, section 3.8).

    ``method`` is (runs, cases), ``baseline`` (runs', cases), NaN where a value is undefined. With ``paired_runs``
    (the same runs on both sides, in the same order: run r of every method shares its seed and labelled cases) the
    runs of the per-run differences are resampled; otherwise each side's runs are resampled on their own. One run each
    gives the plain bootstrap over cases. A case without any defined value is dropped; with fewer than two cases
    there is no interval (NaN bounds). The generator is seeded: the same input gives the same interval.

    Returns ``mean``, ``low``, ``high``, ``cases`` (cases used), ``runs`` (method's, baseline's) and
    ``dropped_pairs`` (undefined values)."""
    method, baseline = np.atleast_2d(np.asarray(method, float)), np.atleast_2d(np.asarray(baseline, float))
    if method.shape[1] != baseline.shape[1]:
        raise ValueError(f"Both sides need the same test cases (columns), got {method.shape} and {baseline.shape}")
    if paired_runs and method.shape != baseline.shape:
        raise ValueError(f"Paired runs need the same (runs, cases) shape, got {method.shape} and {baseline.shape}")
    sides = [method - baseline] if paired_runs else [method, baseline]
    used = np.all([~np.isnan(side).all(axis=0) for side in sides], axis=0)
    sides = [side[:, used] for side in sides]
    dropped = int(sum(np.isnan(side).sum() for side in sides))

    def statistic(run_picks, case_picks) -> np.ndarray:  # (resamples,) means of the resampled runs and cases
        values = [np.nanmean(side[picks[:, :, None], case_picks[:, None, :]], axis=(1, 2))
                  for side, picks in zip(sides, run_picks)]
        return values[0] if paired_runs else values[0] - values[1]

    cases = int(used.sum())
    whole = [np.arange(side.shape[0])[None] for side in sides]
    with _quiet_empty_means():
        mean = float(statistic(whole, np.arange(cases)[None])[0]) if cases else float("nan")
    result = {"mean": mean, "low": float("nan"), "high": float("nan"), "cases": cases,
              "runs": [int(method.shape[0]), int(baseline.shape[0])], "dropped_pairs": dropped}
    if cases < 2:
        return result
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        case_picks = rng.integers(0, cases, (size, cases))
        run_picks = [np.zeros((size, 1), int) if side.shape[0] == 1 else
                     rng.integers(0, side.shape[0], (size, side.shape[0])) for side in sides]
        with _quiet_empty_means():
            means.append(statistic(run_picks, case_picks))
    means = np.concatenate(means)
    tail = 100 * (1 - confidence) / 2
    result["low"], result["high"] = (float(v) for v in np.nanpercentile(means, [tail, 100 - tail]))
    return result


class _quiet_empty_means:
    """A resample may draw only undefined values of one case (NaN, as it should be): no warning for it."""

    def __enter__(self):
        import warnings
        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)
