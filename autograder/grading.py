"""The grade command: prepare once, grade every submission in parallel, write the results.

Main process: the gradebook (nbgrader ``generate_assignment`` into ``OUT/gradebook.db``), the
verifier's plan (:func:`autograder.verifier.record`), the list of submissions, then a pool of
long-lived worker processes (:mod:`autograder.worker`), one sandboxed kernel per submission.
Results come back as plain dicts; the main process alone writes the gradebook (verified scores,
flags as "needs manual grade"), ``grades.csv``, ``problems.csv``, nbgrader's CSV export, the
histogram, and prints the summary. Output order and content do not depend on ``--workers``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from . import collect, sandbox

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Options:
    assignment: str
    submissions: Path
    out: Path | None = None
    workers: int | None = None
    cell_timeout: int = 30
    submission_timeout: int = 300
    memory_mb: int = 4096
    zip_regexp: str | None = None
    course_root: Path | None = None
    sandbox: bool = True
    progress: bool = True
    feedback: bool = True


@dataclasses.dataclass
class Outcome:
    rows: list[dict]            # one per submission, sorted by student id
    problems: list[dict]        # one per (submission, test cell)
    out: Path
    seconds: float
    sandbox: sandbox.SandboxStatus | None
    max_score: float


def course_root(explicit: Path | None, assignment: str) -> Path:
    if explicit is not None:
        return Path(explicit).resolve()
    for candidate in (Path.cwd(), REPO):
        if (candidate / "source" / assignment / f"{assignment}.ipynb").is_file():
            return candidate.resolve()
    raise ValueError(f"no source/{assignment}/{assignment}.ipynb in {Path.cwd()} or {REPO}")


@contextlib.contextmanager
def _venv_bin_on_path():
    """nbgrader runs the ``alembic`` command from PATH when it creates a gradebook."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _quiet_nbgrader() -> None:
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    for name in ("sqlalchemy", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build_gradebook(root: Path, assignment: str, db_path: Path, release_out: Path) -> None:
    """nbgrader's generate_assignment: the assignment, its cells, checksums and points, into
    ``db_path``; the student version into ``release_out`` (the committed release/ is untouched)."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    from .worker import load_course_config

    config = load_course_config(str(root))
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.db_url = f"sqlite:///{db_path}"
    config.CourseDirectory.release_directory = str(release_out)
    cwd = os.getcwd()
    with _venv_bin_on_path(), contextlib.redirect_stdout(sys.stderr):
        try:
            coursedir = CourseDirectory(config=config)
            coursedir.assignment_id = assignment
            app = GenerateAssignment(coursedir=coursedir, config=config)
            app.force = True
            app.create_assignment = True
            app.start()
        finally:
            os.chdir(cwd)


class GradebookWriter:
    """Verified scores into nbgrader's gradebook, one submission at a time; disputed test
    cells are marked as needing manual grading (formgrader lists them)."""

    def __init__(self, db_path: Path, assignment: str):
        self.db_path, self.assignment = db_path, assignment

    def __enter__(self):
        import warnings

        from nbgrader.api import Gradebook
        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's "not in session" noise
        self.gb = Gradebook(f"sqlite:///{self.db_path}")
        return self

    def write(self, result: dict, disputed: set) -> None:
        gb, student = self.gb, result["student_id"]
        gb.update_or_create_student(student)
        gb.update_or_create_submission(self.assignment, student)
        notebook = gb.find_submission_notebook(self.assignment, self.assignment, student)
        for grade in notebook.grades:
            verdict = result["verdicts"].get(grade.name)
            if verdict is not None:
                grade.auto_score = verdict["score"]
                grade.needs_manual_grade = grade.name in disputed
        for comment in notebook.comments:
            comment.auto_comment = result["status"] if result["status"] != "graded" else None
        gb.db.commit()

    def __exit__(self, *exc):
        self.gb.close()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(out: Path, assignment: str, result: dict) -> None:
    """The autograded notebook and the feedback page of one submission, written by the main
    process only (workers and kernels never write outside their private work dirs)."""
    student = result["student_id"]
    notebook = result.pop("autograded", None)
    page = result.pop("feedback_html", None)
    if notebook is not None:
        _atomic_write(out / "autograded" / student / f"{assignment}.ipynb", notebook)
    if page is not None:
        _atomic_write(out / "feedback" / f"{student}.html", page)


def write_tables(out: Path, results: list[dict], order: list[str]) -> tuple[list[dict], list[dict]]:
    """grades.csv (one row per submission), problems.csv (one per test cell), details.jsonl."""
    import json

    rows, problems = [], []
    for result in results:
        rows.append({"student_id": result["student_id"], "score": _fmt(result["score"]),
                     "max_score": _fmt(result["max_score"]), "status": result["status"]})
        for grade_id in order:
            verdict = result["verdicts"][grade_id]
            problems.append({"student_id": result["student_id"], "grade_id": grade_id,
                             "score": _fmt(verdict["score"]), "max_score": _fmt(verdict["max_score"])})
    with open(out / "grades.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["student_id", "score", "max_score", "status"])
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "problems.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["student_id", "grade_id", "score", "max_score"])
        writer.writeheader()
        writer.writerows(problems)
    with open(out / "details.jsonl", "w", encoding="utf-8") as handle:
        for result in results:
            handle.write(json.dumps({k: v for k, v in result.items() if k != "traceback"}) + "\n")
    return rows, problems


def _histogram(scores, max_score, path, title):
    from . import report

    return report.histogram(scores, max_score, path, title)


def export_gradebook(db_path: Path, target: Path) -> None:
    """nbgrader's own CSV export of the gradebook."""
    from nbgrader.api import Gradebook
    from nbgrader.plugins.export import CsvExportPlugin

    with Gradebook(f"sqlite:///{db_path}") as gb:
        CsvExportPlugin(to=str(target)).export(gb)


def status_of(result: dict) -> tuple[str, set]:
    """``graded``, ``flagged: <reason>`` or ``failed: <reason>``, and the disputed grade ids."""
    disputed = {g for g, v in result["verdicts"].items()
                if v.get("unverifiable") or (v.get("kernel_score") is not None and v["kernel_score"] != v["score"])}
    if result.get("failure"):
        return f"failed: {result['failure']}", disputed
    reasons = []
    if disputed:
        reasons.append("in-kernel tests and verifier disagree on " + ", ".join(sorted(disputed)))
    reasons += result.get("notes", [])
    if reasons:
        return "flagged: " + "; ".join(reasons), disputed
    return "graded", disputed


def _fmt(x: float) -> str:
    return f"{x:g}"


def _log(opts: Options, started: float, what: str) -> None:
    if os.environ.get("AUTOGRADER_TIMING"):
        print(f"[{time.monotonic() - started:7.2f} s] {what}", file=sys.stderr)


def _preload() -> None:
    """Everything the workers need, imported once here before they are forked."""
    import IPython.core.inputtransformer2  # noqa: F401
    import jupyter_client  # noqa: F401
    import nbclient  # noqa: F401
    import nbconvert.exporters  # noqa: F401
    import nbconvert.preprocessors  # noqa: F401
    import nbgrader.api  # noqa: F401
    import nbgrader.converters  # noqa: F401
    import nbgrader.preprocessors  # noqa: F401
    import nbgrader.plugins.export  # noqa: F401
    import zmq.asyncio  # noqa: F401

    from . import feedback, static, worker  # noqa: F401


def cache_key(root: Path, assignment: str) -> str:
    """What the gradebook template and the verifier's plan depend on."""
    import hashlib

    import nbgrader
    import torch

    digest = hashlib.sha256()
    for path in (root / "source" / assignment / f"{assignment}.ipynb", root / "nbgrader_config.py",
                 Path(__file__).with_name("verifier.py"), Path(__file__).with_name("kernel_probe.py")):
        digest.update(path.read_bytes() if path.exists() else b"-")
    for extra in sorted((root / "source" / assignment).rglob("*")):
        if extra.is_file() and extra.suffix != ".ipynb":
            digest.update(str(extra.relative_to(root)).encode() + extra.read_bytes())
    digest.update(f"{nbgrader.__version__} {torch.__version__} {sys.version}".encode())
    return digest.hexdigest()


def prepare(root: Path, assignment: str, cache: Path) -> Path:
    """The gradebook template (nbgrader generate_assignment), the release copy and the
    verifier's plan, rebuilt only when the source, the config or the grader changed."""
    from . import verifier

    key = cache_key(root, assignment)
    done = cache / "key"
    if done.exists() and done.read_text() == key and (cache / "plan.pt.d").is_dir():
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    os.chmod(cache, 0o711)
    build_gradebook(root, assignment, cache / "gradebook.db", cache / "release")
    plan = verifier.record(verifier.SourceAssignment(assignment, root / "source" / assignment / f"{assignment}.ipynb"))
    plan.save(cache / "plan.pt")
    done.write_text(key)
    return cache


def grade(opts: Options) -> Outcome:
    started = time.monotonic()
    _log(opts, started, "start")
    import torch

    torch.set_num_threads(1)
    from . import verifier, worker

    _quiet_nbgrader()
    root = course_root(opts.course_root, opts.assignment)
    source_nb = root / "source" / opts.assignment / f"{opts.assignment}.ipynb"
    out = Path(opts.out or root / "build" / "grades" / opts.assignment).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("grades.csv", "problems.csv", "gradebook.db", "nbgrader_export.csv", "histogram.png",
                 "details.jsonl"):
        (out / name).unlink(missing_ok=True)
    for name in ("feedback", "autograded", ".work"):
        shutil.rmtree(out / name, ignore_errors=True)
    work = out / ".work"
    work.mkdir()
    os.chmod(work, 0o711)

    status = sandbox.probe() if opts.sandbox else None
    if status is None:
        print("WARNING: sandbox disabled (--no-sandbox): student code runs with the grader's "
              "rights, only rlimits apply", file=sys.stderr)
    elif not status.available:
        print(f"WARNING: no sandbox: {status.reason}. Grading goes on with rlimits only: student "
              "code can read and write what the grader can.", file=sys.stderr)

    submissions = collect.collect(opts.submissions, opts.assignment, work / "collected", opts.zip_regexp)
    workers = max(1, min(opts.workers or os.cpu_count() or 1, max(1, len(submissions))))
    _preload()
    _log(opts, started, "modules loaded")

    # Start the workers now, by fork: they inherit the loaded modules (no second import of
    # torch and nbgrader) and wait for tasks while the preparation below runs.
    ctx = multiprocessing.get_context("fork")
    slots = ctx.Queue()
    for index in range(workers):
        slots.put(f"w{index}")
    limits = sandbox.Limits(cpu_seconds=opts.submission_timeout * 2 + 60, memory_bytes=opts.memory_mb << 20)
    pool = ctx.Pool(workers, initializer=worker.init,
                    initargs=(slots, str(work), worker.preload_modules(notebook=source_nb), limits, opts.sandbox)) \
        if submissions else None
    try:
        _log(opts, started, "pool started")
        cache = prepare(root, opts.assignment, out / ".cache")
        shutil.copyfile(cache / "gradebook.db", out / "gradebook.db")
        assignment = verifier.SourceAssignment(opts.assignment, source_nb)
        _log(opts, started, "gradebook and plan ready")

        settings = worker.Settings(
            assignment=opts.assignment, course_root=str(root), source_notebook=str(source_nb),
            release_dir=str(cache / "release" / opts.assignment), out_dir=str(out),
            work_dir=str(work), plan_path=str(cache / "plan.pt"),
            db_template=str(cache / "gradebook.db"), cell_timeout=opts.cell_timeout,
            submission_timeout=opts.submission_timeout,
            limits=limits,
            use_sandbox=opts.sandbox, write_feedback=opts.feedback)
        tasks = [(settings, s.student_id, s.data, s.problem) for s in submissions]
        results = []
        histogram = None
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=f"grading {opts.assignment}", unit="sub",
                   disable=not opts.progress or not tasks, file=sys.stderr)
        with GradebookWriter(out / "gradebook.db", opts.assignment) as gradebook:
            if pool is not None:
                # the main process writes each result while the workers go on grading
                for result in pool.imap_unordered(worker.grade, tasks, chunksize=1):
                    write_outputs(out, opts.assignment, result)
                    result["status"], disputed = status_of(result)
                    gradebook.write(result, disputed)
                    results.append(result)
                    bar.update(1)
                scores = sorted(float(r["score"]) for r in results)
                histogram = pool.apply_async(_histogram, (scores, assignment.max_score, out / "histogram.png",
                                                          opts.assignment))
        bar.close()
        _log(opts, started, "all graded")
        results.sort(key=lambda r: r["student_id"])
        export_gradebook(out / "gradebook.db", out / "nbgrader_export.csv")
        rows, problems = write_tables(out, results, [t.grade_id for t in assignment.tests])
        if histogram is not None:
            histogram.get(timeout=120)
        else:
            _histogram([], assignment.max_score, out / "histogram.png", opts.assignment)
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    for result in results:
        if result.get("traceback"):
            print(f"grader error for {result['student_id']}:\n{result['traceback']}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    _log(opts, started, "results written")
    return Outcome(rows, problems, out, time.monotonic() - started, status, assignment.max_score)
