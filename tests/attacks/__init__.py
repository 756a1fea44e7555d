"""The grader's attack bank: submissions that try to get marks they have not earned.

Every :class:`Case` is a submission (a notebook, or raw bytes for a broken file) with what the
grader must make of it:

* ``loses``: test cells that must score 0 (``ALL``: every one); every other test cell keeps
  full marks, because the rest of the submission is the reference solution;
* ``status``: the start of its grades.csv status (``graded``, ``flagged`` or ``failed``);
* ``fools_kernel``: test cells that stock nbgrader, running the tests inside the student's
  kernel, *does* pass; the grader's details must show that (the attack is real), while the
  verifier gives 0;
* ``needs_sandbox``: the expectation holds only where bubblewrap works (without it, student
  code can read and write what the grader can, and the grader says so).

Modules per assignment (:mod:`tests.attacks.ps1_smoothing`, ...) build the cases from the
release notebook (``tests/nbtools.py``): correct answers in several styles, one wrong answer per
misconception of ``tests/bank``, and the attacks.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import nbformat

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import nbtools  # noqa: E402

ALL = "__all__"


@dataclasses.dataclass
class Case:
    student_id: str
    notebook: nbformat.NotebookNode | bytes | None  # None: a folder without the notebook
    loses: list[str] | str = dataclasses.field(default_factory=list)
    status: str = "graded"
    fools_kernel: list[str] = dataclasses.field(default_factory=list)
    why: str = ""
    filename: str | None = None  # default <assignment>.ipynb
    needs_sandbox: bool = False  # what it checks only holds inside bubblewrap

    def write(self, folder: Path, assignment: str) -> None:
        target = folder / self.student_id
        target.mkdir(parents=True, exist_ok=True)
        if self.notebook is None:
            (target / "notes.txt").write_text("forgot the notebook\n")
            return
        path = target / (self.filename or f"{assignment}.ipynb")
        if isinstance(self.notebook, bytes):
            path.write_bytes(self.notebook)
        else:
            nbformat.write(self.notebook, path)


@dataclasses.dataclass
class Context:
    """What some attacks need to know about the run (paths they try to reach)."""

    out: Path          # the grader's --out
    submissions: Path  # the submissions folder
    markers: Path      # a folder outside everything: files an attack must not be able to create


def solution(assignment: str, grade_id: str) -> str:
    return nbtools.solution_sources(assignment)[grade_id]


def submission(assignment: str, replace: dict[str, str] | None = None, stub: bool = False):
    return nbtools.build_submission(assignment, replace=replace, fill_solutions=not stub)


def cell(nb, grade_id: str):
    for c in nb.cells:
        if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id:
            return c
    raise KeyError(grade_id)


def styles_and_bank(assignment: str) -> list[Case]:
    """The reference solution, the bank's RIGHT answers, every WRONG answer, and the stub."""
    bank = importlib.import_module(f"bank.{assignment}")
    points = nbtools.test_points(nbtools.load(assignment))
    cases = [Case("correct", submission(assignment)),
             Case("stub", submission(assignment, stub=True), loses=ALL)]
    for name, entry in getattr(bank, "RIGHT", {}).items():
        cases.append(Case(f"right-{name}", submission(assignment, entry["replace"]), why="bank RIGHT"))
    for name, entry in bank.WRONG.items():
        assert set(entry["loses"]) <= set(points), (name, entry["loses"])
        cases.append(Case(f"wrong-{name}", submission(assignment, entry["replace"]), loses=list(entry["loses"]),
                          why="bank WRONG"))
    return cases


def cases(assignment: str, ctx: Context) -> list[Case]:
    """Every case for ``assignment``: styles, bank, attacks."""
    module = importlib.import_module(f"attacks.{assignment}")
    out = styles_and_bank(assignment) + module.styles() + module.attacks(ctx)
    ids = [c.student_id for c in out]
    assert len(ids) == len(set(ids)), f"duplicate student ids in {assignment}"
    return out
