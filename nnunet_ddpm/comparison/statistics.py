"""Paired comparison of two methods on the same test cases: the mean difference and its bootstrap interval."""
import numpy as np

SEED = 0
RESAMPLES = 10_000


def paired_difference(method: np.ndarray, baseline: np.ndarray, confidence: float = 0.95,
                      resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Mean of ``method - baseline`` over test cases, with a percentile bootstrap interval over cases.

    ``method`` and ``baseline`` are (folds, cases) arrays of one metric: row k holds fold k's models' values on the
    test cases, in the same case order. The unit of resampling is the test case, because every fold's models
    predict the same held-out cases, so the folds' values of one case are not independent: a case's difference is
    the mean over its folds, and the bootstrap resamples those per-case differences with replacement.

    A pair where either value is NaN (an HD95 with exactly one empty mask, a Dice of two empty masks) is dropped
    from both, and counted; a case with no pair left is dropped. The generator is seeded, so the same input gives
    the same interval. With fewer than two cases there is no interval (NaN bounds).

    Returns ``mean``, ``low``, ``high``, ``cases`` (cases used) and ``dropped_pairs``."""
    method, baseline = np.atleast_2d(np.asarray(method, float)), np.atleast_2d(np.asarray(baseline, float))
    if method.shape != baseline.shape:
        raise ValueError(f"Paired values need the same (folds, cases) shape, got {method.shape} and {baseline.shape}")
    differences = method - baseline
    defined = ~np.isnan(differences)
    used = defined.any(axis=0)
    per_case = np.nansum(differences[:, used], axis=0) / defined[:, used].sum(axis=0)
    result = {"mean": float(per_case.mean()) if per_case.size else float("nan"), "low": float("nan"),
              "high": float("nan"), "cases": int(per_case.size), "dropped_pairs": int((~defined).sum())}
    if per_case.size >= 2:
        rng = np.random.default_rng(seed)
        means = per_case[rng.integers(0, per_case.size, (resamples, per_case.size))].mean(axis=1)
        tail = 100 * (1 - confidence) / 2
        result["low"], result["high"] = (float(v) for v in np.percentile(means, [tail, 100 - tail]))
    return result
