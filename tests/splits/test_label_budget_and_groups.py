import pytest
from nnunetv2.utilities.crossval_split import generate_crossval_split

from nnunet_ddpm.splits.grouped_folds import (check_no_group_leakage, grouped_crossval_split, groups_from_regex)
from nnunet_ddpm.splits.label_budget import choose_labelled_cases
from nnunet_ddpm.splits.label_budget import LABEL_BUDGETS

CASES = [f"pat{p:02d}_slice{s:03d}" for p in range(12) for s in range(0, 50, 5)]  # 12 patients x 10 slices


def test_label_subsets_are_nested_deterministic_and_per_fold():
    for fold in (0, 1, 4, "all"):
        subsets = [choose_labelled_cases(CASES, n, fold) for n in LABEL_BUDGETS]
        for n, subset in zip(LABEL_BUDGETS, subsets):
            assert len(subset) == n == len(set(subset)) and set(subset) <= set(CASES)
        for smaller, larger in zip(subsets, subsets[1:]):
            assert set(smaller) < set(larger)
        assert subsets == [choose_labelled_cases(list(reversed(CASES)), n, fold) for n in LABEL_BUDGETS]
    assert choose_labelled_cases(CASES, 10, 0) != choose_labelled_cases(CASES, 10, 1)


def test_too_large_a_budget_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match="budget of 121 labelled cases .* fold 3 has only 120 training cases"):
        choose_labelled_cases(CASES, 121, 3)
    with pytest.raises(ValueError, match="at least 1 case"):
        choose_labelled_cases(CASES, 0, 0)


def test_every_trainer_has_every_budget():
    """Every comparison method's trainer, plain and _demo, at every budget: the runner checks budgets by number."""
    from nnunet_ddpm.comparison.methods import METHODS
    from nnunet_ddpm.training.variants.declaration import TRAINERS
    for base in [m.trainer + suffix for m in METHODS.values() for suffix in ("", "_demo")]:
        for n in (1, 2, 5, 10, 15, 20, 30, 40, 50, 100):
            cls = TRAINERS[f"{base}_{n}labels"]
            assert cls.num_labelled_cases == n and cls.__bases__[1].__name__ == base


def test_grouped_folds_never_split_a_patient():
    groups = groups_from_regex(CASES, r"^(pat\d+)_")
    assert len(set(groups.values())) == 12
    splits = grouped_crossval_split(CASES, groups, n_splits=5)
    assert sorted(c for fold in splits for c in fold["val"]) == sorted(CASES)  # each case validated once
    for fold in splits:
        assert not {groups[c] for c in fold["train"]} & {groups[c] for c in fold["val"]}
        assert sorted(fold["train"] + fold["val"]) == sorted(CASES)
    check_no_group_leakage(splits, groups)
    assert splits == grouped_crossval_split(list(reversed(CASES)), groups, n_splits=5)  # deterministic


def test_without_groups_the_split_is_nnunets_own():
    assert grouped_crossval_split(CASES) == generate_crossval_split(sorted(CASES), seed=12345, n_splits=5)


def test_bad_groups_and_leaking_splits_are_refused():
    with pytest.raises(ValueError, match="matches no part of 120 case identifiers"):
        groups_from_regex(CASES, r"^patient(\d+)")
    partial = {c: c[:5] for c in CASES[:100]}
    with pytest.raises(ValueError, match="no group for 20 of 120 cases"):
        grouped_crossval_split(CASES, partial)
    groups = groups_from_regex(CASES, r"^(pat\d+)_")
    leaking = generate_crossval_split(CASES, n_splits=5)  # case-level folds split patients
    with pytest.raises(ValueError, match="(?s)puts patients in two places:\n  fold 0: 12 patients in training and "
                                         "validation.*nnUNetv2_ddpm_make_splits"):
        check_no_group_leakage(leaking, groups)
    with pytest.raises(ValueError, match="2 groups cannot fill 5 folds"):
        grouped_crossval_split(CASES[:20], groups)


def test_a_groups_file_that_is_not_a_json_object_is_named_in_one_line(tmp_path):
    """nnUNetv2_ddpm_make_splits --groups on a stand-in preprocessed dataset (only what the command reads first)."""
    import os
    import subprocess
    dataset = tmp_path / "preprocessed" / "Dataset990_Fake"
    (dataset / "gt_segmentations").mkdir(parents=True)
    (dataset / "dataset.json").write_text('{"file_ending": ".nii.gz"}')
    for i in range(6):
        (dataset / "gt_segmentations" / f"case{i}.nii.gz").write_bytes(b"")
    env = dict(os.environ, nnUNet_preprocessed=str(tmp_path / "preprocessed"), nnUNet_raw=str(tmp_path),
               nnUNet_results=str(tmp_path))
    groups = tmp_path / "groups.json"
    for content, message in (("{case0: 1", "is not valid JSON"), ('["case0"]', "holds a JSON list")):
        groups.write_text(content)
        result = subprocess.run(["nnUNetv2_ddpm_make_splits", "-d", "990", "--groups", str(groups)], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"Group mapping file {groups} {message}" in result.stderr
    assert not (dataset / "splits_final.json").exists()


def test_other_draws_are_other_nested_subsets_and_draw_0_is_unchanged():
    import numpy as np
    # draw 0: the first N of one permutation seeded by 12345 + fold (the cases every earlier run trained on)
    assert choose_labelled_cases(CASES, 10, 2) == sorted(np.random.RandomState(12347).permutation(sorted(CASES))[:10])
    for fold in (0, 3):
        draws = [[choose_labelled_cases(CASES, n, fold, draw) for n in (5, 10, 20)] for draw in (0, 1, 2)]
        for subsets in draws:
            assert set(subsets[0]) < set(subsets[1]) < set(subsets[2])
        assert len({tuple(subsets[1]) for subsets in draws}) == 3  # three different 10-case sets
    assert choose_labelled_cases(CASES, 10, 0, 1) == choose_labelled_cases(list(reversed(CASES)), 10, 0, 1)
