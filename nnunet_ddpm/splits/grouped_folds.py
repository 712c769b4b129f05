"""Patient-grouped cross-validation folds written as nnU-Net's ``splits_final.json``.

A 2D slice dataset has many cases per patient; a fold that puts slices of one patient into training and validation
measures memory, not generalisation. The groups (patients) come from a mapping file ``{case: group}`` (the slice
converter writes ``case_groups.json``) or from a regular expression on the case identifiers. The mapping used is
stored beside the splits as ``case_groups.json`` so that trainers can check any splits file against it.
"""
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json, subfiles
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.crossval_split import generate_crossval_split
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from sklearn.model_selection import GroupKFold

from nnunet_ddpm.files import written_atomically

GROUPS_FILE = "case_groups.json"


def groups_from_regex(case_ids: Sequence[str], pattern: str) -> Dict[str, str]:
    """Group of each case: the first capture group (or the whole match) of ``pattern`` searched in its identifier."""
    regex = re.compile(pattern)
    groups, unmatched = {}, []
    for case in case_ids:
        match = regex.search(case)
        if match is None:
            unmatched.append(case)
        else:
            groups[case] = match.group(1) if regex.groups else match.group(0)
    if unmatched:
        raise ValueError(f"The group pattern {pattern!r} matches no part of {len(unmatched)} case identifiers "
                         f"(first: {unmatched[:3]}); it must find the patient in every case identifier.")
    return groups


def check_groups_cover_cases(groups: Dict[str, str], case_ids: Sequence[str], source: str) -> None:
    missing = sorted(set(case_ids) - set(groups))
    if missing:
        raise ValueError(f"The group mapping {source} has no group for {len(missing)} of {len(case_ids)} cases "
                         f"(first: {missing[:5]}). Every case needs a group (patient) identifier.")


def grouped_crossval_split(case_ids: Sequence[str], groups: Optional[Dict[str, str]] = None, n_splits: int = 5,
                           seed: int = 12345) -> List[dict]:
    """nnU-Net-style list of {'train': [...], 'val': [...]}; without groups exactly nnU-Net's own 5-fold split."""
    case_ids = sorted(case_ids)
    if groups is None:
        return generate_crossval_split(case_ids, seed=seed, n_splits=n_splits)
    check_groups_cover_cases(groups, case_ids, "given")
    group_labels = [groups[c] for c in case_ids]
    if len(set(group_labels)) < n_splits:
        raise ValueError(f"{len(set(group_labels))} groups cannot fill {n_splits} folds; use fewer folds.")
    folds = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    ids = np.array(case_ids)
    return [{'train': list(map(str, ids[tr])), 'val': list(map(str, ids[va]))}
            for tr, va in folds.split(ids, groups=group_labels)]


def check_no_group_leakage(splits: List[dict], groups: Dict[str, str], source: str = "splits_final.json") -> None:
    """Refuse splits in which a group has cases on both sides of a fold."""
    problems = []
    for k, fold in enumerate(splits):
        train_groups = {groups[c] for c in fold['train'] if c in groups}
        val_groups = {groups[c] for c in fold['val'] if c in groups}
        both = sorted(train_groups & val_groups)
        if both:
            problems.append(f"fold {k}: {len(both)} patients in training and validation (first: {both[:3]})")
    if problems:
        raise ValueError(f"{source} puts patients in two places:\n  " + "\n  ".join(problems) +
                         "\nWrite patient-grouped folds with nnUNetv2_ddpm_make_splits.")


def check_fold_against_groups(preprocessed_dataset_folder: str, fold, train_cases: Sequence[str],
                              val_cases: Sequence[str]) -> None:
    """If the dataset has a ``case_groups.json``, refuse a fold whose training and validation share a patient."""
    groups_file = join(preprocessed_dataset_folder, GROUPS_FILE)
    if fold == "all" or not isfile(groups_file):
        return
    check_no_group_leakage([{'train': list(train_cases), 'val': list(val_cases)}], load_json(groups_file),
                           source=f"The split of fold {fold} (splits_final.json, checked against {groups_file})")


class SplitRefused(SystemExit):
    """A fold that must not be trained on, found by a trainer before training. A SystemExit: raised inside
    ``nnUNetv2_train`` it ends the program with its message alone, not after a traceback through nnU-Net's run script;
    Python callers catch it by name."""


def check_split_for_training(preprocessed_dataset_folder: str, fold, identifiers: Sequence[str],
                             train_cases: Sequence[str], val_cases: Sequence[str], trainer: str) -> None:
    """Refuse (SplitRefused, one message) a fold whose ``splits_final.json`` names cases the dataset does not have
    (the data loader would crash on them, or the label budget draw them), leaves cases of the dataset out of every
    fold (they would silently never be trained on or validated), or puts a patient of ``case_groups.json`` in training
    and validation. ``identifiers``: the preprocessed dataset's cases."""
    if fold == "all":
        return
    splits_file = join(preprocessed_dataset_folder, "splits_final.json")
    dataset = os.path.basename(os.path.normpath(preprocessed_dataset_folder))
    rewrite = f"nnUNetv2_ddpm_make_splits -d {dataset} --overwrite (with --groups for patient-grouped folds)"
    splits = load_json(splits_file) if isfile(splits_file) else [{'train': list(train_cases),
                                                                  'val': list(val_cases)}]
    named = {c for f in splits for part in ('train', 'val') for c in f.get(part, [])}
    unknown = sorted(named - set(identifiers))
    if unknown:
        raise SplitRefused(f"{trainer}: {splits_file} names {len(unknown)} cases that the preprocessed dataset does "
                           f"not have ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}). Remove them "
                           f"from the file, or write the folds again with: {rewrite}")
    missing = sorted(set(identifiers) - named)
    if missing:
        raise SplitRefused(f"{trainer}: {splits_file} places {len(missing)} of the dataset's {len(identifiers)} cases "
                           f"in no fold ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): they would "
                           f"never be trained on or validated. Add them to the file, or write the folds again with: "
                           f"{rewrite}")
    try:
        check_fold_against_groups(preprocessed_dataset_folder, fold, train_cases, val_cases)
    except ValueError as e:
        raise SplitRefused(f"{trainer}: {e}") from None


def case_identifiers(preprocessed_dataset_folder: str) -> List[str]:
    """The dataset's training cases as nnU-Net preprocessed them (one ground-truth file each)."""
    gt_folder = join(preprocessed_dataset_folder, "gt_segmentations")
    if not isdir(gt_folder):
        raise FileNotFoundError(f"{gt_folder} does not exist: run nnUNetv2_plan_and_preprocess for this dataset first.")
    ending = load_json(join(preprocessed_dataset_folder, "dataset.json"))["file_ending"]
    return sorted(f[:-len(ending)] for f in subfiles(gt_folder, suffix=ending, join=False))


def _read_groups_file(groups_file: str) -> Dict[str, str]:
    """{case: patient} from a JSON object file; a message naming the file otherwise."""
    try:
        groups = load_json(groups_file)
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"Group mapping file {groups_file} is not valid JSON ({e}). It must be a JSON object "
                         f'{{"case identifier": "patient", ...}}, e.g. the slice converter\'s case_groups.json.') from None
    if not isinstance(groups, dict):
        raise ValueError(f"Group mapping file {groups_file} holds a JSON {type(groups).__name__}, not an object "
                         f'{{"case identifier": "patient", ...}}.')
    return {str(k): str(v) for k, v in groups.items()}


def make_splits(dataset: str, groups_file: Optional[str] = None, group_regex: Optional[str] = None,
                n_splits: int = 5, seed: int = 12345, overwrite: bool = False) -> str:
    """Write ``splits_final.json`` (and ``case_groups.json`` with groups) for a preprocessed dataset; returns its path.

    An existing splits file is kept unless ``overwrite``: models trained on it would otherwise be evaluated on folds
    they were not trained for.
    """
    if groups_file and group_regex:
        raise ValueError("Give either a group mapping file or a group pattern, not both.")
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    cases = case_identifiers(folder)
    splits_file = join(folder, "splits_final.json")
    if isfile(splits_file) and not overwrite:
        raise FileExistsError(f"{splits_file} exists (nnU-Net writes it at the first training). Folds trained on it "
                              f"would no longer match; pass --overwrite to replace it anyway.")
    if groups_file:
        if not isfile(groups_file):
            raise FileNotFoundError(f"Group mapping file {groups_file} does not exist.")
        groups = _read_groups_file(groups_file)
        unknown = sorted(set(groups) - set(cases))
        if unknown:  # a mapping of another dataset (or of cases since removed) would group this one by accident
            raise ValueError(f"The group mapping {groups_file} names {len(unknown)} cases that the dataset does not "
                             f"have (first: {unknown[:5]}). Give the mapping of this dataset (the slicer's "
                             f"case_groups.json in its raw folder), or remove those entries.")
        check_groups_cover_cases(groups, cases, groups_file)
        groups = {c: groups[c] for c in cases}
    else:
        groups = groups_from_regex(cases, group_regex) if group_regex else None
    splits = grouped_crossval_split(cases, groups, n_splits, seed)
    if groups is not None:
        check_no_group_leakage(splits, groups)
        save_json(groups, join(folder, GROUPS_FILE), sort_keys=True)
    elif isfile(join(folder, GROUPS_FILE)):
        os.remove(join(folder, GROUPS_FILE))  # a stale mapping would make trainers check the wrong groups
    with written_atomically(splits_file) as temporary:
        save_json(splits, temporary, sort_keys=False)
    return splits_file
