"""One rule for numbers (ntlab.checks) and strict JSON (ntlab.runs.write_json)."""

import json
import math

import pytest

from ntlab.analysis.common import check_lams
from ntlab.checks import MAX_STEPS, check_number, check_seed, check_steps
from ntlab.errors import NtlabError
from ntlab.runs import write_json


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (math.nan, {"low": 0}, "--x must be a finite number ≥ 0, got nan"),
        (math.inf, {"low": 0, "low_open": True}, "--x must be a finite number > 0, got inf"),
        (-math.inf, {}, "--x must be a finite number, got -inf"),
        (0.0, {"low": 0, "low_open": True}, "> 0, got 0.0"),
        (1.5, {"low": 0, "high": 1}, "in [0, 1], got 1.5"),
        (1.0, {"low": 0, "high": 1, "high_open": True}, "in [0, 1), got 1.0"),
        (2.5, {"integer": True}, "--x must be an integer, got 2.5"),
        (True, {}, "--x must be a finite number, got True"),
        ("3", {}, "--x must be a finite number, got '3'"),
        (0, {"low": 1, "high": 9, "integer": True}, "an integer between 1 and 9, got 0"),
    ],
)
def test_check_number_refuses_with_the_rule_and_the_value(value, kwargs, message):
    with pytest.raises(NtlabError) as exc:
        check_number("--x", value, **kwargs)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [(0.0, {"low": 0}), (1e-300, {"low": 0, "low_open": True}), (1, {"low": 1, "integer": True})],
)
def test_check_number_returns_what_it_accepts(value, kwargs):
    assert check_number("--x", value, **kwargs) == value


def test_one_rule_for_seeds_and_a_bound_on_steps():
    assert check_seed("--seed", 0) == 0 and check_seed("--seed", 2**32 - 1) == 2**32 - 1
    for bad in (-1, 2**32, 10**20):
        with pytest.raises(NtlabError, match="--seed must be an integer between 0 and 4294967295"):
            check_seed("--seed", bad)
    assert check_steps("--steps", MAX_STEPS) == MAX_STEPS
    with pytest.raises(NtlabError, match="would run for days"):
        check_steps("--steps", MAX_STEPS + 1)
    with pytest.raises(NtlabError) as exc:
        check_steps("--steps", 0)
    assert "days" not in str(exc.value)  # the typo hint is for huge values only


@pytest.mark.parametrize("lams", [[0, math.nan], [0, math.inf], [0, -1.0]])
def test_lambda_grids_are_finite_and_non_negative(lams):
    with pytest.raises(NtlabError, match="every λ in --lams must be a finite number ≥ 0"):
        check_lams(lams)


def test_write_json_is_strict_and_names_the_key(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(NtlabError) as exc:
        write_json(path, {"tasks": {"mnist": {"val_score": 1.0, "test_score": math.nan}}})
    assert "results.json: tasks.mnist.test_score is nan" in str(exc.value)
    assert not path.exists()
    with pytest.raises(NtlabError, match=r"per_lam\.1 is inf"):
        write_json(path, {"per_lam": [0.5, math.inf]})
    write_json(path, {"best_lam": 0.25, "corr": None})
    assert json.loads(path.read_text()) == {"best_lam": 0.25, "corr": None}
