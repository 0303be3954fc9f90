"""`branchflow drift`: has the data moved away from what the champion was trained on?

The project computes its data statistics (a flat JSON object of numbers; the toolkit knows
nothing of what they measure). A statistic drifts when its relative change from the reference
exceeds its limit in `[tool.branchflow.drift]`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchflow.config import DRIFT_SECTION, DriftSettings, load_settings
from branchflow.context import append_github_file
from branchflow.errors import BranchflowError


@dataclass(frozen=True)
class Change:
    """One statistic: reference and current value, relative change and its limit."""

    name: str
    reference: float
    current: float
    relative: float  # (current - reference) / |reference|; inf from a zero reference
    limit: float

    @property
    def drifted(self) -> bool:
        return abs(self.relative) > self.limit


@dataclass(frozen=True)
class Drift:
    """Every compared statistic; drift when any one moved past its limit."""

    changes: tuple[Change, ...]

    @property
    def drifted(self) -> bool:
        return any(change.drifted for change in self.changes)

    def lines(self) -> list[str]:
        """One line per statistic, then the verdict."""
        width = max(len(change.name) for change in self.changes)
        rows = [
            f"{'DRIFT' if c.drifted else 'ok':<5}  {c.name:<{width}}  {c.reference:g} -> "
            f"{c.current:g}  ({_percent(c.relative)}, limit {c.limit:.0%})"
            for c in self.changes
        ]
        moved = [c.name for c in self.changes if c.drifted]
        verdict = f"drift: {', '.join(moved)}" if moved else "no drift"
        return [*rows, verdict]


def read_stats(path: Path) -> dict[str, float]:
    """A statistics file: one JSON object of name -> number."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BranchflowError(f"{path}: not found; write the data statistics first") from None
    except (OSError, ValueError) as exc:
        raise BranchflowError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict) or not document:
        raise BranchflowError(f"{path}: must be a JSON object of statistic name -> number")
    bad = [
        name
        for name, value in document.items()
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ]
    if bad:
        raise BranchflowError(f"{path}: {', '.join(bad)} must be finite numbers")
    return {name: float(value) for name, value in document.items()}


def compare_stats(
    reference: Mapping[str, float], current: Mapping[str, float], settings: DriftSettings
) -> Drift:
    """Each statistic's relative change; both sides must hold the same statistics."""
    missing = sorted(set(reference) ^ set(current))
    if missing:
        raise BranchflowError(
            f"the reference and current statistics differ in {', '.join(missing)}; compute "
            "both with the same version of the statistics command"
        )
    unknown = sorted(set(settings.thresholds) - set(reference))
    if unknown:
        raise BranchflowError(
            f"{DRIFT_SECTION} thresholds name {', '.join(unknown)}, which the statistics lack; "
            f"known: {', '.join(sorted(reference))}"
        )
    return Drift(
        tuple(
            Change(
                name,
                reference[name],
                current[name],
                _relative(reference[name], current[name]),
                settings.thresholds.get(name, settings.threshold),
            )
            for name in sorted(reference)
        )
    )


def check_drift(root: Path, reference: Path, current: Path) -> Drift:
    """Compare the statistics files with the limits of `root`'s `[tool.branchflow.drift]`."""
    settings = load_settings(root).drift
    return compare_stats(read_stats(reference), read_stats(current), settings)


def write_github_output(drift: Drift, env: Mapping[str, str] = os.environ) -> bool:
    """Append `drift=true|false` to `$GITHUB_OUTPUT` when it is set; say whether it was."""
    if not env.get("GITHUB_OUTPUT"):
        return False
    append_github_file(env, {"GITHUB_OUTPUT": [f"drift={'true' if drift.drifted else 'false'}\n"]})
    return True


def _relative(reference: float, current: float) -> float:
    if reference == 0:
        return 0.0 if current == 0 else math.inf
    return (current - reference) / abs(reference)


def _percent(relative: float) -> str:
    return "new, reference 0" if math.isinf(relative) else f"{relative:+.1%}"
