"""Which of a fold's training cases are labelled when only N labels are allowed.

The paper trains each method on 10, 20, 30, 40 or 50 labelled slices, five repetitions each. Here a repetition is a
cross-validation fold: fold k draws its N cases from its own training cases with a seed fixed by k, as the first N of
one seeded permutation, so budgets are nested (the 10-case set is inside the 20-case set of the same fold) and every
method of the same N and fold sees exactly the same cases. Other draws (``draw`` > 0) are other seeded permutations,
nested in the same way: repeating a comparison over draws measures how much the choice of the labelled cases matters.
"""
import argparse
from typing import List, Sequence, Tuple, Union

import numpy as np

LABEL_BUDGET_SEED = 12345
# budgets N that have ready-made ``<Trainer>_<N>labels`` classes (nnunet_ddpm/training/variants/label_budget.py)
LABEL_BUDGETS = (1, 2, 5, 10, 15, 20, 30, 40, 50, 100)
# every training case of the fold labelled: the trainers without a ``_<N>labels`` suffix (the paper's "all" row)
ALL_LABELS = "all"


def parse_budget(text: str) -> Union[int, str]:
    """A label budget as given on the command line: a number of cases or ``all``."""
    if text == ALL_LABELS:
        return ALL_LABELS
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a label budget is a number of cases or '{ALL_LABELS}', got {text!r}")


def budget_order(budget: Union[int, str]) -> Tuple[bool, int]:
    """Sort key: numbers ascending, ``all`` last."""
    return (True, 0) if budget == ALL_LABELS else (False, int(budget))


def budget_folder(budget: Union[int, str]) -> str:
    """The folder name of a budget's results: ``10labels``, or ``all`` for every label."""
    return ALL_LABELS if budget == ALL_LABELS else f"{budget}labels"


def choose_labelled_cases(training_cases: Sequence[str], num_labelled: int, fold: Union[int, str],
                          draw: int = 0) -> List[str]:
    """The ``num_labelled`` cases of ``training_cases`` that fold ``fold`` may use labels of in draw ``draw``
    (sorted)."""
    if num_labelled < 1:
        raise ValueError(f"A label budget must be at least 1 case, got {num_labelled}")
    if num_labelled > len(training_cases):
        raise ValueError(f"A budget of {num_labelled} labelled cases was asked for, but fold {fold} has only "
                         f"{len(training_cases)} training cases. Use a budget of at most {len(training_cases)} "
                         f"(e.g. a smaller _<N>labels trainer) or a dataset with more labelled cases.")
    seed = LABEL_BUDGET_SEED + (fold if isinstance(fold, int) else 0)
    order = np.random.RandomState(seed if draw == 0 else [seed, draw]).permutation(sorted(training_cases))
    return sorted(str(case) for case in order[:num_labelled])
