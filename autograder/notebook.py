"""Read: a submitted notebook, parsed and sanitized by nbgrader, and the cells the student wrote.

An unreadable file is ``failed: invalid notebook`` (never dropped); a notebook whose structure
nbgrader rejects is salvaged (the release notebook with the student's answer cells put back by
grade_id). nbgrader's sanitizing preprocessors restore every locked and test cell and its points
from the gradebook (checksums) and re-add deleted test cells.

:func:`student_cells` decides what the probe kernel runs and what the static checks read: every
code cell that is not a test cell, in notebook order. Nothing in the notebook (a tag, an id, a
cell's metadata other than nbgrader's, which sanitizing restored) can take a cell out of it.
Tests: ``tests/test_verdict.py::test_student_cells_keep_cells_tagged_like_probes``.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbgrader import utils as nbutils

from .collect import MAX_NOTEBOOK_BYTES


class Invalid(ValueError):
    """The submission cannot be read as a notebook at all."""


def parse(data: bytes, release_notebook: Path, notes: list[str]) -> tuple[nbformat.NotebookNode, object]:
    """The notebook and its raw JSON (kept for salvaging); raises :class:`Invalid`."""
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise Invalid(f"invalid notebook: file too large ({len(data)} bytes)")
    raw = None
    try:
        raw = json.loads(data.decode("utf-8"))
        nb = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(nb)
        return nb, raw
    except Exception as exc:
        if raw is None or not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise Invalid(f"invalid notebook: {type(exc).__name__}: {first}") from None
    notes.append("the notebook file did not validate: answers moved into a fresh copy")
    return salvage(raw, release_notebook), raw


def salvage(nb_raw, release_notebook: Path) -> nbformat.NotebookNode:
    """The release notebook with the student's answer cells (matched by grade_id) put back."""
    release_nb = nbformat.read(release_notebook, 4)
    answers = {}
    for cell in (nb_raw or {}).get("cells", []) if isinstance(nb_raw, dict) else []:
        if not isinstance(cell, dict):
            continue
        meta = (cell.get("metadata") or {}).get("nbgrader") or {}
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(s for s in source if isinstance(s, str))
        if isinstance(meta, dict) and meta.get("solution") and isinstance(meta.get("grade_id"), str) \
                and isinstance(source, str):
            answers.setdefault(meta["grade_id"], source)
    for cell in release_nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and meta.get("grade_id") in answers:
            cell.source = answers[meta["grade_id"]]
    return release_nb


def sanitize(nb, raw, preprocessors, resources_for, release_notebook: Path, notes: list[str]):
    """nbgrader's sanitizing preprocessors; a notebook they reject is salvaged first."""
    resources = resources_for()
    try:
        for pp in preprocessors:
            nb, resources = pp(nb, resources)
    except Exception as exc:
        notes.append(f"nbgrader could not sanitize the notebook ({type(exc).__name__}); "
                     "answers moved into a fresh copy")
        nb, resources = salvage(raw, release_notebook), resources_for()
        for pp in preprocessors:
            nb, resources = pp(nb, resources)
    return nbformat.from_dict(nb), resources  # cells re-added by nbgrader hold plain dicts


def is_test(cell) -> bool:
    return nbutils.is_grade(cell) and not nbutils.is_solution(cell)


def student_cells(nb) -> list[str]:
    """Sources of every code cell but the test cells, in notebook order (what the probe kernel
    runs; the static checks read these minus the locked cells)."""
    return [cell.source for cell in nb.cells if cell.cell_type == "code" and not is_test(cell)]


def test_positions(nb) -> dict[str, int]:
    """``{grade_id: number of student cells before it}`` for each test
    cell: where nbgrader's own run reaches it (a crash in a student cell costs the tests after
    that cell, as in nbgrader's kernel; see :meth:`autograder.worker.Worker._ask`)."""
    out, count = {}, 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if is_test(cell):
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id:
                out[grade_id] = count
        else:
            count += 1
    return out


def cell_labels(nb) -> list[str]:
    """A name for each of :func:`student_cells`, for messages: its grade_id, or its position."""
    labels = []
    for number, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        if not is_test(cell):
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            labels.append(f"the cell {grade_id!r}" if grade_id else f"code cell {number}")
    return labels


def written_by_student(nb) -> list[str]:
    """Code cells the student could edit (not test cells, not locked cells)."""
    return [cell.source for cell in nb.cells
            if cell.cell_type == "code" and not is_test(cell) and not nbutils.is_locked(cell)]


def locked_sources(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code" and nbutils.is_locked(cell)
            and not is_test(cell)]
