"""Sandboxed run: fresh kernels for one submission, and a bounded channel to talk to one.

Each submission gets two kernels, one after the other, each in a fresh private work dir that
holds only the assignment's release files (never a plan, never a test):

1. the *probe kernel* (:mod:`autograder.probe`): the student's cells, then the verifier's
   questions, over :class:`Channel`;
2. the *nbgrader kernel*: nbgrader's own autograde run with the tests, for the in-kernel scores
   and the feedback (:func:`run_notebook`).

The probe kernel runs first, so nothing of a hidden test can reach it through the sandbox
either (the zygote kills every process and wipes /tmp and /dev/shm between the two).
Kernels are forked from the worker's zygote (:mod:`autograder.zygote`) when it works, or
started one sandbox each (:mod:`autograder.sandbox`).

Defends against: kernels that never answer (per-request timeouts, interrupts, then a kill; a
per-kernel deadline), oversized messages (:data:`autograder.probe.MAX_MESSAGE_BYTES` per message,
counted frame by frame before anything is deserialised), processes left behind (the whole
sandbox is killed). Tests: ``tests/test_verdict.py``, ``tests/test_grader.py``
(``attack-infinite-loop``, ``attack-uninterruptible-loop``, ``attack-os-exit``).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from jupyter_core.utils import run_sync

from . import sandbox

COULD_NOT_START = "the kernel could not start or died: "
DIED = "the kernel died (crash, os._exit, memory or CPU limit)"
GRACE_SECONDS = 5.0


class Kernels:
    """A worker's source of fresh sandboxed kernels (one zygote, reused while it stays clean)."""

    def __init__(self, slot_root: Path, release_files: list[tuple[Path, Path]], limits: sandbox.Limits,
                 use_sandbox: bool, preload: list[str]):
        self.slot_root = Path(slot_root)
        self.release_files = release_files
        self.limits = limits
        self.use_sandbox = use_sandbox
        self.preload = preload
        self.zygote = None
        self.zygote_failures = 0
        self.runs = 0
        self.workdirs: list[Path] = []

    def _zygote(self):
        """The worker's zygote (started on first use), or None: then one bwrap per kernel."""
        if not self.use_sandbox or os.environ.get("AUTOGRADER_NO_ZYGOTE") or self.zygote_failures >= 2:
            return None
        if not sandbox.probe().available:
            return None
        from .zygote import Zygote, ZygoteError

        if self.zygote is None:
            self.zygote = Zygote(self.slot_root, self.preload, self.limits)
        if not self.zygote.alive():
            try:
                self.zygote.start()
            except (ZygoteError, OSError) as exc:
                self.zygote_failures += 1
                self.zygote.close()
                print(f"[autograder] zygote unavailable ({exc}); starting one sandbox per kernel", file=sys.stderr)
                return None
        return self.zygote

    def workdir(self) -> Path:
        """A fresh private work dir with the release's data files (nothing else)."""
        self._zygote()  # first: its start mounts the size-capped workspace over the slot's root
        self.runs += 1
        work = self.slot_root / f"run-{self.runs}"
        self.slot_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.slot_root, 0o711)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for source, relative in self.release_files:
            dest = work / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
        sandbox.prepare_workdir(work, use_sandbox=self.use_sandbox)
        self.workdirs.append(work)
        return work

    def manager(self, work: Path, kernel_name: str = "python3"):
        """A kernel manager for a kernel in ``work`` (not started)."""
        km = sandbox.SandboxedKernelManager(kernel_name=kernel_name, transport="ipc", ip=str(work / "kernel"),
                                            workdir=work, limits=self.limits, use_sandbox=self.use_sandbox,
                                            zygote=self._zygote())
        km.connection_file = str(work / "kernel.json")
        return km

    def stop(self, km, failed: bool) -> float:
        """Kill the kernel and all it started; returns its CPU seconds (when known)."""
        process = getattr(km.provisioner, "process", None) if km.provisioner else None
        zygote = km.zygote
        cpu = _tree_cpu(process.pid) if process is not None and zygote is None else 0.0
        kill_process(km)
        if zygote is not None:
            cpu = getattr(process, "cpu", 0.0)
            try:
                if failed or not zygote.reset():
                    zygote.close()  # a kernel died or something survived: never reuse this sandbox
            except Exception:
                zygote.close()
        try:
            run_sync(km.cleanup_resources)()
        except Exception:
            pass
        return cpu

    def clean(self) -> None:
        for work in self.workdirs:
            shutil.rmtree(work, ignore_errors=True)
        self.workdirs.clear()

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()


class Channel:
    """Requests to one started kernel over its shell socket, with bounded replies.

    Only ``execute_reply`` messages whose parent ``msg_id`` is the request's own are returned;
    iopub (the kernel's outputs) is not even connected. ``failure`` is set when the kernel died,
    stopped answering or ran past ``deadline`` (then it has been killed)."""

    def __init__(self, km, deadline: float, deadline_reason: str, max_message: int):
        import zmq
        from jupyter_client.blocking import BlockingKernelClient

        self.km = km
        self.deadline = deadline
        self.deadline_reason = deadline_reason
        self.max_message = max_message
        self.failure: str | None = None
        self.context = zmq.Context()
        self.context.setsockopt(zmq.MAXMSGSIZE, max_message)  # per frame, enforced by ZeroMQ
        self.client = BlockingKernelClient(context=self.context)
        self.client.load_connection_info(km.get_connection_info())
        self.client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        self.socket = self.client.shell_channel.socket

    def close(self) -> None:
        try:
            self.client.stop_channels()
        except Exception:
            pass
        self.context.destroy(linger=0)

    def _alive(self) -> bool:
        process = getattr(self.km.provisioner, "process", None) if self.km.provisioner else None
        return process is not None and process.poll() is None

    def _receive(self, timeout: float) -> dict | None:
        """One message, read frame by frame: more than ``max_message`` bytes is dropped unread."""
        import zmq

        if not self.socket.poll(max(1, int(timeout * 1000))):
            return None
        frames, total = [], 0
        while True:
            frame = self.socket.recv(copy=False)
            total += len(frame)
            if total <= self.max_message:
                frames.append(frame)
            if not self.socket.getsockopt(zmq.RCVMORE):
                break
        if total > self.max_message:
            return {"msg_type": "oversized", "parent_header": {}, "content": {}}
        try:
            _, parts = self.client.session.feed_identities(frames, copy=False)
            msg = self.client.session.deserialize(parts, content=True, copy=False)
        except Exception:
            return None
        return {"msg_type": msg["header"].get("msg_type"), "parent_header": msg.get("parent_header") or {},
                "content": msg.get("content") or {}}

    def _wait(self, msg_id: str, reply_type: str, timeout: float, interruptible: bool) -> dict | None:
        end = min(time.monotonic() + timeout, self.deadline)
        interrupted = False
        while True:
            now = time.monotonic()
            if now >= end:
                if now >= self.deadline:
                    self._kill(self.deadline_reason)
                    return None
                if interrupted or not interruptible:
                    self._kill("timeout: a cell did not stop when interrupted after the time limit"
                               if interrupted else f"{COULD_NOT_START}no answer")
                    return None
                try:
                    run_sync(self.km.interrupt_kernel)()
                except Exception:
                    pass
                interrupted, end = True, min(now + GRACE_SECONDS, self.deadline)
            msg = self._receive(min(0.5, max(0.0, end - now)))
            if msg is None:
                if not self._alive():
                    self.failure = DIED if interruptible else f"{COULD_NOT_START}it exited"
                    return None
                continue
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == reply_type:
                return msg["content"]
            if msg["msg_type"] == "oversized":
                # the kernel sent more than a reply may hold: its answers cannot be trusted to arrive
                self._kill("the kernel sent a message larger than the grader accepts")
                return None

    def _kill(self, reason: str) -> None:
        self.failure = self.failure or reason
        kill_process(self.km)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        msg_id = self.client.kernel_info()
        return self._wait(msg_id, "kernel_info_reply", timeout, interruptible=False) is not None

    def execute(self, code: str, timeout: float, store_history: bool = False,
                user_expressions: dict | None = None) -> dict | None:
        """Run ``code``; the content of its own execute_reply, or None (see ``failure``)."""
        if self.failure:
            return None
        msg_id = self.client.execute(code, silent=False, store_history=store_history,
                                     user_expressions=user_expressions or {}, allow_stdin=False,
                                     stop_on_error=False)
        return self._wait(msg_id, "execute_reply", timeout, interruptible=True)


def start(km) -> str | None:
    """Start a kernel; a reason when it could not start."""
    try:
        run_sync(km.start_kernel)()
    except Exception as exc:
        return f"{COULD_NOT_START}{type(exc).__name__}: {exc}"
    return None


def run_notebook(execute, nb, resources, km, timeout: float) -> str | None:
    """nbgrader's Execute preprocessor on ``nb`` in ``km``'s kernel; a reason when cut short."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    expired = threading.Event()

    def kill():
        expired.set()
        kill_process(km)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    failure = None
    try:
        execute.preprocess(nb, resources, km=km)
    except DeadKernelError:
        failure = f"timeout: the submission ran longer than {timeout:g} s" if expired.is_set() else DIED
    except CellTimeoutError:
        failure = "timeout: a cell did not stop when interrupted after the time limit"
    except RuntimeError as exc:
        if expired.is_set():
            failure = f"timeout: the submission ran longer than {timeout:g} s"
        elif "kernel" in str(exc).lower():
            failure = f"{COULD_NOT_START}{exc}"
        else:
            raise
    finally:
        timer.cancel()
        kc = getattr(execute, "kc", None)
        _shutdown(km, kc)
        if kc is not None:
            try:
                kc.stop_channels()
            except Exception:
                pass
        execute.kc = None
        execute.km = None
    return failure


def _tree_cpu(root_pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(x) for x in fields[11:15]) / tick
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def _shutdown(km, kc) -> None:
    """Ask the kernel to exit (so that its CPU time is accounted), wait a moment."""
    process = getattr(km.provisioner, "process", None) if km.provisioner else None
    if kc is None or process is None or process.poll() is not None:
        return
    try:
        run_sync(kc.shutdown)()
        process.wait(timeout=2)
    except Exception:
        pass


def kill_process(km) -> None:
    """Stop a kernel and everything it started (the whole sandbox); safe from any thread."""
    try:
        process = getattr(km.provisioner, "process", None) if km.provisioner else None
        if process is not None and process.poll() is None:
            if isinstance(process, subprocess.Popen):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    process.kill()
            else:
                process.kill()  # a zygote's child: the zygote kills its process group
            process.wait(timeout=10)
    except Exception:
        pass
