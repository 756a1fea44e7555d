"""The grade command: collect -> run -> verify -> record -> report.

* collect: the submissions, by default from the course's ``submitted/`` (``nbgrader collect``'s
  ``<student>/<assignment>/<assignment>.ipynb`` with ``timestamp.txt``), or a folder / LMS zips
  (:mod:`autograder.collect`); the main process reads every notebook into memory;
* run + verify: a pool of long-lived worker processes (:mod:`autograder.worker`), one sandboxed
  kernel per submission, nbgrader's in-kernel scores and the verifier's trusted scores; only the
  submissions that are new or changed since the last run (content hash, timestamp, grader and
  assignment version: :func:`autograder.journal.submission_key`) unless ``force``;
* record (:func:`grade`'s ``_on_result``, once per result, in the main process only): the
  autograded notebook and feedback page where nbgrader keeps them, the verified scores, flags,
  comments, timestamp and late penalty into the course's gradebook
  (:mod:`autograder.gradebook`), then one fsynced line in ``OUT/results.jsonl``
  (:mod:`autograder.journal`): an interrupted run loses nothing it had recorded;
* report: ``grades.csv``, ``problems.csv``, ``details.jsonl`` rebuilt from the journal (one row
  per submission), nbgrader's CSV export, the histogram, the summary.

Nothing existing is deleted: results are replaced one submission at a time, atomically.
Output order and content do not depend on ``--workers``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from . import collect, dispatch, gradebook, journal, sandbox

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Options:
    assignment: str
    submissions: Path | None = None   # None: the course's submitted/ folder
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
    force: bool = False               # grade every submission again, even unchanged ones
    private: bool = False             # gradebook, autograded/ and feedback/ under OUT, not the course's
    db_url: str | None = None         # the gradebook (default: the course's CourseDirectory.db_url)
    scheduler: str | None = None      # a Dask scheduler's address: grade on that cluster (dispatch.py)
    worker_memory_mb: int = dispatch.DEFAULT_WORKER_MEMORY_MB  # address-space limit of a local worker


@dataclasses.dataclass
class Outcome:
    rows: list[dict]            # one per submission, sorted by student id
    problems: list[dict]        # one per (submission, test cell)
    out: Path
    seconds: float
    sandbox: sandbox.SandboxStatus | None
    max_score: float
    graded: int = 0             # submissions graded by this run
    reused: int = 0             # unchanged since an earlier run: its results were kept
    target: gradebook.Target | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


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


def write_tables(out: Path, results: list[dict], order: list[str]) -> tuple[list[dict], list[dict]]:
    """grades.csv (one row per submission), problems.csv (one per test cell), details.jsonl;
    each written to a temporary name and renamed (a crash leaves the old file or the new one)."""
    import io
    import json

    rows, problems = [], []
    for result in results:
        rows.append({"student_id": result["student_id"], "score": _fmt(result["score"]),
                     "max_score": _fmt(result["max_score"]), "status": result["status"]})
        for grade_id in order:
            verdict = result["verdicts"][grade_id]
            problems.append({"student_id": result["student_id"], "grade_id": grade_id,
                             "score": _fmt(verdict["score"]), "max_score": _fmt(verdict["max_score"])})

    def table(fields, items) -> str:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fields)
        writer.writeheader()
        writer.writerows(items)
        return buffer.getvalue()

    gradebook.atomic_write(out / "grades.csv", table(["student_id", "score", "max_score", "status"], rows))
    gradebook.atomic_write(out / "problems.csv", table(["student_id", "grade_id", "score", "max_score"], problems))
    gradebook.atomic_write(out / "details.jsonl", "".join(
        json.dumps({k: v for k, v in r.items() if k not in _PRIVATE_FIELDS}) + "\n" for r in results))
    return rows, problems


#: journal fields that are not part of a result as details.jsonl shows it
_PRIVATE_FIELDS = ("traceback", "key", "final", "feedback_page")


def _histogram(scores, max_score, path, title):
    from . import report

    return report.histogram(scores, max_score, path, title)


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


#: a failure of the grader itself, not of the submission: recorded, and graded again next run
INFRASTRUCTURE_FAILURES = ("grader error", "the grader's worker")
#: grader modules whose code does not change a verdict (their edits keep earlier results valid)
_PRESENTATION = {"report.py", "examples.py", "release.py", "cli.py", "__main__.py", "journal.py", "dispatch.py",
                 "dispatch_dask.py"}


def grader_version(root: Path, assignment: str, opts: Options, target: gradebook.Target,
                   status: sandbox.SandboxStatus | None) -> str:
    """What every result of this run depends on besides the notebook: the assignment and the
    course config (:func:`cache_key`), the grader's code, the grading options, the sandbox,
    and where results are recorded."""
    digest = hashlib.sha256(cache_key(root, assignment).encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name not in _PRESENTATION:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps([opts.cell_timeout, opts.submission_timeout, opts.memory_mb, opts.feedback,
                              bool(status and status.available), target.db_url, str(target.root)]).encode())
    return digest.hexdigest()


def output_folder(opts: Options, root: Path, target_course: gradebook.Target | None) -> Path:
    """``--out`` (default build/grades/ASSIGNMENT), refused where it would mix with the course's
    own folders (``--out .`` once replaced the course's gradebook.db, feedback/ and autograded/)."""
    out = Path(opts.out or root / "build" / "grades" / opts.assignment).resolve()
    if out == root or root.is_relative_to(out):
        raise ValueError(f"--out {out} is the course root or above it: grading results would mix with the "
                         "course's gradebook.db, feedback/ and autograded/ (nbgrader's). Pick a folder of "
                         f"its own, e.g. {root / 'build' / 'grades' / opts.assignment}")
    coursedir = gradebook.course_directory(root)
    for step in ("source_directory", "release_directory", "submitted_directory", "autograded_directory",
                 "feedback_directory"):
        folder = (root / getattr(coursedir, step)).resolve()
        if out == folder or out.is_relative_to(folder):
            raise ValueError(f"--out {out} is inside the course's {folder.name}/ folder, which nbgrader manages: "
                             "pick a folder of its own")
    return out


@dataclasses.dataclass
class _Item:
    """One submission of this run, with what the record step needs from its folder."""

    sub: collect.Submission
    notes: dict           # timestamp.txt and submission_secret.txt, as found next to the notebook
    timestamp: datetime.datetime | None
    key: str = ""


def _items(subs: list[collect.Submission]) -> list[_Item]:
    items = []
    for sub in subs:
        notes = gradebook.submission_notes(sub.path)
        raw = notes.get("timestamp.txt") or sub.timestamp
        try:
            when = gradebook.parse_timestamp(raw)
        except ValueError:
            when = None
            notes.pop("timestamp.txt", None)
        items.append(_Item(sub, notes, when))
    return items


def grade(opts: Options) -> Outcome:
    started = time.monotonic()
    _log(opts, started, "start")
    _quiet_nbgrader()
    root = course_root(opts.course_root, opts.assignment)
    course = gradebook.course_target(root, opts.db_url)
    out = output_folder(opts, root, course)
    with journal.lock(out):
        return _grade(opts, root, out, course, started)


def _grade(opts: Options, root: Path, out: Path, course: gradebook.Target, started: float) -> Outcome:
    import torch

    torch.set_num_threads(1)
    from . import verifier, worker

    source_nb = root / "source" / opts.assignment / f"{opts.assignment}.ipynb"
    target = gradebook.private_target(out, course.course_id) if opts.private else course
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)  # the scratch space of an earlier, interrupted run
    work.mkdir()
    os.chmod(work, 0o711)

    status = sandbox.require(opts.sandbox)  # a working sandbox, or --no-sandbox said explicitly

    # ---- collect
    folder = opts.submissions
    if folder is None:
        folder = gradebook.submitted_directory(root)
        if not folder.is_dir():
            raise ValueError(f"no submissions: {folder} does not exist. Run `nbgrader collect {opts.assignment}` "
                             "first, or pass --submissions DIR (a folder or LMS zips)")
    items = _items(collect.collect(folder, opts.assignment, work / "collected", opts.zip_regexp))
    version = grader_version(root, opts.assignment, opts, target, status)
    for item in items:
        stamp = item.timestamp.isoformat() if item.timestamp else None
        item.key = journal.submission_key(version, item.sub.student_id, item.sub.data, item.sub.problem, stamp)
    book = journal.Journal(out)
    earlier = book.read()
    recorded = gradebook.recorded_students(target, opts.assignment)
    todo = [i for i in items if opts.force or not _still_valid(earlier.get(i.key), recorded)]
    by_student = {i.sub.student_id: i for i in items}
    assignment = verifier.SourceAssignment(opts.assignment, source_nb)
    notes = []

    # ---- run + verify, on the submissions that need it
    workers = max(1, min(opts.workers or os.cpu_count() or 1, max(1, len(todo))))
    if todo:
        _preload()
    _log(opts, started, "modules loaded")
    # Start the workers now, before any database connection is opened (:mod:`autograder.dispatch`):
    # local ones by fork, they inherit the loaded modules (no second import of torch and nbgrader)
    # and boot their sandboxes while the preparation below runs; or connect to the Dask scheduler.
    limits = sandbox.Limits(cpu_seconds=opts.submission_timeout * 2 + 60, memory_bytes=opts.memory_mb << 20)
    pool = dispatch.start(workers, scheduler=opts.scheduler, memory_mb=opts.worker_memory_mb,
                          deadline_s=2 * opts.submission_timeout + 60,
                          initargs=(str(work), worker.preload_modules(notebook=source_nb), limits, opts.sandbox)) \
        if todo else None
    fresh: dict[str, dict] = {}
    recorder = None
    try:
        _log(opts, started, "pool started")
        cache = prepare(root, opts.assignment, out / ".cache")
        done = gradebook.ensure_assignment(target, root, opts.assignment, cache / "gradebook.db")
        if done:
            notes.append(done)
        _log(opts, started, "gradebook and plan ready")
        recorder = gradebook.Recorder(target, opts.assignment, gradebook.course_config(root))
        book.open()

        def _on_result(result: dict) -> None:
            """Record one graded submission (main process only): its autograded notebook and
            feedback page, the gradebook, then its line in the journal, the commit point."""
            item = by_student[result["student_id"]]
            result["status"], disputed = status_of(result)
            result["timestamp"] = item.timestamp.isoformat() if item.timestamp else None
            page = gradebook.write_submission(target, opts.assignment, result, item.notes, item.timestamp)
            result.pop("autograded", None)
            result.pop("feedback_html", None)
            if page is not None:
                gradebook.link_or_copy(page, out / "feedback" / f"{result['student_id']}.html")
            result.update(recorder.record(result, disputed, item.timestamp))
            result.update(key=item.key, feedback_page=str(page) if page else None,
                          final=not str(result.get("failure") or "").startswith(INFRASTRUCTURE_FAILURES))
            book.append(result)
            fresh[item.key] = result
            bar.update(1)

        settings = worker.Settings(
            assignment=opts.assignment, course_root=str(root), source_notebook=str(source_nb),
            release_dir=str(cache / "release" / opts.assignment), out_dir=str(out),
            work_dir=str(work), plan_path=str(cache / "plan.pt"),
            db_template=str(cache / "gradebook.db"), cell_timeout=opts.cell_timeout,
            submission_timeout=opts.submission_timeout,
            limits=limits,
            use_sandbox=opts.sandbox, write_feedback=opts.feedback)
        tasks = [(settings, i.sub.student_id, i.sub.data, i.sub.problem) for i in todo]
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=f"grading {opts.assignment}", unit="sub",
                   disable=not opts.progress or not tasks, file=sys.stderr)
        if pool is not None:
            # the main process records each result while the workers go on grading
            dispatch.grade_all(pool, tasks, _on_result, assignment.points())
        bar.close()
        _log(opts, started, "all graded")

        # ---- report: one row per submission of this collection, from the journal
        every = {**earlier, **fresh}
        results = sorted((every[i.key] for i in items), key=lambda r: r["student_id"])
        histogram = None
        if pool is not None:
            histogram = dispatch.in_background(_histogram, [float(r["score"]) for r in results],
                                               assignment.max_score, out / "histogram.png", opts.assignment)
        gradebook.export(target, opts.assignment, out / "nbgrader_export.csv")
        rows, problems = write_tables(out, results, [t.grade_id for t in assignment.tests])
        sandbox.write_manifest(out, status, limits, results)  # run.json: how each submission ran
        absent = {r["student_id"]: r for r in every.values() if r["student_id"] not in by_student}
        book.compact(results + sorted(absent.values(), key=lambda r: r["student_id"]))
        if histogram is not None:
            histogram.result(timeout=120)
        else:
            _histogram([float(r["score"]) for r in results], assignment.max_score, out / "histogram.png",
                       opts.assignment)
    except BaseException:
        if pool is not None:
            pool.close(kill=True)
            pool = None
        raise
    finally:
        book.close()
        if recorder is not None:
            recorder.close()
        if pool is not None:
            pool.close()
    for result in fresh.values():
        if result.get("traceback"):
            print(f"grader error for {result['student_id']}:\n{result['traceback']}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    _log(opts, started, "results written")
    return Outcome(rows, problems, out, time.monotonic() - started, status, assignment.max_score,
                   graded=len(fresh), reused=len(items) - len(todo), target=target, notes=notes)


def _still_valid(record: dict | None, recorded: set[str]) -> bool:
    """An earlier result can stand: complete, still in the gradebook, its feedback page there."""
    if record is None or not record.get("final", False) or record["student_id"] not in recorded:
        return False
    page = record.get("feedback_page")
    return page is None or Path(page).is_file()
