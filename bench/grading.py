"""Grading throughput: the course's grader against stock sequential ``nbgrader autograde``.

``python -m bench.grading`` (or ``python -m bench --only grading``) grades the same submissions
(``N`` of ps1_smoothing by default: correct, wrong and stub notebooks built by
:mod:`autograder.examples`, cycled) three ways, each as the command an instructor would type:

* ``nbgrader autograde ASSIGNMENT`` in a copy of the course (its gradebook already made by
  ``nbgrader generate_assignment``, not timed): stock nbgrader, sequential, no sandbox, no
  verification, no feedback;
* ``python -m autograder grade ASSIGNMENT --workers 1``: sandbox, verifier and feedback included;
* the same with ``--workers 2``.

The grader's preparation (gradebook template, verifier's plan) is cached per source notebook,
like nbgrader's gradebook it is made once before the timed runs. The runs are interleaved
(stock, 1, 2, then the next repetition in rotated order) so that load from other processes hits
all three alike; we report the median wall time of whole commands (start-up included) and
submissions per minute. The scores of both graders are compared too: on these honest
submissions they must agree. Results go to ``build/bench/grading.json``; a table is printed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "grading"


def _env() -> dict:
    env = dict(os.environ)
    state = REPO / "build" / "bench-state"
    for var, sub in {"JUPYTER_CONFIG_DIR": "jupyter/config", "JUPYTER_DATA_DIR": "jupyter/data",
                     "JUPYTER_RUNTIME_DIR": "jupyter/runtime", "IPYTHONDIR": "ipython",
                     "MPLCONFIGDIR": "matplotlib"}.items():
        env.setdefault(var, str(state / sub))
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    env.setdefault("MPLBACKEND", "Agg")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def make_submissions(assignment: str, n: int, folder: Path) -> list[str]:
    from autograder import examples

    kinds = [("correct", examples.build(assignment, examples.solutions(assignment))),
             ("wrong", examples.build(assignment, examples.wrong_answers(assignment)[1])),
             ("stub", examples.build(assignment, None))]
    import nbformat

    students = []
    for i in range(n):
        kind, nb = kinds[i % 3] if i < 3 else kinds[0 if i % 2 else 1]
        student = f"s{i:02d}-{kind}"
        (folder / student).mkdir(parents=True)
        nbformat.write(nb, folder / student / f"{assignment}.ipynb")
        students.append(student)
    return students


class Stock:
    """A copy of the course where ``nbgrader autograde`` runs as its documentation says."""

    def __init__(self, assignment: str, submissions: Path, root: Path):
        self.assignment, self.course = assignment, root / "stock-course"
        self.course.mkdir(parents=True)
        shutil.copy(REPO / "nbgrader_config.py", self.course)
        shutil.copytree(REPO / "source" / assignment, self.course / "source" / assignment)
        for student in sorted(p.name for p in submissions.iterdir()):
            dest = self.course / "submitted" / student / assignment
            dest.mkdir(parents=True)
            shutil.copy(submissions / student / f"{assignment}.ipynb", dest)
        self._nbgrader("generate_assignment", assignment, "--force")

    def _nbgrader(self, *args) -> float:
        started = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), *args], cwd=self.course,
                              env=_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return time.perf_counter() - started

    def run(self) -> float:
        shutil.rmtree(self.course / "autograded", ignore_errors=True)
        return self._nbgrader("autograde", self.assignment, "--force")

    def scores(self) -> dict[str, float]:
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.course / 'gradebook.db'}") as gb:
            return {s.student.id: float(s.score) for s in gb.find_assignment(self.assignment).submissions}


def ours(assignment: str, submissions: Path, out: Path, workers: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", assignment, "--submissions", str(submissions),
                           "--out", str(out), "--workers", str(workers), "--quiet"],
                          cwd=REPO, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"autograder failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - started


def run(out_dir, quick: bool = False, assignment: str = "ps1_smoothing", n: int | None = None,
        repeats: int | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = n or (2 if quick else 10)
    repeats = repeats or (1 if quick else 2)
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        tmp = Path(tmp)
        subs = tmp / "submissions"
        students = make_submissions(assignment, n, subs)
        stock = Stock(assignment, subs, tmp)
        graded = tmp / "ours"
        # the grader's cached preparation, made once like nbgrader's gradebook above
        warm = tmp / "warm"
        (warm / students[0]).mkdir(parents=True)
        shutil.copy(subs / students[0] / f"{assignment}.ipynb", warm / students[0])
        ours(assignment, warm, graded, 1)
        runners = {"nbgrader autograde (stock, sequential)": stock.run,
                   "autograder --workers 1": lambda: ours(assignment, subs, graded, 1),
                   "autograder --workers 2": lambda: ours(assignment, subs, graded, 2)}
        names = list(runners)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(repeats):
            order = names[rep % 3:] + names[: rep % 3]
            for name in order:
                seconds[name].append(runners[name]())
        with open(graded / "grades.csv", newline="") as handle:
            our_scores = {r["student_id"]: float(r["score"]) for r in csv.DictReader(handle)}
            handle.seek(0)
            statuses = {r["student_id"]: r["status"] for r in csv.DictReader(handle)}
        stock_scores = stock.scores()
    base = statistics.median(seconds[names[0]])
    rows = []
    for name in names:
        wall = statistics.median(seconds[name])
        rows.append({"runner": name, "seconds": [round(s, 2) for s in seconds[name]], "median_s": round(wall, 2),
                     "per_submission_s": round(wall / n, 3), "submissions_per_minute": round(60 * n / wall, 1),
                     "speedup_vs_stock": round(base / wall, 2)})
    target = 1.5
    data = {
        "benchmark": NAME, "quick": quick, "assignment": assignment, "submissions": n, "repeats": repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "runs": rows,
        "scores_agree": our_scores == stock_scores,
        "scores": {"autograder": our_scores, "nbgrader": stock_scores},
        "statuses": statuses,
        "target": {"speedup_workers_2": target, "met": rows[2]["speedup_vs_stock"] >= target},
    }
    (out_dir / f"{NAME}.json").write_text(json.dumps(data, indent=2))
    return data


def table(data: dict) -> str:
    lines = [f"grading throughput: {data['submissions']} submissions of {data['assignment']}, "
             f"{data['machine']['cpus']} CPUs, median of {data['repeats']} interleaved runs",
             f"{'runner':42s} {'median s':>9s} {'s/sub':>7s} {'subs/min':>9s} {'vs stock':>9s}"]
    for r in data["runs"]:
        lines.append(f"{r['runner']:42s} {r['median_s']:9.2f} {r['per_submission_s']:7.3f} "
                     f"{r['submissions_per_minute']:9.1f} {r['speedup_vs_stock']:8.2f}x")
    lines.append(f"scores agree with nbgrader's: {data['scores_agree']}; target >= {data['target']['speedup_workers_2']}x "
                 f"with 2 workers: {'met' if data['target']['met'] else 'NOT met'} "
                 f"(load average at the end: {data['machine']['load_average_at_end'][0]:.1f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grading", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench")
    parser.add_argument("--assignment", default="ps1_smoothing")
    parser.add_argument("-n", type=int, default=None, help="submissions (default 10)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 submissions, 1 repetition: a smoke test")
    args = parser.parse_args(argv)
    data = run(args.out, quick=args.quick, assignment=args.assignment, n=args.n, repeats=args.repeats)
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
