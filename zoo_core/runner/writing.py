"""Writing run files: strict JSON (no NaN or infinity), atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path

from zoo_core.checkpoint_io import write_atomic


def strict(obj):
    """``obj`` with every non-finite float replaced by None: JSON has no NaN or infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path: Path, payload: dict) -> None:
    write_atomic(path, json.dumps(strict(payload), indent=2, sort_keys=False, allow_nan=False) + "\n")
