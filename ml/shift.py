"""The specimen check: a specimen flagged far beyond a validated lab's rate is reviewed cell by cell.

One cell's flags (feature distance, low confidence, no cell found) miss some cells of a lab the model
has never seen: on the leave-one-lab-out runs the per-cell flags caught 65-95 % of a foreign lab's
cells, and many of the rest were wrong (``ml/EXPERIMENTS.md``). A specimen tells more than a cell:
in a lab the model was validated on, a few per cent of cells are flagged; a specimen where a large
share is flagged comes from a stain, camera or disease the model does not know, and its unflagged
cells cannot be trusted either. This is the analyzers' specimen-level flag: the whole specimen
is reviewed cell by cell, nothing is accepted in bulk.

The rule, fixed before it was measured (``ml/EXPERIMENTS.md``, thirteenth session):

* the **base rate** is twice the highest flagged share of the bundle's validation sides (per source,
  as ``fit`` recorded it in the card), a margin for day-to-day variation within a validated lab;
* a specimen of ``n`` cells raises the alarm when ``k`` of them are flagged and a validated lab
  would flag ``k`` or more with probability under ``ALPHA`` (binomial tail);
* specimens of fewer than ``MIN_CELLS`` cells are not judged (too few to tell).

For the shipped bundle (validation flagged: BCCD 4.1 %, PBC 1.7 %) the base rate is 8.2 %: the alarm
needs 19 flagged cells of 100, 12 of 50, 7 of 20, 5 of 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

ALPHA = 0.001
MIN_CELLS = 10
MARGIN = 2.0  # base rate = MARGIN x the highest validation flagged share
DEFAULT_BASE_RATE = 0.1  # a card that records no validation flagged share


@dataclass(frozen=True)
class SpecimenVerdict:
    """The check's answer for one specimen (counts, the smallest alarming count, the alarm)."""

    cells: int
    flagged: int
    critical: int | None  # the smallest flagged count that raises the alarm; None: too few cells
    alarm: bool

    @property
    def share(self) -> float:
        return self.flagged / self.cells if self.cells else 0.0

    def to_dict(self) -> dict:
        return {
            "cells": self.cells,
            "flagged": self.flagged,
            "flagged_share": round(self.share, 4),
            "alarm_at": self.critical,
            "alarm": self.alarm,
        }


@dataclass(frozen=True)
class SpecimenRule:
    """The alarm rule of one bundle: its base rate, ``ALPHA`` and ``MIN_CELLS``."""

    base_rate: float
    alpha: float = ALPHA
    min_cells: int = MIN_CELLS

    def __post_init__(self) -> None:
        if not 0.0 < self.base_rate < 1.0:
            raise ValueError(f"base rate must lie in (0, 1), got {self.base_rate!r}")

    def critical(self, cells: int) -> int | None:
        """The smallest k with P(X >= k) < alpha for X ~ Binomial(cells, base_rate); None under
        ``min_cells``, and None when even every cell flagged is not that unlikely."""
        if cells < self.min_cells:
            return None
        return _critical(cells, self.base_rate, self.alpha)

    def check(self, cells: int, flagged: int) -> SpecimenVerdict:
        if not 0 <= flagged <= cells:
            raise ValueError(f"flagged cells ({flagged}) must lie between 0 and the cells ({cells})")
        k = self.critical(cells)
        return SpecimenVerdict(cells, flagged, k, k is not None and flagged >= k)


@lru_cache(maxsize=4096)
def _critical(cells: int, base_rate: float, alpha: float) -> int | None:
    from scipy.stats import binom

    for k in range(cells + 1):
        if binom.sf(k - 1, cells, base_rate) < alpha:
            return k
    return None


def rule_from_card(card: dict) -> SpecimenRule:
    """The bundle's rule: ``MARGIN`` x the highest per-source validation flagged share the card records
    (``validation_metrics.per_source.*.flagged``; a single-lab card: its ``validation_flagged_rate``)."""
    per_source = (card.get("validation_metrics") or {}).get("per_source") or {}
    shares = [float(m["flagged"]) for m in per_source.values() if m.get("flagged") is not None]
    if not shares and card.get("validation_flagged_rate") is not None:
        shares = [float(card["validation_flagged_rate"])]
    if not shares:
        return SpecimenRule(DEFAULT_BASE_RATE)
    return SpecimenRule(min(0.5, max(MARGIN * max(shares), 0.01)))


def simulate(flagged, wrong, rule: SpecimenRule, size: int = 100, seed: int = 0) -> dict:
    """Figures of the check on a set of evaluated cells cut into specimens of ``size`` (a fixed shuffle):
    the share of specimens that raise the alarm, the share of cells flagged with the check (a cell of
    an alarmed specimen counts as flagged) and the silent error rate with it (wrong, not flagged)."""
    import numpy as np

    flagged = np.asarray(flagged, bool)
    wrong = np.asarray(wrong, bool)
    if flagged.shape != wrong.shape:
        raise ValueError("flagged and wrong must have one entry per cell")
    order = np.random.default_rng(seed).permutation(len(flagged))
    reviewed = flagged.copy()
    alarms = judged = 0
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        verdict = rule.check(len(rows), int(flagged[rows].sum()))
        judged += verdict.critical is not None
        if verdict.alarm:
            alarms += 1
            reviewed[rows] = True
    n = len(flagged)
    return {
        "specimen_size": size,
        "base_rate": rule.base_rate,
        "specimens": -(-n // size) if n else 0,
        "specimens_judged": judged,
        "specimens_alarmed": alarms,
        "flagged_with_check": float(reviewed.mean()) if n else None,
        "silent_error_with_check": float((wrong & ~reviewed).mean()) if n else None,
    }
