"""Dispatch: every submission to a worker that grades it, every result back to the main process, once.

The trusted main process prepares the run (gradebook, the verifier's plan), then::

    pool = dispatch.start(workers, scheduler=None | "tcp://host:8786", ...)  # early: workers warm up
    dispatch.grade_all(pool, tasks, on_result, points)                     # blocks until done
    pool.close()

``on_result`` is called in the main process exactly once per task, in completion order, with the
worker's result dict, or with a ``failed: <reason>`` result built here when no worker could grade
that submission. Two backends, the same per-submission pipeline (:func:`autograder.worker.grade`
/ :class:`autograder.worker.Worker`: sandboxed kernel, verification, feedback) and identical results:

* :class:`LocalPool` (default, no Dask needed): ``workers`` processes forked from the main one
  (they inherit its imports; ``worker.init`` boots each one's sandbox zygote while the main process
  prepares), one task at a time over a pipe. What it defends against (issue 12, item 6):

  - a worker that dies mid-submission (OOM killer, SIGKILL, a crash): the main process sees its
    process sentinel or the pipe's EOF, starts a fresh worker, and grades that submission again,
    at most ``attempts`` times in all; then the row is ``failed: the grader's worker died while
    grading this submission (N attempts)``. ``multiprocessing.Pool`` waited forever here, and
    ``concurrent.futures.ProcessPoolExecutor`` breaks the whole pool (``BrokenProcessPool``).
    Tests: ``tests/test_dispatch.py::test_local_pool_retries_a_killed_worker_then_fails_the_row``
    and ``::test_local_grade_survives_a_worker_killed_mid_submission`` (the real grade command);
  - a student-induced memory blow-up in the trusted worker (e.g. a forged probe answer it clones):
    each worker runs under an address-space limit (``RLIMIT_AS`` soft limit, ``--worker-memory-mb``)
    so the allocation fails in that worker only (its row says ``grader error``) or the worker
    dies (retried, then failed as above). Test: ``::test_local_pool_worker_memory_limit``;
  - a worker that never answers: a wall-clock deadline per task (``deadline_s``: the
    submission timeout plus a margin), then the worker is killed and the task retried or failed.
    Test: ``::test_local_pool_deadline_kills_a_stuck_worker``.

* ``DaskPool`` (:mod:`autograder.dispatch_dask`, ``--scheduler ADDRESS``): one Dask task per
  submission on an existing ``distributed`` cluster. The main process still prepares, and alone
  writes the gradebook, CSVs and feedback. Workers need not share a filesystem with it: what a
  worker reads (the source notebook, nbgrader_config.py, the release files, the plan, the
  gradebook template) travels in a worker plugin (the scheduler hands it to workers that join or
  restart later) and is written to a worker-local temporary folder, once per worker thread and
  run. A Dask worker where the sandbox does not work refuses the task (:class:`NoSandbox`; the
  row says so) unless the main process was run with ``--no-sandbox``. A Dask worker that dies
  mid-submission is handled by the scheduler: the task runs again elsewhere, at most
  ``allowed-failures + 1`` times (scheduler setting, default 3), then ``KilledWorker`` gives a
  failed row. Tests: ``::test_dask_rows_identical_to_local``,
  ``::test_dask_worker_killed_mid_submission``, ``::test_dask_worker_without_sandbox_refuses``.
"""
from __future__ import annotations

import dataclasses
import queue
import resource
import signal
import sys
import time
from collections import deque
from multiprocessing import connection
from typing import Callable, Iterator, NamedTuple

DEFAULT_WORKER_MEMORY_MB = 6144
DEFAULT_ATTEMPTS = 2


class Failed(NamedTuple):
    """What a pool yields for a task no worker could grade."""

    reason: str


class NoSandbox(RuntimeError):
    """Raised on a Dask worker that cannot start the sandbox: the task is refused, never graded bare."""


def _log(message: str) -> None:
    print(f"[autograder] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- local


def _serve(conn, slot: str, function, initializer, initargs, memory_bytes: int | None) -> None:
    """A local worker process: initialise once, then grade tasks one at a time until told to stop."""
    import ctypes

    try:  # die with the main process, even when it is SIGKILLed
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if memory_bytes:  # soft limit only: kernels started from here may still set their own
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes if hard == resource.RLIM_INFINITY
                                                else min(memory_bytes, hard), hard))
    if initializer is not None:
        slots: queue.SimpleQueue = queue.SimpleQueue()  # worker.init takes its slot name from a queue
        slots.put(slot)
        initializer(slots, *initargs)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, task = message
        try:
            answer = function(task)
        except Exception as exc:  # worker.grade catches its own; this is a last resort (MemoryError, ...)
            answer = Failed(f"grader error: {type(exc).__name__}: {exc}")
        conn.send((index, answer))


@dataclasses.dataclass
class _Proc:
    slot: str
    process: object  # multiprocessing.Process
    conn: object     # the main process's end of the pipe
    index: int | None = None  # the task it is grading
    deadline: float = 0.0


class LocalPool:
    """Forked worker processes that survive their own deaths (see the module docstring)."""

    def __init__(self, workers: int, function: Callable, initializer: Callable | None = None,
                 initargs: tuple = (), memory_mb: int | None = DEFAULT_WORKER_MEMORY_MB,
                 deadline_s: float = 660.0, attempts: int = DEFAULT_ATTEMPTS):
        import multiprocessing

        self._ctx = multiprocessing.get_context("fork")
        self.function, self.initializer, self.initargs = function, initializer, initargs
        self.memory_bytes = memory_mb << 20 if memory_mb else None
        self.deadline_s, self.attempts = deadline_s, max(1, attempts)
        self.restarts = 0
        self.procs = [self._spawn(f"w{i}") for i in range(max(1, workers))]

    def _spawn(self, slot: str) -> _Proc:
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, name=f"autograder-{slot}", daemon=True,
                                    args=(theirs, slot, self.function, self.initializer, self.initargs,
                                          self.memory_bytes))
        process.start()
        theirs.close()
        return _Proc(slot, process, ours)

    def _replace(self, proc: _Proc) -> _Proc:
        """Kill ``proc`` (if it still runs) and start a fresh worker, with a new slot name (its own
        work dir and zygote: nothing of the dead one is reused)."""
        if proc.process.is_alive():
            proc.process.kill()
        proc.process.join(10)
        proc.conn.close()
        self.restarts += 1
        fresh = self._spawn(f"{proc.slot.split('.')[0]}.{self.restarts}")
        self.procs[self.procs.index(proc)] = fresh
        return fresh

    def imap_unordered(self, tasks: list, labels: list[str] | None = None) -> Iterator[tuple[int, object]]:
        """``(index, result)`` for every task exactly once, in completion order; ``result`` is a
        :class:`Failed` when the task's workers died (or hit the deadline) ``attempts`` times."""
        labels = labels or [f"task {i}" for i in range(len(tasks))]
        todo = deque(range(len(tasks)))
        tries = [0] * len(tasks)
        idle_deaths = 0
        while todo or any(p.index is not None for p in self.procs):
            for proc in self.procs:
                if proc.index is None and todo:
                    index = todo.popleft()
                    tries[index] += 1
                    proc.index, proc.deadline = index, time.monotonic() + self.deadline_s
                    try:
                        proc.conn.send((index, tasks[index]))
                    except OSError:
                        pass  # it died: its sentinel says so below
            busy = [p for p in self.procs if p.index is not None]
            timeout = max(0.0, min((p.deadline for p in busy), default=time.monotonic() + 60) - time.monotonic())
            connection.wait([p.conn for p in busy] + [p.process.sentinel for p in self.procs], timeout)
            for proc in list(self.procs):
                index, why = proc.index, None
                if index is not None and proc.conn.poll():
                    try:
                        done, answer = proc.conn.recv()
                    except (EOFError, OSError):
                        why = "died"
                    else:
                        proc.index = None
                        yield done, answer
                        continue
                if why is None and not proc.process.is_alive():
                    why = "died"
                if why is None and index is not None and time.monotonic() > proc.deadline:
                    why = f"was stopped after {self.deadline_s:g} s"
                if why is None:
                    continue
                if why != "died":
                    proc.process.kill()
                proc.process.join(5)  # its exit status, for the log
                code = proc.process.exitcode
                how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                       else f"exit status {code}")
                self._replace(proc)
                if index is None:
                    idle_deaths += 1
                    if idle_deaths > 3 * len(self.procs):
                        raise RuntimeError(f"the grader's workers keep dying before any task ({how})")
                    continue
                idle_deaths = 0
                if tries[index] < self.attempts:
                    _log(f"worker {proc.slot} {why} ({how}) while grading {labels[index]}; "
                         f"grading it again (attempt {tries[index] + 1} of {self.attempts})")
                    todo.append(index)
                else:
                    _log(f"worker {proc.slot} {why} ({how}) while grading {labels[index]}; giving up")
                    verb = "died" if why == "died" else f"did not finish in {self.deadline_s:g} s"
                    yield index, Failed(f"the grader's worker {verb} while grading this submission "
                                        f"({tries[index]} attempts, last: {how})")

    def close(self, kill: bool = False) -> None:
        for proc in self.procs:
            if not kill:
                try:
                    proc.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + (0 if kill else 30)
        for proc in self.procs:
            proc.process.join(max(0.0, deadline - time.monotonic()))
            if proc.process.is_alive():
                proc.process.kill()
                proc.process.join(10)
            proc.conn.close()


# ---------------------------------------------------------------------------------- the call


def start(workers: int, *, scheduler: str | None = None, initargs: tuple = (),
          memory_mb: int | None = DEFAULT_WORKER_MEMORY_MB, deadline_s: float = 660.0,
          attempts: int = DEFAULT_ATTEMPTS):
    """The pool that grades this run: local worker processes (forked now, so that they boot their
    sandboxes while the main process prepares) or the Dask cluster at ``scheduler``."""
    if scheduler:
        from .dispatch_dask import DaskPool  # imports distributed: only for --scheduler

        return DaskPool(scheduler, retries=attempts - 1)
    from . import worker

    return LocalPool(workers, worker.grade, worker.init, initargs, memory_mb, deadline_s, attempts)


def in_background(function: Callable, *args):
    """``function(*args)`` in a forked process while the main process goes on (the histogram):
    a ``concurrent.futures.Future``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    future = executor.submit(function, *args)
    executor.shutdown(wait=False)
    return future


def failed_result(task, reason: str, points: dict[str, float]) -> dict:
    """The result a worker gives for a submission it could not grade (see ``Worker.grade``)."""
    settings, student_id = task[0], task[1]
    return {"student_id": student_id, "assignment": settings.assignment, "notes": [], "failure": reason,
            "seconds": 0.0, "autograded": None, "feedback_html": None, "score": 0.0,
            "max_score": sum(points.values()),
            "verdicts": {g: {"score": 0.0, "max_score": p, "message": reason, "kernel_score": None,
                             "unverifiable": False} for g, p in points.items()}}


def grade_all(pool, tasks: list, on_result: Callable[[dict], None], points: dict[str, float]) -> None:
    """Grade ``tasks`` (``(settings, student_id, data, problem)``) on ``pool``; ``on_result(result)``
    once per task, in the main process, as results arrive."""
    import os

    seen: set[int] = set()
    recording = 0.0  # the main process's own time per result: what bounds a cluster's throughput
    for index, answer in pool.imap_unordered(tasks, [t[1] for t in tasks]):
        assert index not in seen, f"two results for {tasks[index][1]}"
        seen.add(index)
        started = time.perf_counter()
        on_result(failed_result(tasks[index], answer.reason, points) if isinstance(answer, Failed) else answer)
        recording += time.perf_counter() - started
    if os.environ.get("AUTOGRADER_TIMING") and seen:
        _log(f"recording {len(seen)} results took {recording:.2f} s in the main process "
             f"({1000 * recording / len(seen):.0f} ms each)")
    missing = [tasks[i][1] for i in range(len(tasks)) if i not in seen]
    if missing:
        raise RuntimeError(f"no result for {missing}")
