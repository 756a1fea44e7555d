"""Command line: ``python -m autograder grade ASSIGNMENT --submissions DIR [...]``.

Exit status 0 when every submission got its row in grades.csv (whatever the students scored),
1 when the grader could not run (bad arguments, an assignment whose tests fail on its own
solution), 2 for usage errors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autograder",
                                description="Grade nbgrader submissions in sandboxed kernels, with verified scores.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade every submission of one assignment",
                       description="Grade the submissions of ASSIGNMENT: by default the course's submitted/ folder, "
                                   "where `nbgrader collect` puts them; or --submissions DIR. Verified scores, flags, "
                                   "comments, timestamps and late penalties go into the course's nbgrader gradebook; "
                                   "feedback into feedback/<student>/ASSIGNMENT/ for `nbgrader release_feedback`. "
                                   "Re-running grades only new or changed submissions.")
    g.add_argument("assignment", help="assignment name, e.g. ps1_smoothing (source/<name>/<name>.ipynb)")
    g.add_argument("--submissions", type=Path, default=None,
                   help="where the submissions are (default: the course's submitted/ folder, i.e. "
                        "submitted/<student_id>/ASSIGNMENT/ASSIGNMENT.ipynb with nbgrader's timestamp.txt, as "
                        "`nbgrader collect` leaves them); or a folder of <student_id>/ASSIGNMENT.ipynb, "
                        "and/or LMS .zip downloads")
    g.add_argument("--out", type=Path, default=None,
                   help="the grader's own results: grades.csv, problems.csv, results.jsonl (the journal), "
                        "feedback/<student_id>.html links, histogram (default build/grades/ASSIGNMENT; "
                        "not the course root)")
    g.add_argument("--force", action="store_true",
                   help="grade every submission again (default: only new or changed ones; earlier results "
                        "are kept)")
    g.add_argument("--db-url", default=None,
                   help="nbgrader gradebook to record into (default: the course's CourseDirectory.db_url, "
                        "SQLite gradebook.db at the course root unless nbgrader_config.py says otherwise)")
    g.add_argument("--private", action="store_true",
                   help="a trial run that leaves the course alone: gradebook.db, autograded/ and feedback/ "
                        "go under --out instead of the course's")
    g.add_argument("--workers", type=_positive, default=None, help="parallel workers (default: number of cores)")
    g.add_argument("--timeout", type=_positive, default=30,
                   help="seconds per notebook cell before it is interrupted (default 30)")
    g.add_argument("--submission-timeout", type=_positive, default=300,
                   help="seconds per submission before its kernel is killed (default 300)")
    g.add_argument("--memory-mb", type=_positive, default=4096, help="address-space limit per kernel (default 4096)")
    g.add_argument("--zip-regexp", default=None,
                   help="nbgrader FileNameCollectorPlugin.named_regexp for LMS downloads "
                        "(needs the student_id and file_id groups; matched, as in nbgrader, against "
                        "the start of the extracted path /extracted/<entry name>, else of the entry's "
                        "base name). Default: <assignment>_<student_id>_attempt_<timestamp>_<file>, "
                        "anchored on the LMS's prefix")
    g.add_argument("--course-root", type=Path, default=None, help="course root (default: . or the repository)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="grade on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786; "
                        "README: Grading on a cluster); default: local worker processes")
    g.add_argument("--worker-memory-mb", type=_positive, default=6144,
                   help="address-space limit of each local grader worker process (default 6144)")
    g.add_argument("--no-sandbox", action="store_true",
                   help="run kernels without bubblewrap (rlimits only; student code gets the grader's rights). "
                        "Without it the grader refuses to run where the sandbox does not work")
    g.add_argument("--no-feedback", action="store_true", help="skip the feedback HTML pages")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    sub.add_parser("check-sandbox", help="say whether the bubblewrap sandbox works here, with which bwrap, "
                                         "and if not, why (bwrap's message, the user-namespace sysctls)")
    return p


def _skip_slow_optional_imports() -> None:
    """jsonschema (under nbformat) imports the optional ``rfc3987_syntax`` to check "iri"
    formats, which nbformat's schema never uses; building its grammar costs ~1.7 s at every
    start. Marking it absent makes jsonschema skip that checker (it handles ImportError)."""
    sys.modules.setdefault("rfc3987_syntax", None)


def main(argv: list[str] | None = None) -> int:
    _skip_slow_optional_imports()
    args = parser().parse_args(argv)
    if args.command == "check-sandbox":
        from . import sandbox

        status = sandbox.probe()
        print(sandbox.describe(status))
        return 0 if status.available else 1
    from . import sandbox

    try:  # before anything else: never grade unconfined unless asked to
        sandbox.require(not args.no_sandbox)
    except sandbox.SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from . import grading, report, verifier

    opts = grading.Options(
        assignment=args.assignment, submissions=args.submissions, out=args.out,
        workers=args.workers, cell_timeout=args.timeout, submission_timeout=args.submission_timeout,
        memory_mb=args.memory_mb, zip_regexp=args.zip_regexp, course_root=args.course_root,
        sandbox=not args.no_sandbox, progress=not args.quiet, feedback=not args.no_feedback,
        force=args.force, private=args.private, db_url=args.db_url, scheduler=args.scheduler,
        worker_memory_mb=args.worker_memory_mb)
    from . import journal

    try:
        outcome = grading.grade(opts)
    except (ValueError, verifier.SetupError, journal.Busy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every result recorded so far is kept; run the same command again to grade "
              "the rest", file=sys.stderr)
        return 130
    if not args.quiet:
        print(report.summary(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
