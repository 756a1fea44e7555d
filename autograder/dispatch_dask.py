"""The Dask backend of :mod:`autograder.dispatch`: one Dask task per submission (``--scheduler``).

What travels: the task function is imported by name (the course package is installed on every
worker); the files a worker reads (:func:`bundle_of`) travel once, in a worker plugin the
scheduler also hands to workers that join or restart later. What it defends against is in
:mod:`autograder.dispatch`'s docstring, with the tests that prove it.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections import deque
from pathlib import Path
from typing import Iterator

from distributed import WorkerPlugin

from .dispatch import Failed, NoSandbox


# Settings fields that name files the worker reads, and where they go in the worker's copy.
_SHIPPED = {"source_notebook": "course/source/{assignment}/{assignment}.ipynb",
            "release_dir": "release/{assignment}",
            "plan_path": "plan/plan.pt",
            "db_template": "gradebook.db"}


def _read_tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return {}


def bundle_of(settings) -> dict[str, bytes]:
    """Every file a worker reads, by its path in the worker's copy (relative to a temp folder)."""
    files: dict[str, bytes] = {}
    names = {"assignment": settings.assignment}
    for field, target in _SHIPPED.items():
        target = target.format(**names)
        for rel, data in _read_tree(Path(getattr(settings, field))).items():
            files[f"{target}/{rel}" if rel else target] = data
    for rel, data in _read_tree(Path(f"{settings.plan_path}.d")).items():
        files[f"plan/plan.pt.d/{rel}"] = data
    config = Path(settings.course_root) / "nbgrader_config.py"
    if config.is_file():
        files["course/nbgrader_config.py"] = config.read_bytes()
    return files


def _local_settings(settings, root: Path):
    """``settings`` with every path pointing into the worker's copy of the bundle under ``root``."""
    names = {"assignment": settings.assignment}
    moved = {field: str(root / target.format(**names)) for field, target in _SHIPPED.items()}
    work = root / "work"
    work.mkdir(exist_ok=True)
    os.chmod(root, 0o711)  # the sandboxed kernel (uid nobody) must traverse to its work dir
    os.chmod(work, 0o711)
    return dataclasses.replace(settings, course_root=str(root / "course"), out_dir=str(root / "out"),
                               work_dir=str(work), **moved)


class _Bundle(WorkerPlugin):
    """A Dask worker plugin carrying the files of one run (see :func:`bundle_of`), registered
    under a name unique to the run; unregistering it at the end of the run removes the
    workers' copies and their graders."""

    def __init__(self, files: dict[str, bytes], run: str):
        self.files = files
        self.name = f"autograder-{run}"

    def teardown(self, worker=None):
        for key in [k for k in _GRADERS if k[0] == self.name]:
            _drop(key)


#: (plugin name, thread) -> (Worker, its folder): one grader per Dask worker thread and run
_GRADERS: dict[tuple[str, int], tuple[object, Path]] = {}


def _drop(key) -> None:
    """Forget a grader: its zygote and its copy of the bundle go."""
    import shutil

    grader, root = _GRADERS.pop(key)
    zygote = getattr(getattr(grader, "kernels", None), "zygote", None)
    if zygote is not None:
        try:
            zygote.close()
        except Exception:
            pass
    shutil.rmtree(root, ignore_errors=True)


def _grader(plugin_name: str, settings):
    """This Dask worker thread's :class:`autograder.worker.Worker` for the run, built on first use
    (like a local worker's); refused where the sandbox does not work."""
    import tempfile
    import threading

    from distributed import get_worker

    from . import sandbox, worker

    key = (plugin_name, threading.get_ident())
    if key in _GRADERS:
        return _GRADERS[key][0]
    dask_worker = get_worker()
    if settings.use_sandbox:
        status = sandbox.probe()
        if not status.available:
            raise NoSandbox(f"the grader's worker {dask_worker.address} has no sandbox, it refused this "
                            f"submission: {status.reason}")
    plugin = dask_worker.plugins.get(plugin_name)
    if plugin is None:
        raise RuntimeError(f"Dask worker {dask_worker.address} has no {plugin_name} (the run's files)")
    for old in [k for k in _GRADERS if k[1] == key[1]]:
        _drop(old)  # this thread's grader of an earlier run whose plugin was not torn down
    root = Path(tempfile.mkdtemp(prefix="autograder-dask-"))
    for rel, data in plugin.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    import torch

    torch.set_num_threads(1)  # the same numerics as a local worker
    grader = worker.Worker(_local_settings(settings, root), f"dask-{os.getpid()}-{threading.get_ident()}")
    _GRADERS[key] = (grader, root)
    return grader


def dask_setup(worker=None) -> None:
    """``dask worker --preload autograder.dispatch_dask``: import the grader when the worker
    starts rather than in its first task (which would stall the worker's event loop ~10 s)."""
    sys.modules.setdefault("rfc3987_syntax", None)  # see cli._skip_slow_optional_imports
    import nbclient  # noqa: F401
    import nbconvert.exporters  # noqa: F401
    import nbgrader.preprocessors  # noqa: F401
    import torch  # noqa: F401

    from . import feedback, static, worker  # noqa: F401


def _dask_grade(plugin_name: str, task) -> dict:
    """The Dask task: grade one submission on this worker, exactly as a local worker does."""
    sys.modules.setdefault("rfc3987_syntax", None)  # see cli._skip_slow_optional_imports
    settings, student_id, data, problem = task
    return _grader(plugin_name, settings).grade(student_id, data, problem)


class DaskPool:
    """One Dask task per submission on the cluster behind ``address``; results as they complete."""

    def __init__(self, address: str, retries: int = 1):
        from distributed import Client

        self.retries = retries
        try:
            self.client = Client(address, timeout="30s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        self.plugins: list[str] = []

    def imap_unordered(self, tasks: list, labels: list[str] | None = None) -> Iterator[tuple[int, object]]:
        import uuid

        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        if not tasks:
            return
        run = uuid.uuid4().hex[:12]
        plugin = _Bundle(bundle_of(tasks[0][0]), run)
        self.client.register_plugin(plugin, name=plugin.name)
        self.plugins.append(plugin.name)
        todo = deque(range(len(tasks)))
        futures: dict = {}
        pending = as_completed(loop=self.client.loop)

        def refill():  # a window of tasks in flight, so that the scheduler never holds every notebook
            window = max(8, 4 * sum(self.client.nthreads().values()))
            while todo and len(futures) < window:
                index = todo.popleft()
                future = self.client.submit(_dask_grade, plugin.name, tasks[index], key=f"autograde-{run}-{index}",
                                            pure=False, retries=self.retries)
                futures[future] = index
                pending.add(future)

        refill()
        for future in pending:
            index = futures.pop(future)
            try:
                answer = future.result()
            except KilledWorker as exc:
                answer = Failed(f"the grader's worker died while grading this submission "
                                f"({exc.allowed_failures + 1} attempts on Dask workers)")
            except NoSandbox as exc:
                answer = Failed(str(exc))
            except Exception as exc:
                answer = Failed(f"grader error on a Dask worker: {type(exc).__name__}: {exc}")
            future.release()
            refill()
            yield index, answer

    def close(self, kill: bool = False) -> None:
        for name in self.plugins:
            try:
                self.client.unregister_worker_plugin(name)
            except Exception:
                pass
        self.client.close()


