"""Which slices of a volume become 2D cases.

The paper's rule: axial slices 70, 75, ..., 100 of every BraTS 2021 volume (Alshenoudy et al., AIAI 2023, Sec. 4.1;
their code, risc-mi/braintumor-ddpm, ``utils/convert_data.py``, slices the first array axis). Around the middle of
the brain most slices show tumour, and a step of 5 mm keeps neighbouring slices from being near copies.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

PAPER_SLICES = tuple(range(70, 101, 5))
RULES = ("indices", "every", "foreground", "stratified")


@dataclass(frozen=True)
class SliceRule:
    """``indices``: the given slice indices (default: the paper's); ``every``: every ``step``-th slice from
    ``start``; ``foreground``: of those, the slices with at least ``min_foreground`` labelled pixels;
    ``stratified``: ``per_case`` slices per volume, ``foreground_fraction`` of them with foreground and the rest
    without (but with image content), evenly spread through each group."""
    kind: str = "indices"
    indices: Tuple[int, ...] = PAPER_SLICES
    step: int = 1
    start: int = 0
    min_foreground: int = 1
    per_case: int = 7
    foreground_fraction: float = 0.5

    def __post_init__(self):
        if self.kind not in RULES:
            raise ValueError(f"Unknown slice rule {self.kind!r}; use one of {RULES}.")
        if self.kind == "indices" and (not self.indices or min(self.indices) < 0):
            raise ValueError(f"Slice indices must be given and not negative, got {list(self.indices)}.")
        if self.step < 1 or self.start < 0 or self.min_foreground < 1 or self.per_case < 1:
            raise ValueError(f"step, per_case and min_foreground must be at least 1 and start at least 0 (got step "
                             f"{self.step}, start {self.start}, per_case {self.per_case}, min_foreground "
                             f"{self.min_foreground}).")
        if not 0 <= self.foreground_fraction <= 1:
            raise ValueError(f"foreground_fraction must lie in [0, 1], got {self.foreground_fraction}.")

    def fixed_indices(self) -> Optional[Tuple[int, ...]]:
        """The indices that do not depend on the data (checked against every volume before anything is written)."""
        return tuple(sorted(set(self.indices))) if self.kind == "indices" else None

    def describe(self) -> str:
        if self.kind == "indices":
            return "the paper's slices 70, 75, ..., 100" if self.indices == PAPER_SLICES else \
                f"slices {list(self.fixed_indices())}"
        if self.kind == "every":
            return f"every {self.step}th slice from {self.start}"
        if self.kind == "foreground":
            return f"every {self.step}th slice from {self.start} with at least {self.min_foreground} labelled pixels"
        return f"{self.per_case} slices per volume, {self.foreground_fraction:.0%} with foreground"

    def select(self, foreground_pixels: np.ndarray, has_content: np.ndarray) -> List[int]:
        """Chosen indices, given per slice the number of labelled pixels and whether the image is not empty."""
        n = len(foreground_pixels)
        if self.kind == "indices":
            return list(self.fixed_indices())
        candidates = list(range(self.start, n, self.step))
        if self.kind == "every":
            return candidates
        with_foreground = [i for i in candidates if foreground_pixels[i] >= self.min_foreground]
        if self.kind == "foreground":
            return with_foreground
        without = [i for i in candidates if foreground_pixels[i] == 0 and has_content[i]]
        wanted = min(int(round(self.per_case * self.foreground_fraction)), len(with_foreground))
        wanted = max(wanted, self.per_case - len(without))  # fill up from the other group when one is short
        chosen = _spread(with_foreground, wanted) + _spread(without, self.per_case - wanted)
        return sorted(chosen)


def _spread(candidates: List[int], count: int) -> List[int]:
    """``count`` elements evenly spread over ``candidates`` (all of them when there are fewer)."""
    if count <= 0 or not candidates:
        return []
    if count >= len(candidates):
        return list(candidates)
    positions = np.linspace(0, len(candidates) - 1, count).round().astype(int)
    return [candidates[p] for p in positions]
