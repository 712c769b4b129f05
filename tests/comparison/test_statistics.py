"""The paired bootstrap against inputs whose answer is known by hand."""
import numpy as np
import pytest

from nnunet_ddpm.comparison.statistics import paired_difference


def test_constant_difference_has_a_zero_width_interval_at_that_value():
    baseline = np.array([[0.2, 0.5, 0.7, 0.1]])
    result = paired_difference(baseline + 0.25, baseline)
    assert result["mean"] == pytest.approx(0.25)
    assert result["low"] == pytest.approx(0.25) and result["high"] == pytest.approx(0.25)
    assert result["cases"] == 4 and result["dropped_pairs"] == 0


def test_two_cases_differing_by_0_and_1():
    # bootstrap means are 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4: the 2.5th and 97.5th percentiles are 0 and 1
    result = paired_difference(np.array([[1.0, 2.0]]), np.array([[1.0, 1.0]]))
    assert (result["mean"], result["low"], result["high"]) == (0.5, 0.0, 1.0)


def test_interval_width_of_a_larger_sample():
    # 400 differences with standard deviation about 1: the mean's 95 % interval is about +-1.96 / 20 wide
    differences = np.random.default_rng(1).normal(1.0, 1.0, 400)
    result = paired_difference(differences[None], np.zeros((1, 400)))
    spread = np.std(differences, ddof=1) / 20
    assert result["mean"] == pytest.approx(differences.mean())
    assert result["low"] == pytest.approx(differences.mean() - 1.96 * spread, abs=0.25 * spread)
    assert result["high"] == pytest.approx(differences.mean() + 1.96 * spread, abs=0.25 * spread)


def test_the_seed_makes_it_reproducible():
    rng = np.random.default_rng(2)
    method, baseline = rng.random((3, 10)), rng.random((3, 10))
    assert paired_difference(method, baseline) == paired_difference(method, baseline)
    assert paired_difference(method, baseline, seed=1) != paired_difference(method, baseline)


def test_folds_are_averaged_per_case_and_nan_pairs_dropped():
    nan = float("nan")
    method = np.array([[3.0, 5.0, nan, 4.0],
                       [5.0, nan, 1.0, nan]])
    baseline = np.array([[1.0, 2.0, 2.0, nan],
                         [1.0, 2.0, nan, nan]])
    # case 0: (2 + 4) / 2 = 3; case 1: 3 (its second fold dropped); cases 2 and 3 have no pair left
    result = paired_difference(method, baseline)
    assert result["mean"] == 3.0 and result["cases"] == 2 and result["dropped_pairs"] == 5
    assert result["low"] == result["high"] == 3.0


def test_fewer_than_two_cases_have_no_interval():
    result = paired_difference(np.array([[2.0]]), np.array([[1.0]]))
    assert result["mean"] == 1.0 and np.isnan(result["low"]) and np.isnan(result["high"])
    result = paired_difference(np.array([[float("nan")]]), np.array([[1.0]]))
    assert np.isnan(result["mean"]) and result["cases"] == 0 and result["dropped_pairs"] == 1


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same"):
        paired_difference(np.zeros((2, 3)), np.zeros((1, 3)))


def test_one_run_each_is_the_bootstrap_over_cases():
    from nnunet_ddpm.comparison.statistics import run_aware_difference
    method, baseline = np.array([[0.7, 0.5, 0.9, 0.4]]), np.array([[0.6, 0.6, 0.6, 0.6]])
    for paired in (True, False):
        found = run_aware_difference(method, baseline, paired_runs=paired)
        plain = paired_difference(method, baseline)
        assert [found[k] for k in ("mean", "low", "high")] == pytest.approx([plain[k] for k in ("mean", "low", "high")])


def test_unpaired_runs_are_resampled_on_each_side():
    """Baseline: two runs, 0.5 and 0.7 on every case; method: one run, 0.6. Resampling the baseline's runs gives the
    means 0.5, 0.6, 0.6, 0.7 (each run drawn with probability 1/2, two draws): the difference is +0.1, 0, 0 or -0.1,
    with probabilities 1/4, 1/2, 1/4, so the 95 % interval is [-0.1, +0.1] around the mean 0."""
    from nnunet_ddpm.comparison.statistics import run_aware_difference
    found = run_aware_difference(np.full((1, 5), 0.6), np.array([[0.5] * 5, [0.7] * 5]), paired_runs=False)
    assert found["mean"] == pytest.approx(0.0, abs=1e-12) and found["runs"] == [1, 2] and found["cases"] == 5
    assert (found["low"], found["high"]) == (pytest.approx(-0.1), pytest.approx(0.1))
    with pytest.raises(ValueError, match="Paired runs need the same"):
        run_aware_difference(np.full((1, 5), 0.6), np.array([[0.5] * 5, [0.7] * 5]), paired_runs=True)
