"""Notebook helpers for the assignment tests and the grader's tests.

The small API (everything else here is internal):

* ``ASSIGNMENTS`` - the contract's assignments; :func:`available` - those whose source exists yet.
* :func:`load` ``(assignment, kind="source"|"release")`` - the notebook as a ``NotebookNode``.
* :func:`answer_ids` / :func:`test_points` - grade ids of the answer cells; ``{test grade_id: points}``.
* :func:`solution_sources` ``(assignment)`` - ``{grade_id: source}`` of the answer cells, solution
  markers removed: what a student who got everything right would have typed.
* :func:`build_submission` ``(assignment, replace=None, fill_solutions=True)`` - the release
  notebook with its answer cells filled by the solutions, then ``replace`` applied by grade_id.
* :func:`autograde` ``(assignment, submissions, workdir)`` - REAL ``nbgrader autograde`` of
  ``{student_id: notebook}`` in a copy of the course under ``workdir`` with its own gradebook, all
  students in one nbgrader run; returns ``{student_id: {grade_id: (score, max_score)}}`` read
  from the gradebook. :func:`start_autograde` starts the same run in the background (so runs of
  several assignments overlap) and returns a :class:`GradingRun`; its ``result()`` also gives
  ``nbgrader.validator.Validator`` results and the autograded notebooks (cell outputs).

nbgrader runs in a child process (``python tests/nbtools.py _grade WORKDIR``): its start-up and
logging stay out of the caller, and the Jupyter/IPython folders come from the caller's
environment (``tests/conftest.py`` points them into ``build/``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # the grading child process: see skip_slow_jsonschema_formats
    sys.modules.setdefault("rfc3987_syntax", None)

import nbformat  # noqa: E402
from nbformat import NotebookNode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ["ps1_smoothing", "ps2_losses", "ps3_calibration"]

_MARKER = re.compile(r"^\s*###\s*(BEGIN|END)\s+SOLUTION\s*$")


# --------------------------------------------------------------------------- notebooks


def notebook_path(assignment: str, kind: str = "source", root: Path = REPO) -> Path:
    """``source/<a>/<a>.ipynb`` or ``release/<a>/<a>.ipynb``."""
    if kind not in ("source", "release"):
        raise ValueError(f"kind must be 'source' or 'release', got {kind!r}")
    return Path(root) / kind / assignment / f"{assignment}.ipynb"


def available(kind: str = "source") -> list[str]:
    """The assignments of ``ASSIGNMENTS`` whose ``kind`` notebook exists (ps3 may still be in writing)."""
    return [a for a in ASSIGNMENTS if notebook_path(a, kind).exists()]


def load(assignment: str, kind: str = "source") -> NotebookNode:
    """The source (solutions, hidden tests) or release (student) notebook of ``assignment``."""
    path = notebook_path(assignment, kind)
    if not path.exists():
        hint = " (run `make release`)" if kind == "release" else ""
        raise FileNotFoundError(f"{path} does not exist{hint}")
    return nbformat.read(path, as_version=4)


def _nbgrader(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_answer(cell: NotebookNode) -> bool:
    """An nbgrader answer cell: solution, not graded."""
    meta = _nbgrader(cell)
    return cell.cell_type == "code" and bool(meta.get("solution")) and not meta.get("grade")


def is_test(cell: NotebookNode) -> bool:
    """An nbgrader autograded test cell: graded, not a solution."""
    meta = _nbgrader(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def grade_id(cell: NotebookNode) -> str | None:
    return _nbgrader(cell).get("grade_id")


def answer_ids(nb: NotebookNode) -> list[str]:
    """Grade ids of the answer cells, in notebook order."""
    return [grade_id(c) for c in nb.cells if is_answer(c)]


def test_points(nb: NotebookNode) -> dict[str, float]:
    """``{grade_id: points}`` of the autograded test cells, in notebook order."""
    return {grade_id(c): float(_nbgrader(c).get("points", 0)) for c in nb.cells if is_test(c)}


test_points.__test__ = False  # not a pytest test, despite its name


def strip_solution_markers(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if not _MARKER.match(line))


def solution_sources(assignment: str) -> dict[str, str]:
    """``{grade_id: source}`` of the source notebook's answer cells, solution markers removed."""
    return {grade_id(c): strip_solution_markers(c.source) for c in load(assignment, "source").cells if is_answer(c)}


def build_submission(assignment: str, replace: dict[str, str] | None = None, fill_solutions: bool = True) -> NotebookNode:
    """The release notebook as a student would hand it in.

    Answer cells get the source solutions (``fill_solutions``; otherwise they keep the stubs),
    then ``replace`` sets the source of answer cells by grade_id.
    """
    nb = load(assignment, "release")
    answers = {grade_id(c): c for c in nb.cells if is_answer(c)}
    unknown = sorted(set(replace or {}) - set(answers))
    if unknown:
        raise ValueError(f"{assignment}: no answer cell {unknown}; answer cells are {sorted(answers)}")
    if fill_solutions:
        solutions = solution_sources(assignment)
        for gid, cell in answers.items():
            cell.source = solutions[gid]
    for gid, source in (replace or {}).items():
        answers[gid].source = source.strip("\n")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


# --------------------------------------------------------------------------- grading


@dataclasses.dataclass
class GradingResult:
    """What one nbgrader run reported (see :func:`start_autograde`)."""

    assignment: str
    workdir: Path
    scores: dict[str, dict[str, tuple[float | None, float]]]
    validation: dict[str, dict[str, list[str]]]  # {name: Validator().validate(...) with messages}
    errors: list[str]
    seconds: float

    @property
    def course(self) -> Path:
        return self.workdir / "course"

    def log(self) -> str:
        path = self.workdir / "nbgrader.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def autograded(self, student_id: str) -> NotebookNode:
        """The autograded notebook of ``student_id``: every cell executed, with its outputs."""
        path = self.course / "autograded" / student_id / self.assignment / f"{self.assignment}.ipynb"
        return nbformat.read(path, as_version=4)


class GradingRun:
    """An nbgrader run in a child process; :meth:`result` waits for it."""

    def __init__(self, assignment: str, workdir: Path, process: subprocess.Popen, students: list[str], started: float):
        self.assignment, self.workdir, self.process = assignment, workdir, process
        self.students, self._started, self._result = students, started, None

    def result(self, timeout: float = 900) -> GradingResult:
        if self._result is None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
            report_path = self.workdir / "report.json"
            if not report_path.exists():
                raise RuntimeError(f"nbgrader run for {self.assignment} crashed (exit {self.process.returncode}):\n"
                                   f"{_tail(self.workdir / 'driver.out')}")
            report = json.loads(report_path.read_text())
            scores = {sid: {gid: (s, m) for gid, (s, m) in grades.items()} for sid, grades in report["scores"].items()}
            self._result = GradingResult(self.assignment, self.workdir, scores, report["validation"], report["errors"],
                                         time.monotonic() - self._started)
        return self._result


def start_autograde(assignment: str, submissions: dict[str, NotebookNode], workdir: Path | str,
                    validate: dict[str, Path | str] | None = None) -> GradingRun:
    """Start grading ``submissions`` of ``assignment`` with real nbgrader in the background.

    ``workdir/course`` becomes a copy of the course (nbgrader_config.py, source/<assignment>,
    submitted/<student>/<assignment>/), with its own gradebook; one child process runs
    ``generate_assignment`` then ``autograde`` for every student. ``validate`` maps names to
    notebook paths to check with ``nbgrader.validator.Validator`` in the same process.
    """
    workdir = Path(workdir)
    if not submissions:
        raise ValueError("no submissions to grade")
    bad = [sid for sid in submissions if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", sid)]
    if bad:
        raise ValueError(f"student ids must be plain names (letters, digits, _ . -), got {bad}")
    course = workdir / "course"
    if course.exists():
        shutil.rmtree(course)
    (course / "source").mkdir(parents=True)
    shutil.copy2(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(REPO / "source" / assignment, course / "source" / assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    for sid, nb in submissions.items():
        folder = course / "submitted" / sid / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")
    for stale in ("report.json", "nbgrader.log"):
        (workdir / stale).unlink(missing_ok=True)
    plan = {"assignment": assignment, "students": sorted(submissions),
            "validate": {name: str(Path(p).resolve()) for name, p in (validate or {}).items()}}
    (workdir / "plan.json").write_text(json.dumps(plan, indent=1))
    out = open(workdir / "driver.out", "w")
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_grade", str(workdir)],
                               cwd=course, stdout=out, stderr=subprocess.STDOUT, env=_child_env())
    out.close()
    return GradingRun(assignment, workdir, process, sorted(submissions), time.monotonic())


def autograde(assignment: str, submissions: dict[str, NotebookNode], workdir: Path | str) -> dict[str, dict[str, tuple[float | None, float]]]:
    """Grade ``{student_id: notebook}`` with real nbgrader; ``{student_id: {grade_id: (score, max_score)}}``."""
    result = start_autograde(assignment, submissions, workdir).result()
    missing = sorted(set(submissions) - set(result.scores))
    if result.errors or missing:
        raise RuntimeError(f"nbgrader autograde of {assignment} failed (missing students {missing}):\n"
                           + "\n".join(result.errors) + "\n" + result.log()[-4000:])
    return result.scores


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` from PATH
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    # The kernels inherit this: tests run many tiny tensor ops, and torch's intra-op thread pool
    # makes each one 10x slower on a busy 2-core machine (1.5 s instead of 0.01 s for a test cell).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def skip_slow_jsonschema_formats() -> None:
    """Make ``import jsonschema`` ~2 s cheaper in this process (call before importing nbformat/nbgrader).

    jsonschema imports the optional ``rfc3987_syntax`` for its "iri"/"uri" format checks, which
    compiles dozens of lark grammars; nbformat's schema uses no such format. A ``None`` entry in
    ``sys.modules`` makes that optional import fail, as if the package were not installed.
    """
    sys.modules.setdefault("rfc3987_syntax", None)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


# --------------------------------------------------------------------------- the child process


def _grade_main(workdir: Path) -> int:
    """Child process: validate, generate_assignment, autograde all students; write report.json."""
    import logging
    import traceback

    skip_slow_jsonschema_formats()
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.validator import Validator
    from traitlets.config.loader import PyFileConfigLoader

    from autograder.release import generate_in_course, nbgrader_runs_here

    plan = json.loads((workdir / "plan.json").read_text())
    assignment, course = plan["assignment"], workdir / "course"
    logger = logging.getLogger("traitlets")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(workdir / "nbgrader.log")
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    report: dict = {"assignment": assignment, "scores": {}, "validation": {}, "errors": []}
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)

    for name, path in plan["validate"].items():
        try:
            found = Validator(config=config).validate(path)
            report["validation"][name] = {k: [v.get("raw_error") or v.get("source", "") for v in vs] for k, vs in found.items()}
        except Exception:
            report["errors"].append(f"validating {name} ({path}):\n{traceback.format_exc()}")
    try:
        generate_in_course(course, [assignment], config=config)
        coursedir = CourseDirectory(config=config)
        coursedir.assignment_id = assignment
        app = Autograde(coursedir=coursedir, config=config)
        app.force = True
        app.create_student = True
        with nbgrader_runs_here():
            app.start()
    except Exception:
        report["errors"].append(f"nbgrader failed:\n{traceback.format_exc()}")
    try:
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            for sid in plan["students"]:
                try:
                    submission = gb.find_submission(assignment, sid)
                except Exception:
                    continue
                report["scores"][sid] = {g.name: [g.score, g.max_score] for nb in submission.notebooks for g in nb.grades}
    except Exception:
        report["errors"].append(f"reading the gradebook failed:\n{traceback.format_exc()}")
    (workdir / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_grade":
        sys.exit(_grade_main(Path(sys.argv[2])))
    sys.exit("usage: python tests/nbtools.py _grade WORKDIR  (used by start_autograde)")
