"""Dispatch (autograder/dispatch.py, dispatch_dask.py): every submission graded once, whatever dies.

* The local pool, with real forked processes and real signals and limits: a worker SIGKILLed
  mid-task is replaced and the task retried, then failed; a worker over its memory limit fails
  its own task only; a stuck worker is killed at the deadline.
* The real ``python -m autograder grade`` command: locally with a worker SIGKILLed while it
  grades; on a real Dask cluster (``dask scheduler`` and two ``dask worker --nthreads 1`` on
  127.0.0.1) the rows are identical to the local run's, also with one Dask worker SIGKILLed while
  it grades; a Dask worker without a sandbox refuses its task.

Runs in the bubblewrap sandbox where it works; elsewhere with --no-sandbox, except under CI=true,
where a missing sandbox is a failure.
"""
from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attacks import Context, cases
from bench.grading import DaskCluster as Cluster  # the same local cluster the benchmark starts

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "test-dispatch"
ASSIGNMENT = "ps1_smoothing"
BATCH = ["correct", "stub", "wrong-others_instead_of_uniform", "wrong-mutates_targets", "style-loops",
         "attack-patch-comparisons", "attack-hook-reads-hidden-tests", "attack-os-exit",
         "attack-write-files-read-source", "attack-not-json", "attack-no-notebook"]


# ------------------------------------------------------------------ the local pool, unit by unit

def _task(task):
    """What the pool runs in its workers: real work, real deaths."""
    kind, marker = task
    if kind == "die" or (kind == "die-once" and not os.path.exists(marker)):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(3600)
    if kind == "allocate":
        return len(bytearray(2 << 30))  # 2 GiB, over the limit the test sets
    return f"{kind} done by {os.getpid()}"


def _run(pool, tasks):
    try:
        answers = list(pool.imap_unordered(tasks, [t[0] for t in tasks]))
    finally:
        pool.close()
    indices = [i for i, _ in answers]
    assert sorted(indices) == list(range(len(tasks))), indices  # every task exactly once
    return {tasks[i][0]: a for i, a in answers}


def test_local_pool_retries_a_killed_worker_then_fails_the_row(tmp_path):
    from autograder import dispatch

    tasks = [("ok-1", ""), ("die-once", str(tmp_path / "once")), ("die", str(tmp_path / "always")),
             ("ok-2", ""), ("ok-3", "")]
    pool = dispatch.LocalPool(2, _task, attempts=2)
    started = time.monotonic()
    got = _run(pool, tasks)
    assert time.monotonic() - started < 60
    assert got["die-once"].startswith("die-once done"), got  # retried on a fresh worker: right result
    assert isinstance(got["die"], dispatch.Failed)
    assert got["die"].reason.startswith("the grader's worker died while grading this submission (2 attempts")
    assert "SIGKILL" in got["die"].reason
    assert all(got[k].startswith(k) for k in ("ok-1", "ok-2", "ok-3"))
    assert pool.restarts == 3  # die-once once, die twice


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmSize")


def test_local_pool_worker_memory_limit(tmp_path):
    """The limit is the worker's own: an allocation over it fails there, the next task runs."""
    from autograder import dispatch

    limit_mb = (_address_space() >> 20) + 512  # room for the worker's work, not for 2 GiB more
    pool = dispatch.LocalPool(1, _task, memory_mb=limit_mb)
    got = _run(pool, [("allocate", ""), ("ok", "")])
    assert isinstance(got["allocate"], dispatch.Failed) and "MemoryError" in got["allocate"].reason, got
    assert got["ok"].startswith("ok done")
    assert pool.restarts == 0
    # the main process itself is not limited
    assert resource.getrlimit(resource.RLIMIT_AS)[0] in (resource.RLIM_INFINITY, -1) or \
        resource.getrlimit(resource.RLIMIT_AS)[0] > limit_mb << 20


def test_local_pool_deadline_kills_a_stuck_worker():
    from autograder import dispatch

    pool = dispatch.LocalPool(2, _task, deadline_s=2, attempts=2)
    started = time.monotonic()
    got = _run(pool, [("hang", ""), ("ok-1", ""), ("ok-2", "")])
    assert time.monotonic() - started < 30
    assert isinstance(got["hang"], dispatch.Failed)
    assert got["hang"].reason.startswith("the grader's worker did not finish in 2 s while grading this submission "
                                         "(2 attempts")
    assert got["ok-1"].startswith("ok-1 done") and got["ok-2"].startswith("ok-2 done")


# ------------------------------------------------------------------ the grade command

def _sandbox_args() -> list[str]:
    from autograder import sandbox

    status = sandbox.probe()
    if status.available:
        return []
    if os.environ.get("CI") == "true":
        pytest.fail(f"the sandbox must work in CI: {status.reason}")
    return ["--no-sandbox"]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def grade_cmd(submissions: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autograder", "grade", ASSIGNMENT, "--submissions", str(submissions),
            "--out", str(out), "--private", "--quiet", "--timeout", "10", *_sandbox_args(), *extra]


def grade(submissions: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(grade_cmd(submissions, out, *extra), cwd=REPO, capture_output=True, text=True,
                          timeout=1200)


class Batch:
    def __init__(self):
        shutil.rmtree(BUILD, ignore_errors=True)
        self.ctx = Context(out=BUILD / "local", submissions=BUILD / "submissions", markers=BUILD / "markers")
        self.ctx.markers.mkdir(parents=True)
        self.cases = {c.student_id: c for c in cases(ASSIGNMENT, self.ctx) if c.student_id in BATCH}
        assert sorted(self.cases) == sorted(BATCH)
        for case in self.cases.values():
            case.write(self.ctx.submissions, ASSIGNMENT)
        self.proc = grade(self.ctx.submissions, self.ctx.out, "--workers", "2")
        assert self.proc.returncode == 0, self.proc.stderr[-5000:]
        self.grades = read_csv(self.ctx.out / "grades.csv")
        self.problems = read_csv(self.ctx.out / "problems.csv")

    def same_as_local(self, out: Path) -> None:
        grades, problems = read_csv(out / "grades.csv"), read_csv(out / "problems.csv")
        assert [r["student_id"] for r in grades] == sorted(self.cases)  # every row exactly once
        assert grades == self.grades
        assert problems == self.problems
        for row in self.grades:
            page = f"{row['student_id']}.html"
            local, other = self.ctx.out / "feedback" / page, out / "feedback" / page
            assert local.exists() == other.exists(), page
            if local.exists():
                assert _without_dates(local.read_text()) == _without_dates(other.read_text()), page


def _without_dates(page: str) -> str:
    import re

    return re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?", "<date>", page)


@pytest.fixture(scope="module")
def batch() -> Batch:
    result = Batch()
    rows = {r["student_id"]: r for r in result.grades}
    # the local run itself is right (tests/test_grader.py checks every case in depth)
    assert rows["correct"]["score"] == rows["correct"]["max_score"] and rows["correct"]["status"] == "graded"
    assert float(rows["stub"]["score"]) == 0
    assert rows["attack-not-json"]["status"].startswith("failed:")
    return result


def _workers_of(main: int) -> list[int]:
    """The grader's local worker processes: forked children of the main process (same command line)."""
    import psutil

    parent = psutil.Process(main)
    return [c.pid for c in parent.children() if c.cmdline() == parent.cmdline()]


def test_local_grade_survives_a_worker_killed_mid_submission(batch):
    """Issue 12 item 6: a SIGKILLed worker (as the OOM killer does) no longer hangs the run."""
    out = BUILD / "local-killed"
    proc = subprocess.Popen(grade_cmd(batch.ctx.submissions, out, "--workers", "2"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        journal = out / "results.jsonl"
        deadline = time.monotonic() + 600
        # once the first result is in, both workers are busy until the last two submissions
        while not (journal.exists() and journal.read_text().strip()) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)
        victims = _workers_of(proc.pid)
        assert len(victims) == 2, victims
        os.kill(victims[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-5000:]
    assert "died (signal SIGKILL) while grading" in stderr and "grading it again (attempt 2 of 2)" in stderr, \
        stderr[-3000:]
    batch.same_as_local(out)


# ------------------------------------------------------------------ Dask

@pytest.fixture(scope="module")
def cluster():
    result = Cluster(BUILD / "cluster", 2)
    yield result
    result.close()


def test_dask_rows_identical_to_local(batch, cluster):
    out = BUILD / "dask"
    proc = grade(batch.ctx.submissions, out, "--scheduler", cluster.address)
    assert proc.returncode == 0, proc.stderr[-5000:]
    batch.same_as_local(out)
    done = cluster.client.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert len(done) == 2 and all(done.values()), done  # both Dask workers took part


def test_dask_worker_killed_mid_submission(batch, cluster):
    """A Dask worker SIGKILLed while it grades: its submission runs again elsewhere, every row once."""
    out = BUILD / "dask-killed"
    proc = subprocess.Popen(grade_cmd(batch.ctx.submissions, out, "--scheduler", cluster.address), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client, killed, since = cluster.client, None, {}

    def executing(dask_worker):  # runs on the Dask workers: pickled by value, not by module name
        return os.getpid(), [str(ts.key) for ts in dask_worker.state.tasks.values() if ts.state == "executing"]

    try:
        deadline = time.monotonic() + 600
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            for pid, keys in client.run(executing).values():
                for key in keys:
                    since.setdefault((pid, key), time.monotonic())
                    if time.monotonic() - since[pid, key] > 3:  # a few seconds in: its kernels run
                        os.kill(pid, signal.SIGKILL)
                        killed = key
                        break
                if killed:
                    break
            time.sleep(0.3)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, "no Dask worker was seen grading"
    assert proc.returncode == 0, stderr[-5000:]
    batch.same_as_local(out)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker


def test_dask_worker_without_sandbox_refuses(tmp_path):
    """A Dask worker where bwrap does not work (AUTOGRADER_BWRAP=none) refuses, never grades bare."""
    from autograder import dispatch, sandbox, worker

    cluster = Cluster(tmp_path / "cluster", 1, env={"AUTOGRADER_BWRAP": "none"})
    try:
        settings = worker.Settings(assignment=ASSIGNMENT, course_root=str(REPO), source_notebook="-",
                                   release_dir="-", out_dir="-", work_dir="-", plan_path="-", db_template="-",
                                   limits=sandbox.Limits(), use_sandbox=True)
        pool = dispatch.start(1, scheduler=cluster.address, attempts=2)
        try:
            answers = list(pool.imap_unordered([(settings, "s1", b"{}", None)]))
        finally:
            pool.close()
    finally:
        cluster.close()
    assert len(answers) == 1 and isinstance(answers[0][1], dispatch.Failed), answers
    reason = answers[0][1].reason
    assert reason.startswith("the grader's worker tcp://127.0.0.1:") and "has no sandbox, it refused" in reason, reason
    assert "AUTOGRADER_BWRAP=none" in reason
