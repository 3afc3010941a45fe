"""The specimen check (ml.shift): the binomial alarm rule, the rule a card gives, and its simulation."""

import json

import numpy as np
import pytest
from scipy.stats import binom

from ml import shift
from ml.predictor import ARTIFACTS_DIR


def test_the_alarm_count_is_the_smallest_with_a_tail_under_alpha():
    rule = shift.SpecimenRule(0.082)
    for n in (10, 20, 50, 100, 400):
        k = rule.critical(n)
        assert binom.sf(k - 1, n, 0.082) < shift.ALPHA <= binom.sf(k - 2, n, 0.082)
    assert [rule.critical(n) for n in (10, 20, 50, 100)] == [5, 7, 12, 19]


def test_specimens_under_the_minimum_are_not_judged():
    rule = shift.SpecimenRule(0.082)
    v = rule.check(9, 9)
    assert (v.critical, v.alarm) == (None, False)
    assert v.to_dict() == {"cells": 9, "flagged": 9, "flagged_share": 1.0, "alarm_at": None, "alarm": False}


def test_the_alarm_is_raised_at_the_critical_count_and_not_below():
    rule = shift.SpecimenRule(0.082)
    assert rule.check(100, 18).alarm is False
    v = rule.check(100, 19)
    assert v.alarm is True
    assert v.to_dict() == {"cells": 100, "flagged": 19, "flagged_share": 0.19, "alarm_at": 19, "alarm": True}


@pytest.mark.parametrize(("cells", "flagged"), [(10, 11), (10, -1)])
def test_impossible_counts_are_refused(cells, flagged):
    with pytest.raises(ValueError, match="must lie between 0 and the cells"):
        shift.SpecimenRule(0.1).check(cells, flagged)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, float("nan")])
def test_a_base_rate_outside_zero_and_one_is_refused(rate):
    with pytest.raises(ValueError, match="base rate must lie in"):
        shift.SpecimenRule(rate)


def test_the_shipped_bundle_gives_twice_its_highest_validation_flagged_share():
    card = json.loads((ARTIFACTS_DIR / "model_card.json").read_text())
    shares = [m["flagged"] for m in card["validation_metrics"]["per_source"].values()]
    assert shift.rule_from_card(card).base_rate == pytest.approx(2 * max(shares))
    assert shift.rule_from_card(card).critical(100) == 19


def test_cards_without_per_source_figures():
    assert shift.rule_from_card({"validation_flagged_rate": 0.03}).base_rate == pytest.approx(0.06)
    assert shift.rule_from_card({}).base_rate == shift.DEFAULT_BASE_RATE
    assert shift.rule_from_card({"validation_flagged_rate": 0.0}).base_rate == 0.01  # never zero


def test_simulation_flags_every_cell_of_an_alarmed_specimen_and_none_of_a_quiet_one():
    rule = shift.SpecimenRule(0.082)
    n = 300
    flagged = np.zeros(n, bool)
    wrong = np.zeros(n, bool)
    flagged[:150] = True  # half flagged: every specimen of 100 alarms (about 50 of 100 flagged)
    wrong[150:200] = True  # 50 wrong cells the per-cell flags missed
    res = shift.simulate(flagged, wrong, rule, size=100, seed=0)
    assert res == {
        "specimen_size": 100,
        "base_rate": 0.082,
        "specimens": 3,
        "specimens_judged": 3,
        "specimens_alarmed": 3,
        "flagged_with_check": 1.0,
        "silent_error_with_check": 0.0,
    }
    quiet = shift.simulate(np.zeros(n, bool), wrong, rule, size=100)
    assert quiet["specimens_alarmed"] == 0
    assert quiet["flagged_with_check"] == 0.0
    assert quiet["silent_error_with_check"] == pytest.approx(50 / 300)


def test_simulation_of_a_partly_alarming_set_counts_cells_of_alarmed_specimens_only():
    rule = shift.SpecimenRule(0.082)
    flagged = np.r_[np.ones(40, bool), np.zeros(60, bool), np.zeros(100, bool)]
    wrong = np.zeros(200, bool)
    wrong[40:50] = wrong[100:110] = True  # 10 missed in the alarmed specimen, 10 in the quiet one
    order = np.random.default_rng(7).permutation(200)
    # Specimens are cut from a fixed shuffle; undo it so that the first 100 rows are one specimen.
    inv = np.empty_like(order)
    inv[order] = np.arange(200)
    res = shift.simulate(flagged[inv], wrong[inv], rule, size=100, seed=7)
    assert res["specimens_alarmed"] == 1
    assert res["flagged_with_check"] == 0.5
    assert res["silent_error_with_check"] == pytest.approx(10 / 200)


def test_simulation_needs_one_entry_per_cell():
    with pytest.raises(ValueError, match="one entry per cell"):
        shift.simulate([True, False], [True], shift.SpecimenRule(0.1))
