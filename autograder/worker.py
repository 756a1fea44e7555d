"""Grading one submission: the pipeline each long-lived worker process runs, top to bottom.

1. **read** (:mod:`autograder.notebook`): parse, nbgrader's sanitizing preprocessors (restore
   locked/test cells and points from the gradebook), the cells the student wrote;
2. **static checks** (:mod:`autograder.static`) on every cell the student wrote;
3. **ask** (:mod:`autograder.probe`): a fresh sandboxed *probe kernel* runs the student's cells
   (never a test cell) and answers the verifier's questions, each read from the reply to the
   request the worker sent;
4. **nbgrader run** (:mod:`autograder.kernels`): a second fresh sandboxed kernel runs nbgrader's
   autograde with the tests, for the in-kernel scores and the feedback (its answers are never
   read as verdicts);
5. **verify** (:mod:`autograder.verifier`): each hidden test replayed here on the probe kernel's
   answers; a difference with the in-kernel score flags the submission;
6. **report**: the autograded notebook and the feedback page (:mod:`autograder.feedback`) go back
   to the main process in the result, which writes every output.

``grade(task)`` is the pool's task function; ``task = (settings, student_id, data, problem)``.
The result dict's keys: student_id, assignment, verdicts {grade_id: score, max_score, message,
unverifiable, kernel_score}, score, max_score, failure, notes, seconds, timing, autograded,
feedback_html.
"""
from __future__ import annotations

import copy
import dataclasses
import signal
import time
import traceback
from pathlib import Path

import nbformat
from nbgrader import utils as nbutils

from . import feedback, kernels, notebook, probe, sandbox, verifier
from .nbgrader_run import NbgraderRun, load_course_config  # noqa: F401 - grading.py uses it


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a worker needs; plain data so it crosses process boundaries."""

    assignment: str
    course_root: str
    source_notebook: str
    release_dir: str
    out_dir: str
    work_dir: str
    plan_path: str
    db_template: str
    cell_timeout: int = 30
    submission_timeout: int = 300
    limits: sandbox.Limits = sandbox.Limits()
    use_sandbox: bool = True
    max_cell_output: int = 1 << 20
    write_feedback: bool = True


class Worker:
    """Grades submissions one at a time; reused for many (imports and the plan are paid once)."""

    def __init__(self, settings: Settings, slot: str):
        self.settings = settings
        self.assignment = verifier.SourceAssignment(settings.assignment, Path(settings.source_notebook))
        self.plan = verifier.load_plan(self.assignment, Path(settings.plan_path))
        self.questions = {t.grade_id: Path(f"{settings.plan_path}.d", f"{t.grade_id}.pt").read_bytes()
                          for t in self.assignment.tests}
        self.points = self.assignment.points()
        self.release_notebook = Path(settings.release_dir) / f"{settings.assignment}.ipynb"
        self.nbgrader = NbgraderRun(settings, slot)
        self.kernels = kernels.Kernels(Path(settings.work_dir) / "sandbox" / slot, _release_files(settings),
                                       settings.limits, settings.use_sandbox, preload_modules(settings))

    def grade(self, student_id: str, data: bytes | None, problem: str | None = None) -> dict:
        """Grade one notebook given as bytes; never raises, never loses a submission."""
        started = time.monotonic()
        sandbox.note_launch()  # cleared: this submission's kernels record how they ran
        result = {"student_id": student_id, "assignment": self.settings.assignment, "notes": [],
                  "failure": None, "seconds": 0.0, "autograded": None, "feedback_html": None, "timing": {}}
        try:
            self._grade(student_id, data, problem, result)
        except Exception as exc:
            result["failure"] = f"grader error: {type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc()
        finally:
            self.kernels.clean()
        verdicts = result.setdefault("verdicts", {})
        for grade_id, points in self.points.items():
            verdicts.setdefault(grade_id, {"score": 0.0, "max_score": points,
                                           "message": result["failure"] or "not graded",
                                           "kernel_score": None, "unverifiable": False})
        result["score"] = sum(v["score"] for v in verdicts.values())
        result["max_score"] = sum(self.points.values())
        result["seconds"] = round(time.monotonic() - started, 3)
        result["sandbox"] = sandbox.last_launch() or {"sandboxed": False, "kernel": "none started"}
        return result

    def _grade(self, student_id: str, data: bytes | None, problem: str | None, result: dict) -> None:
        timing, t0 = result["timing"], time.monotonic()
        if problem or data is None:
            result["failure"] = problem or "no notebook submitted"
            return
        try:
            nb, raw = notebook.parse(data, self.release_notebook, result["notes"])
        except notebook.Invalid as exc:
            result["failure"] = str(exc)
            return
        nb, resources = notebook.sanitize(nb, raw, self.nbgrader.sanitize, lambda: self.nbgrader.resources(student_id),
                                          self.release_notebook, result["notes"])
        static = verifier.static_findings(self.settings.assignment, notebook.written_by_student(nb),
                                          notebook.locked_sources(nb))
        timing["prepare"] = round(time.monotonic() - t0, 3)

        t = time.monotonic()
        answers, probe_failure = self._ask(notebook.student_cells(nb), notebook.test_positions(nb),
                                           notebook.cell_labels(nb))
        timing["probe"] = round(time.monotonic() - t, 3)

        t = time.monotonic()
        nb, kernel_scores, run_failure = self.nbgrader.run(nb, resources, self.kernels)
        timing["execute"] = round(time.monotonic() - t, 3)

        t = time.monotonic()
        failure = probe_failure or run_failure
        result["verdicts"] = self._verify(answers, kernel_scores, static, failure)
        result["failure"] = failure
        timing["verify"] = round(time.monotonic() - t, 3)

        t = time.monotonic()
        result["autograded"] = nbformat.writes(nb)
        if self.nbgrader.feedback is not None:
            score = sum(v["score"] for v in result["verdicts"].values())
            result["feedback_html"] = feedback.render(self.nbgrader.feedback, nb, student_id,
                                                      self.settings.assignment, result["verdicts"], score,
                                                      sum(self.points.values()))
        timing["write"] = round(time.monotonic() - t, 3)

    def _ask(self, cells: list[str], positions: dict[str, int] | None = None,
             labels: list[str] | None = None) -> tuple[dict, str | None]:
        """The probe kernel: the student's cells, then every test's questions.

        A student cell that kills its kernel or will not stop when interrupted (``os._exit``, a
        loop that swallows KeyboardInterrupt) costs what it costs in nbgrader's own run: the
        tests after that cell. The tests before it are asked again in a fresh probe kernel that
        runs the cells before it (the submission's deadline still counts). A kernel that could
        not start is retried once (no student code ran then)."""
        positions = positions or {}
        deadline = time.monotonic() + self.settings.submission_timeout
        timeout = f"timeout: the submission ran longer than {self.settings.submission_timeout} s"
        questions, skipped, crash, start_failures = dict(self.questions), {}, None, 0
        while True:
            work = self.kernels.workdir()
            km = self.kernels.manager(work)
            failure = kernels.start(km)
            channel = session = None
            try:
                if failure is None:
                    channel = kernels.Channel(km, deadline, timeout, probe.MAX_MESSAGE_BYTES)
                    if channel.wait_ready():
                        session = probe.ProbeSession(channel, self.settings.cell_timeout)
                        session.load()
                        session.run_cells(cells)
                        cut = session.failed_at
                        if crash is not None or cut is None or session.failure == timeout:
                            answers = session.ask(questions)
                            answers.update(skipped)
                            return answers, crash or session.failure
                        crash = session.failure
                        where = (labels or [])[cut] if labels and cut < len(labels) else f"code cell {cut + 1}"
                        skipped = {g: ({}, f"the check did not run: {crash} in {where}, before this test")
                                   for g in questions if positions.get(g, 0) > cut}
                        questions = {g: q for g, q in questions.items() if g not in skipped}
                        if not questions:
                            return skipped, crash
                        cells = cells[:cut]
                    else:
                        failure = channel.failure
            finally:
                if channel is not None:
                    channel.close()
                self.kernels.stop(km, failed=failure is not None or (channel is not None and bool(channel.failure)))
            if session is None:
                start_failures += 1
                if start_failures >= 2:
                    break
                time.sleep(0.5)
        note = f"the check did not run: {failure}"
        answers = {g: ({}, note) for g in questions}
        answers.update(skipped)
        return answers, crash or failure

    def _verify(self, answers: dict, kernel_scores: dict, static: dict, failure: str | None) -> dict:
        verdicts = {}
        for test in self.assignment.tests:
            results, note = answers.get(test.grade_id, ({}, failure or "the check did not run"))
            verdict = verifier.replay(self.plan, test.grade_id, results, note, static)
            verdicts[test.grade_id] = {"score": verdict.score, "max_score": verdict.max_score,
                                       "message": verdict.message, "unverifiable": verdict.unverifiable,
                                       "kernel_score": kernel_scores.get(test.grade_id, 0.0)}
        return verdicts


def _release_files(settings: Settings) -> list[tuple[Path, Path]]:
    release = Path(settings.release_dir)
    if not release.is_dir():
        return []
    return [(p, p.relative_to(release)) for p in release.rglob("*") if p.is_file() and p.suffix != ".ipynb"]


def preload_modules(settings: "Settings | None" = None, notebook_path: Path | None = None,
                    notebook: Path | None = None) -> list[str]:
    """Modules for the zygote to import: the kernel's usual ones and those the notebook imports."""
    import ast

    names = ["numpy", "torch", "torch.nn", "torch.nn.functional", "math", "random", "json", "inspect",
             "torch.utils._python_dispatch"]
    try:
        path = notebook_path or notebook or Path(settings.release_dir) / f"{settings.assignment}.ipynb"
        nb = nbformat.read(path, 4)
    except Exception:
        return names
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
    return list(dict.fromkeys(n for n in names if n.split(".")[0] not in ("os", "sys", "subprocess")))


# ---------------------------------------------------------------------- process-pool glue
_WORKER: Worker | None = None
_SLOT: str | None = None
_EARLY_ZYGOTE = None


def init(slots, work_dir: str | None = None, preload: list | None = None, limits=None, use_sandbox: bool = True) -> None:
    """Pool initializer: take a private slot and boot this worker's zygote at once, while the
    main process prepares the gradebook and the plan."""
    import os

    global _SLOT, _EARLY_ZYGOTE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    _SLOT = slots.get()
    import torch

    torch.set_num_threads(1)  # identical numerics whatever the number of workers
    if work_dir and use_sandbox and not os.environ.get("AUTOGRADER_NO_ZYGOTE") and sandbox.probe().available:
        from .zygote import Zygote, ZygoteError

        zygote = Zygote(Path(work_dir) / "sandbox" / _SLOT, preload or [], limits or sandbox.Limits())
        try:
            zygote.start()
            _EARLY_ZYGOTE = zygote
        except (ZygoteError, OSError):
            zygote.close()


def grade(task) -> dict:
    """Pool task: ``(settings, student_id, data, problem)``; the Worker is built on first use."""
    global _WORKER
    settings, student_id, data, problem = task
    if _WORKER is None:
        _WORKER = Worker(settings, _SLOT or "w0")
        _WORKER.kernels.zygote = _EARLY_ZYGOTE
    return _WORKER.grade(student_id, data, problem)
