"""Grading throughput: the course's grader against stock sequential ``nbgrader autograde``, and
the cost of dispatching to a Dask cluster.

``python -m bench.grading`` (or ``python -m bench --only grading``) grades the same submissions
(``N`` of ps1_smoothing by default: correct, wrong and stub notebooks built by
:mod:`autograder.examples`, cycled, each with its student's name in a markdown cell) four ways,
each as the command an instructor would type:

* ``nbgrader autograde ASSIGNMENT`` in a copy of the course (its gradebook already made by
  ``nbgrader generate_assignment``, not timed): stock nbgrader, sequential, no sandbox, no
  verification, no feedback;
* ``python -m autograder grade ASSIGNMENT --workers 1``: sandbox, verifier and feedback included;
* the same with ``--workers 2``;
* the same with ``--scheduler ADDRESS``: a ``dask scheduler`` and two ``dask worker --nthreads 1``
  on this machine (started once before the timed runs, like a cluster that is already there):
  the dispatch overhead, against local ``--workers 2`` (target: at most 10 % slower).

The grader's preparation (gradebook template, verifier's plan) is cached per source notebook,
like nbgrader's gradebook it is made once before the timed runs. The runs are interleaved
(stock, 1, 2, then the next repetition in rotated order) so that load from other processes hits
all three alike; we report the median wall time of whole commands (start-up included) and
submissions per minute, and the load average (the machine may be shared). The scores of both graders are compared too: on these honest
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
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # kernels share the cores by design (see bench/__init__)
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
        nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # each student's own copy, a distinct file
        nb.cells.append(nbformat.v4.new_markdown_cell(f"Submitted by {student}.", id=f"submitted-by-{i}"))
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


class DaskCluster:
    """A real ``dask scheduler`` and ``workers`` single-threaded ``dask worker`` processes on
    127.0.0.1, each in its own process group (ours to stop); ``env`` adds to the environment.
    Used by this benchmark and by tests/test_dispatch.py."""

    def __init__(self, folder: Path, workers: int = 2, env: dict | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / "scheduler.json"
        self.file.unlink(missing_ok=True)
        self.env = {**_env(), "PYTHONPATH": str(REPO), **(env or {})}
        self.procs = []
        dask = str(Path(sys.executable).parent / "dask")
        self._start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(self.file)], folder / "scheduler.log")
        deadline = time.monotonic() + 60
        while not self.file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dask scheduler did not start:\n{(folder / 'scheduler.log').read_text()}")
            time.sleep(0.2)
        time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        for index in range(workers):
            self._start([dask, "worker", self.address, "--nthreads", "1", "--nworkers", "1",
                         "--no-dashboard", "--memory-limit", "6GB", "--preload", "autograder.dispatch_dask",
                         "--name", f"w{index}"], folder / f"worker{index}.log")
        from distributed import Client

        self.client = Client(self.address, timeout="30s")
        self.client.wait_for_workers(workers, timeout=120)

    def _start(self, argv: list[str], log: Path) -> None:
        self.procs.append(subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=open(log, "w"),  # noqa: SIM115
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def close(self) -> None:
        import signal

        self.client.close()
        for proc in reversed(self.procs):  # workers first; each in its own process group
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def ours(assignment: str, submissions: Path, out: Path, workers: int, scheduler: str | None = None) -> float:
    started = time.perf_counter()
    where = ["--scheduler", scheduler] if scheduler else ["--workers", str(workers)]
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", assignment, "--submissions", str(submissions),
                           "--out", str(out), *where, "--quiet", "--private", "--force"],
                          cwd=REPO, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"autograder failed:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - started


DASK = "autograder --scheduler (2 Dask workers x 1 thread)"


def _scores(path: Path) -> tuple[dict, dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {r["student_id"]: float(r["score"]) for r in rows}, {r["student_id"]: r["status"] for r in rows}


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
        cluster = DaskCluster(tmp / "dask", 2)
        try:
            ours(assignment, warm, tmp / "dask-out", 2, cluster.address)  # the workers' first imports
            runners = {"nbgrader autograde (stock, sequential)": stock.run,
                       "autograder --workers 1": lambda: ours(assignment, subs, graded, 1),
                       "autograder --workers 2": lambda: ours(assignment, subs, graded, 2),
                       DASK: lambda: ours(assignment, subs, tmp / "dask-out", 2, cluster.address)}
            names = list(runners)
            seconds: dict[str, list[float]] = {name: [] for name in names}
            loads = []
            for rep in range(repeats):
                order = names[rep % len(names):] + names[: rep % len(names)]
                for name in order:
                    seconds[name].append(runners[name]())
                    loads.append(os.getloadavg()[0])
        finally:
            cluster.close()
        our_scores, statuses = _scores(graded / "grades.csv")
        dask_scores, dask_statuses = _scores(tmp / "dask-out" / "grades.csv")
        stock_scores = stock.scores()
    base = statistics.median(seconds[names[0]])
    rows = []
    for name in names:
        wall = statistics.median(seconds[name])
        rows.append({"runner": name, "seconds": [round(s, 2) for s in seconds[name]], "median_s": round(wall, 2),
                     "per_submission_s": round(wall / n, 3), "submissions_per_minute": round(60 * n / wall, 1),
                     "speedup_vs_stock": round(base / wall, 2)})
    target = 2.5
    by_name = {r["runner"]: r for r in rows}
    local2, dask2 = by_name["autograder --workers 2"], by_name[DASK]
    slower = 1 - dask2["submissions_per_minute"] / local2["submissions_per_minute"]
    data = {
        "benchmark": NAME, "quick": quick, "assignment": assignment, "submissions": n, "repeats": repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg(), "load_average_1min_during": loads},
        "runs": rows,
        "scores_agree": our_scores == stock_scores,
        "scores": {"autograder": our_scores, "nbgrader": stock_scores},
        "statuses": statuses,
        "target": {"speedup_workers_2": target, "met": rows[2]["speedup_vs_stock"] >= target},
        "dask": {"same_rows_as_local": (dask_scores, dask_statuses) == (our_scores, statuses),
                 "rows_differing": {s: {"local": [our_scores.get(s), statuses.get(s)],
                                        "dask": [dask_scores.get(s), dask_statuses.get(s)]}
                                    for s in sorted(set(our_scores) | set(dask_scores))
                                    if (our_scores.get(s), statuses.get(s)) != (dask_scores.get(s), dask_statuses.get(s))},
                 "slower_than_local_workers_2": round(slower, 3), "target_max_slower": 0.10,
                 "met": slower <= 0.10},
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
    dask = data.get("dask")
    if dask:
        loads = data["machine"].get("load_average_1min_during") or [0]
        lines.append(f"Dask dispatch vs local --workers 2: {100 * dask['slower_than_local_workers_2']:+.1f} % "
                     f"slower (target <= 10 %: {'met' if dask['met'] else 'NOT met'}); same rows: "
                     f"{dask['same_rows_as_local']}; load average during the runs "
                     f"{min(loads):.1f}-{max(loads):.1f} on {data['machine']['cpus']} CPUs")
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
