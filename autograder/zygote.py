"""Fast fresh kernels: a per-worker "zygote" that forks a new kernel for each submission.

Starting a kernel costs a Python start, ipykernel's imports and ``import torch`` (about 2 s of
CPU, most of a small submission's grading time). A zygote pays them once: it is a process,
started inside the worker's bubblewrap sandbox (:mod:`autograder.sandbox`: read-only system, no
network, private /tmp), that imports torch, numpy, ipykernel and the modules the assignment's
notebook imports, and then only waits for commands on a socket inherited from the worker. For
each submission it forks a child, which

* closes the command socket, starts a new session, redirects its output to the submission's
  ``kernel.log``,
* enters a fresh IPC namespace and a mount namespace of its own with new, size-capped ``/tmp``
  and ``/dev/shm`` tmpfs (SysV/POSIX shared memory or files left there die with the kernel);
  what bwrap bound below them (the work root; the venv and ``utils/`` of a course that lives
  under /tmp, as in CI) is bound again on top, read-only where it was
  (``tests/test_sandbox.py::test_a_course_and_venv_under_tmp_grade_in_the_sandbox``),
* moves into the submission's own work dir with a clean environment,
* sets the submission's rlimits (CPU seconds, address space, file size, open files, processes),
* drops every capability (bounding, ambient, permitted, effective, inheritable) and sets
  ``no_new_privs``; when the grader runs as root it first switches to the worker's own uid
  (:func:`autograder.sandbox.kernel_uid`); as an unprivileged user, bwrap's user namespace has a
  single uid and the zygote is made non-dumpable so that a child cannot ptrace it,
* and runs a regular IPython kernel with the submission's connection file.

The zygote keeps ``CAP_SYS_ADMIN`` for the namespaces and mounts above (root: on the host, but it
never runs student code; unprivileged: inside bwrap's user namespace only). As root the zygote
and its kernel run in one cgroup per worker (memory and pids in aggregate, where the machine has
cgroups: :class:`autograder.sandbox.SlotCgroup`) and the work dirs are on a size-capped tmpfs
(:func:`autograder.sandbox.private_workspace`).

Student code runs only in children, never in the zygote, so each submission starts from the
same pristine state, like a fresh kernel (the modules are imported, nothing else has run).
Between submissions the zygote kills every other process of its sandbox, and the worker deletes
the work dir: nothing of one student is left for the next.
When the zygote cannot start or dies, the worker falls back to one sandboxed process per kernel.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from . import sandbox

# Everything below runs inside the sandbox, started as ``python -c ZYGOTE <preload modules...>``.
ZYGOTE = r'''
import ctypes, json, os, re, resource, signal, sys
CONTROL = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CLONE_NEWNS, CLONE_NEWIPC, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV, MS_BIND = 0x20000, 0x8000000, 0x4000, 1 << 18, 2, 4, 4096
for name in sys.argv[3:]:
    try:
        __import__(name)
    except Exception:
        pass
import ipykernel.kernelapp, ipykernel.ipkernel, ipykernel.zmqshell  # noqa: E401
libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
children = {}
buffer = b""


def reply(obj):
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(CONTROL, data):]


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def kept_mounts():
    """The mount points bwrap made under /tmp and /dev/shm (the work root, and the read-only
    venv, interpreter or ``utils/`` when the course lives under /tmp): each kernel's fresh tmpfs
    must not hide them. Only the outermost of nested ones (they are re-bound recursively)."""
    points = set()
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point.startswith(("/tmp/", "/dev/shm/")):
                points.add(point)
    return sorted(p for p in points if not any(p.startswith(q + "/") for q in points))


def private_namespaces(tmp_bytes):
    """A fresh IPC namespace (SysV shm, semaphores, message queues) and a mount namespace with
    empty /tmp and /dev/shm of their own: nothing of this kernel outlives it for the next one.
    What bwrap mounted below them (:data:`KEPT`) is bound again on top, with its own flags
    (read-only stays read-only)."""
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for path in ("/tmp", "/dev/shm"):
        os.makedirs(path, exist_ok=True)
        kept = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in KEPT if p.startswith(path + "/")]
        check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                         f"size={tmp_bytes},mode=1777".encode()), f"mount tmpfs {path}")
        for point, fd in kept:
            os.makedirs(point, mode=0o755, exist_ok=True)
            check(libc.mount(f"/proc/self/fd/{fd}".encode(), point.encode(), None, MS_BIND | MS_REC, None),
                  f"bind {point}")
            os.close(fd)


def child(req):
    try:
        os.close(CONTROL)
        os.setsid()
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
        private_namespaces(req["tmp_bytes"])
        os.chdir(req["workdir"])
        os.environ.clear()
        os.environ.update(req["env"])
        for name, value in req["rlimits"]:
            resource.setrlimit(getattr(resource, name), (value, value))
        for cap in range(64):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if req["drop"] is not None:
            uid = gid = req["drop"]
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        # no capability left in any set (the zygote's, root mode, or its user namespace's)
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        check(libc.capset(header, data), "capset")
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = ["ipykernel_launcher", "-f", req["connection_file"], "--HistoryManager.hist_file=:memory:"]
        from ipykernel.kernelapp import IPKernelApp
        IPKernelApp.launch_instance()
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(1)


def reap():
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children[pid] = (os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime)


def others():
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


KEEP = os.path.realpath(sys.argv[2])  # the work root (bound from outside): never wiped here
KEPT = kept_mounts()  # bwrap's mounts under /tmp, /dev/shm: re-bound in each kernel, never wiped


def wipe(path, device=None):
    """Empty a tmpfs without leaving it (other mounts, such as the work root, are skipped)."""
    try:
        device = os.lstat(path).st_dev if device is None else device
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        full = os.path.join(path, name)
        try:
            info = os.lstat(full)
            if info.st_dev != device or any(k == full or k.startswith(full + "/") for k in [KEEP, *KEPT]):
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                os.chmod(full, 0o700)
                wipe(full, device)
                os.rmdir(full)
            else:
                os.unlink(full)
        except OSError:
            pass


while True:
    while b"\n" not in buffer:
        chunk = os.read(CONTROL, 65536)
        if not chunk:
            os._exit(0)
        buffer += chunk
    line, buffer = buffer.split(b"\n", 1)
    req = json.loads(line)
    op = req["op"]
    try:
        if op == "spawn":
            pid = os.fork()
            if pid == 0:
                child(req)
            children[pid] = None
            reply({"pid": pid})
        elif op == "poll":
            reap()
            state = children.get(req["pid"], (0, 0.0))
            reply({"status": None} if state is None else {"status": state[0], "cpu": state[1]})
        elif op == "signal":
            try:
                os.killpg(req["pid"], req["signal"])
            except OSError:
                try:
                    os.kill(req["pid"], req["signal"])
                except OSError:
                    pass
            reply({"ok": True})
        elif op == "reset":
            for attempt in range(100):
                reap()
                alive = others()
                if not alive:
                    break
                for pid in alive:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                import time
                time.sleep(0.01)
            reap()
            for path in ("/tmp", "/dev/shm"):
                wipe(path)
            left = others()
            reply({"ok": not left, "left": len(left)})
        elif op == "ping":
            reply({"ok": True})
        else:
            reply({"error": f"unknown op {op}"})
    except Exception as exc:
        reply({"error": f"{type(exc).__name__}: {exc}"})
'''

#: capabilities the zygote keeps when the grader runs as root (children drop every one before
#: any student code runs): switch uid, kill and wipe what a kernel left, new namespaces + tmpfs
ZYGOTE_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETPCAP",
               "CAP_SYS_ADMIN")
#: as an unprivileged user: capabilities inside bwrap's user namespace only (nothing on the host)
ZYGOTE_CAPS_USERNS = ("CAP_SYS_ADMIN", "CAP_SETPCAP")


#: cgroup names unique within a process (a Dask worker runs several zygotes, one per thread)
_CGROUP_SEQ = itertools.count()


class ZygoteError(RuntimeError):
    pass


class Zygote:
    """The worker's handle on its zygote (thread-safe: a watchdog may kill from another thread)."""

    def __init__(self, root: Path, preload: list[str], limits: sandbox.Limits):
        self.root = Path(root)
        self.preload = preload
        self.limits = limits
        self.status = sandbox.probe()
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.spawned = 0
        self.starts = 0
        self.cgroup: sandbox.SlotCgroup | None = None
        self.cgroup_held = ""
        self.workspace = ""
        self._finalizer = None

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 120.0) -> None:
        if not self.status.available:
            raise ZygoteError(f"no sandbox: {self.status.reason}")
        self.close()
        self.root.mkdir(parents=True, exist_ok=True)
        self.workspace = sandbox.private_workspace(self.root, self.limits)
        os.chmod(self.root, 0o711)
        ours, theirs = socket.socketpair()
        os.set_inheritable(theirs.fileno(), True)
        caps = ZYGOTE_CAPS if self.status.drop_to_nobody else ZYGOTE_CAPS_USERNS
        argv = sandbox.bwrap_prefix(self.root, self.status, self.limits, keep_caps=caps)
        argv = [a for a in argv if a != "--die-with-parent"] + ["--die-with-parent"]
        for key, value in sandbox.env_for(self.root).items():
            argv += ["--setenv", key, value]
        argv += ["--", sys.executable, "-c", ZYGOTE, str(theirs.fileno()), str(self.root), *self.preload]
        # the zygote and its kernel in one cgroup per worker (root): memory and pids in aggregate
        self.cgroup = sandbox.SlotCgroup(f"{os.getpid()}-{next(_CGROUP_SEQ)}", self.limits)
        if self.cgroup.dirs and self._finalizer is None:  # pool workers exit without __del__
            import multiprocessing.util

            self._finalizer = multiprocessing.util.Finalize(self, Zygote.close, args=(self,), exitpriority=10)
        self.starts += 1
        self.cgroup_held = "; ".join(self.cgroup.held)
        argv = self.cgroup.wrap(argv)
        log = open(self.root / "zygote.log", "ab")  # noqa: SIM115 - kept for the process's life
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            theirs.close()
            log.close()
        self.sock = ours
        self.sock.settimeout(timeout)
        if not self._request({"op": "ping"}, timeout=timeout).get("ok"):
            raise ZygoteError("the zygote did not answer")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        if self.process is not None:
            try:
                os.killpg(self.process.pid, 9)
            except OSError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.process = None
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None

    # ---------------------------------------------------------------- protocol
    def _request(self, req: dict, timeout: float = 30.0) -> dict:
        with self.lock:
            if self.sock is None:
                raise ZygoteError("zygote not running")
            self.sock.settimeout(timeout)
            try:
                self.sock.sendall((json.dumps(req) + "\n").encode())
                while b"\n" not in self.buffer:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ZygoteError("zygote closed the connection")
                    self.buffer += chunk
            except (OSError, socket.timeout) as exc:
                raise ZygoteError(f"zygote not answering: {exc}") from exc
            line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line)
        if "error" in answer:
            raise ZygoteError(answer["error"])
        return answer

    def provisioner(self, km) -> "ZygoteProvisioner":
        """The provisioner that makes ``km`` (a SandboxedKernelManager) fork its kernel from here."""
        provisioner = ZygoteProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
        provisioner.zygote, provisioner.workdir, provisioner.limits = self, km.workdir, km.limits
        return provisioner

    def spawn(self, workdir: Path, connection_file: str, limits: sandbox.Limits) -> int:
        drop = sandbox.kernel_uid() if self.status.drop_to_nobody else None
        rlimits = sandbox.rlimits(limits, with_nproc=drop is not None)
        env = sandbox.env_for(Path(workdir))
        self.spawned += 1
        return self._request({"op": "spawn", "workdir": str(workdir), "connection_file": connection_file,
                              "log": str(Path(workdir) / "kernel.log"), "env": env, "rlimits": rlimits,
                              "drop": drop, "tmp_bytes": limits.tmp_bytes})["pid"]

    def poll(self, pid: int) -> tuple[int | None, float]:
        answer = self._request({"op": "poll", "pid": pid})
        return answer["status"], answer.get("cpu", 0.0)

    def signal(self, pid: int, signum: int) -> None:
        self._request({"op": "signal", "pid": pid, "signal": int(signum)})

    def reset(self) -> bool:
        return bool(self._request({"op": "reset"}, timeout=60).get("ok"))


class ZygoteProcess:
    """Popen-like view of a zygote's child (what jupyter_client's provisioner expects)."""

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None
        self.cpu = 0.0
        self.stdout = self.stderr = self.stdin = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                status, cpu = self.zygote.poll(self.pid)
            except ZygoteError:
                status, cpu = -9, 0.0
            if status is not None:
                self.returncode, self.cpu = status, cpu
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("zygote child", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                self.zygote.signal(self.pid, signum)
            except ZygoteError:
                pass

    def kill(self) -> None:
        self.send_signal(9)

    def terminate(self) -> None:
        self.send_signal(15)


class ZygoteProvisioner(LocalProvisioner):
    """Launches the kernel by asking the worker's zygote to fork it."""

    zygote: Zygote | None = None
    workdir: Path | None = None
    limits: sandbox.Limits | None = None

    async def launch_kernel(self, cmd, **kwargs):
        pid = self.zygote.spawn(self.workdir, self.parent.connection_file, self.limits)
        self.process = ZygoteProcess(self.zygote, pid)
        self.pid, self.pgid = pid, None
        self.cwd = str(self.workdir)
        return self.connection_info

    async def send_signal(self, signum: int) -> None:
        if self.process is not None:
            self.process.send_signal(signum)
