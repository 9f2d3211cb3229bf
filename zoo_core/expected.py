"""Expected results: what a registry entry should reach, checked after ``zoo train`` and ``zoo eval``.

An entry pins its expectations under ``expected`` (validated in ``zoo_core/registry.py``)::

    expected:
      - {metric: test.nll_nats, value: 86.76, tolerance: 0.0, direction: at_most, kind: published,
         source: "Burda et al. 2015 (IWAE), table 1", compute: "3280 epochs"}

``metric`` is a dotted path into metrics.json / the eval output (``test.nll_nats``,
``test.bits_per_dim``, ``test.sliced_wasserstein``). ``direction``:

- ``within``:   |measured - value| <= tolerance (reproducing our own figure);
- ``at_most``:  measured <= value + tolerance (an NLL or a distance: lower is better);
- ``at_least``: measured >= value - tolerance (higher is better).

``kind`` says what the figure is: ``published`` (a paper's figure for the same model class),
``target`` (what this entry should reach with its settings on the stated compute),
``reproduction`` (our own earlier run of this entry) or ``reference`` (a related published figure
shown for context: reported side by side, never passes or fails). A metric that the run did not
produce is reported as ``missing``, never as a pass.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

DIRECTIONS = ("within", "at_most", "at_least")
KINDS = ("published", "target", "reproduction", "reference")
EXPECTATION_KEYS = ("metric", "value", "tolerance", "direction", "kind", "source", "compute")
DEFAULT_EXPECTATION = {"tolerance": 0.0, "direction": "within", "kind": "target", "compute": ""}


def lookup(metrics: dict, path: str) -> float | None:
    """``metrics['test']['nll_nats']`` for ``test.nll_nats``; None when absent or not a finite number."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def _slack(value: float) -> float:
    """Room for float rounding at the boundary (0.882 + 0.03 is 0.9120000000000001)."""
    return 1e-9 * max(1.0, abs(value))


def outside_by(measured: float, value: float, tolerance: float, direction: str) -> float:
    """How far ``measured`` lies outside the accepted range (0 inside it)."""
    if direction == "within":
        excess = abs(measured - value) - tolerance
    elif direction == "at_most":
        excess = measured - (value + tolerance)
    elif direction == "at_least":
        excess = (value - tolerance) - measured
    else:
        raise ValueError(f"unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS)}")
    return 0.0 if excess <= _slack(value) else excess


def check_one(expectation: dict, metrics: dict) -> dict:
    """One expectation against a metrics dict -> the reported row (measured, status, shortfall, ...)."""
    e = {**DEFAULT_EXPECTATION, **expectation}
    value, tolerance, direction = float(e["value"]), float(e["tolerance"]), e["direction"]
    measured = lookup(metrics, e["metric"])
    row = {"metric": e["metric"], "kind": e["kind"], "direction": direction, "expected": value,
           "tolerance": tolerance, "measured": measured, "difference": None, "shortfall": None,
           "passed": None, "status": "missing", "source": e["source"], "compute": e["compute"] or ""}
    if measured is None:
        return row
    row["difference"] = measured - value
    # how far behind the figure itself we are (the tolerance is ours, not the paper's)
    behind = {"at_most": measured - value, "at_least": value - measured}.get(direction, abs(measured - value))
    row["shortfall"] = max(0.0, behind) if behind > _slack(value) else 0.0
    if e["kind"] == "reference":
        row["status"] = "reference"
        return row
    passed = outside_by(measured, value, tolerance, direction) == 0.0
    row["passed"], row["status"] = passed, "pass" if passed else "fail"
    return row


def check(expectations: Iterable[dict] | None, metrics: dict) -> list[dict]:
    """Every expectation of an entry, in order."""
    return [check_one(e, metrics) for e in (expectations or [])]


def not_comparable(expectations: Iterable[dict] | None, overrides: list[str], metrics: dict | None = None
                   ) -> list[dict]:
    """Rows for a run whose settings differ from its entry's: measured, but neither pass nor fail."""
    rows = []
    for e in expectations or []:
        row = check_one(e, metrics or {})
        row.update(passed=None, shortfall=None, status="not comparable",
                   note="not comparable: overrides " + ", ".join(overrides))
        rows.append(row)
    return rows


#: statuses that make ``zoo train --check`` / ``zoo eval --check`` exit non-zero
GATING_KINDS = ("published", "target", "reproduction")


def failures(rows: list[dict]) -> list[dict]:
    """The failed expectations that gate (published, target or reproduction)."""
    return [r for r in rows if r["status"] == "fail" and r["kind"] in GATING_KINDS]


def tally(rows: list[dict]) -> dict[str, int]:
    out = {"pass": 0, "fail": 0, "missing": 0, "reference": 0, "not comparable": 0}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def _num(x: float | None) -> str:
    if x is None:
        return "\u2014"
    return f"{x:.4g}" if abs(x) < 10 else f"{x:.2f}"


def describe(row: dict) -> str:
    """One line: 'test.nll_nats = 87.31, at most 88 (target) -> pass [source]'."""
    bound = {"within": f"{_num(row['expected'])} \u00b1 {_num(row['tolerance'])}",
             "at_most": f"at most {_num(row['expected'])}" + (f" + {_num(row['tolerance'])}" if row["tolerance"] else ""),
             "at_least": f"at least {_num(row['expected'])}" + (f" - {_num(row['tolerance'])}" if row["tolerance"] else "")
             }[row["direction"]]
    status = row["status"]
    if status == "fail":
        status += f" (short by {_num(row['shortfall'])})" if row["shortfall"] else ""
    elif status == "reference" and row["shortfall"]:
        status += f" ({_num(row['shortfall'])} behind)"
    elif status == "not comparable":
        status = row.get("note", status)
    return f"{row['metric']} = {_num(row['measured'])}, expected {bound} ({row['kind']}) -> {status} [{row['source']}]"


def summary_lines(rows: list[dict]) -> list[str]:
    return [f"  expected: {describe(r)}" for r in rows]
