"""The numbers a lecture claims, recorded for the tests instead of asserted in front of the student.

A lecture calls ``record("name", value, **meta)`` right where it computes a number its text
relies on. Run interactively, that only keeps the value in :data:`CLAIMS` (a dict, handy for a
look). Run by the course's runner (``python -m utils.runner``), the environment variable
:data:`ENV_VAR` names a JSON file next to the executed notebook and every call rewrites it, so
``tests/test_lecture_claims.py`` can check each claim with a tolerance that the mathematics or the
measured seed spread justifies, under every CPU capability the tests run.

Values must be JSON-friendly: numbers, bools, strings, lists/dicts of them; tensors and NumPy
values are converted (``tolist()``). ``meta`` is stored beside the value (seeds, units, what the
statistic is) so a failing test can say what the lecture claimed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ENV_VAR = "COURSE_CLAIMS_FILE"
CLAIMS: dict[str, dict[str, Any]] = {}


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (tensors, NumPy scalars and arrays, tuples, dict keys converted)."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return _plain(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # JSON has no nan/inf: keep them readable
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _plain(value.item())
    raise ValueError(f"claims must be numbers, bools, strings or lists/dicts of them; got {type(value).__name__}")


def record(name: str, value: Any, **meta: Any) -> None:
    """Record ``value`` under ``name`` (with ``meta``).

    Returns ``None``, so a cell that ends with ``record(...)`` shows the student nothing extra.

    Raises ``ValueError`` for an empty name or a value that cannot be written as JSON.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a claim needs a non-empty string name, got {name!r}")
    CLAIMS[name] = {"value": _plain(value), **({"meta": _plain(meta)} if meta else {})}
    path = os.environ.get(ENV_VAR)
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(CLAIMS, indent=1, sort_keys=True))
        tmp.replace(target)


def load(path: str | Path) -> dict[str, Any]:
    """The claims a run wrote: ``{name: value}`` (use :func:`load_full` for the meta data too)."""
    return {k: v["value"] for k, v in load_full(path).items()}


def load_full(path: str | Path) -> dict[str, dict[str, Any]]:
    return json.loads(Path(path).read_text())
