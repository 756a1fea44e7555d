"""The sandbox every student kernel runs in.

A kernel is started by the grader's worker as::

    bwrap <read-only view of the system> <private writable work dir> --unshare-all ...
        [setpriv: drop to an unprivileged uid]  prlimit <CPU, memory, file size, ...>
        python -m ipykernel_launcher -f <connection file>

- only what Python needs is visible (system dirs, the interpreter, the virtual environment and
  the course's ``utils`` package), read-only; the gradebook, the grader's outputs, other
  students' submissions, ``source/`` (solutions, hidden tests) and ``autograder/`` (answer keys)
  are not mounted at all;
- a private writable working directory (the kernel's cwd, $HOME) plus a size-capped /tmp;
- no network (a new, empty network namespace), new pid/ipc/uts namespaces;
- rlimits: CPU seconds, address space, size of any file written, open files, no core dumps;
  when the grader runs as root the kernel runs as ``nobody`` with no capabilities, which also
  makes the process limit effective.

The kernel talks to the grader over Unix-domain sockets (ZeroMQ ``ipc`` transport) that live in
the bound work directory: TCP on localhost would not cross the network namespace.

Without a working ``bwrap`` (not installed, or user namespaces disabled) the kernel still runs,
with the rlimits but without the isolation, and :func:`probe` says why so the CLI can warn.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Any, Instance

REPO = Path(__file__).resolve().parents[1]

#: uid/gid the kernel drops to when the grader runs as root (Debian's ``nobody``/``nogroup``).
NOBODY = 65534


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits applied to every kernel (and anything it starts)."""

    cpu_seconds: int = 600          # RLIMIT_CPU: SIGXCPU, then SIGKILL
    memory_bytes: int = 4 << 30     # RLIMIT_AS: torch alone maps ~0.7 GB
    file_bytes: int = 64 << 20      # RLIMIT_FSIZE: largest file the kernel may write
    open_files: int = 1024          # RLIMIT_NOFILE
    processes: int = 1024           # RLIMIT_NPROC (threads count); only applied as ``nobody``
    tmp_bytes: int = 256 << 20      # size of the private /tmp

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{field.name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SandboxStatus:
    """Whether the bubblewrap sandbox works here, and if not, why."""

    available: bool
    reason: str
    bwrap: str | None
    drop_to_nobody: bool


def _readonly_roots() -> list[str]:
    """Directories the kernel must be able to read: system, interpreter, venv, course utils."""
    roots = ["/usr", "/etc", "/opt"]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        roots.append(prefix)
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.append(path)
    # the interpreter behind the venv's symlinks (pyenv, conda, ...)
    roots.append(str(Path(os.path.realpath(sys.executable)).parents[1]))
    # the course's shared helpers (``import utils`` in notebooks); NOT autograder/, source/, build/
    roots.append(str(REPO / "utils"))
    out: list[str] = []
    for root in sorted({os.path.realpath(r) for r in roots if os.path.exists(r)} | {r for r in roots if os.path.exists(r)}):
        if not any(root == o or root.startswith(o.rstrip("/") + "/") for o in out):
            out.append(root)
    return out


def _system_links() -> list[str]:
    """Mount arguments for /bin, /lib, ... (symlinks on merged-/usr systems, dirs elsewhere)."""
    args: list[str] = []
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


def bwrap_prefix(workdir: Path, status: "SandboxStatus", limits: Limits,
                 keep_caps: tuple[str, ...] = ("CAP_SETUID", "CAP_SETGID")) -> list[str]:
    """bwrap's arguments up to (not including) the environment and the command."""
    args = [status.bwrap, "--die-with-parent", "--clearenv"]
    if status.drop_to_nobody:
        # bwrap run by root keeps every capability inside the sandbox unless told otherwise;
        # keep just enough to switch to nobody (setpriv, or the zygote's children), which then
        # drops them all. No user namespace: it would map uid 0 only, and nobody must be the
        # real nobody.
        args += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", "--cap-drop", "ALL"]
        for cap in keep_caps:
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-all", "--disable-userns"]
    args += _system_links()
    roots = _readonly_roots()
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    # bwrap creates missing parents of mount points as 0700 dirs: nobody could not traverse them
    parents = sorted({str(p) for r in roots + [str(workdir)] for p in Path(r).parents
                      if str(p) not in ("/", "/tmp")}, key=lambda p: p.count("/"))
    for parent in parents:
        if not any(parent == r or parent.startswith(r.rstrip("/") + "/") for r in roots):
            args += ["--perms", "0755", "--dir", parent]
    for root in roots:
        args += ["--ro-bind", root, root]
    args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    return args


def env_for(workdir: Path) -> dict[str, str]:
    """The kernel's whole environment (bwrap starts from an empty one)."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(workdir / ".config" / "matplotlib"),
        "IPYTHONDIR": str(workdir / ".ipython"),
        "JUPYTER_CONFIG_DIR": str(workdir / ".jupyter"),
        "JUPYTER_DATA_DIR": str(workdir / ".local" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(workdir / ".local" / "share" / "jupyter" / "runtime"),
        "TMPDIR": "/tmp",
        # the same thread count whatever --workers is: identical numerics, no oversubscription
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }


def _prlimit(limits: Limits, with_nproc: bool) -> list[str]:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    args = [prlimit, f"--cpu={limits.cpu_seconds}", f"--as={limits.memory_bytes}",
            f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--core=0"]
    if with_nproc:
        args.append(f"--nproc={limits.processes}")
    return args


@functools.lru_cache(maxsize=None)
def probe() -> SandboxStatus:
    """Find bwrap and check that it can really start a sandbox here (user namespaces, ...)."""
    bwrap = shutil.which("bwrap")
    drop = os.geteuid() == 0 and shutil.which("setpriv") is not None
    if bwrap is None:
        return SandboxStatus(False, "bubblewrap (bwrap) is not installed; "
                                    "on Debian/Ubuntu: apt-get install bubblewrap", None, drop)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ag-sbx-") as tmp:
        work = Path(tmp)
        prepare_workdir(work, _drop=drop)
        cmd = command([sys.executable, "-c",
                       "import socket, os, tempfile; tempfile.gettempdir(); "
                       "s = socket.socket(); s.settimeout(1)\n"
                       "try:\n    s.connect(('1.1.1.1', 53)); print('net')\n"
                       "except OSError:\n    print('nonet')\n"
                       "print(os.getuid())"],
                      work, Limits(), _status=SandboxStatus(True, "", bwrap, drop))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return SandboxStatus(False, f"bwrap could not start: {exc}", bwrap, drop)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return SandboxStatus(False, f"bwrap fails here ({msg}); user namespaces may be disabled",
                             bwrap, drop)
    lines = proc.stdout.split()
    if lines[:1] != ["nonet"]:
        return SandboxStatus(False, "bwrap started but the network was still reachable", bwrap, drop)
    if drop and lines[1:2] != [str(NOBODY)]:
        return SandboxStatus(False, "bwrap started but could not drop to nobody", bwrap, drop)
    return SandboxStatus(True, "bubblewrap sandbox: read-only system, private work dir, no network"
                         + (", uid nobody" if drop else ""), bwrap, drop)


def command(argv: list[str], workdir: Path, limits: Limits, *, use_sandbox: bool = True,
            _status: SandboxStatus | None = None) -> list[str]:
    """The full command line that runs ``argv`` confined to ``workdir`` with ``limits``."""
    status = _status or (probe() if use_sandbox else None)
    if status is None or not status.available:
        return _prlimit(limits, with_nproc=False) + list(argv)
    args = bwrap_prefix(workdir, status, limits)
    for key, value in env_for(workdir).items():
        args += ["--setenv", key, value]
    args.append("--")
    if status.drop_to_nobody:
        args += [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    return args + _prlimit(limits, with_nproc=status.drop_to_nobody) + list(argv)


def prepare_workdir(workdir: Path, *, _drop: bool | None = None) -> None:
    """Create the kernel's private work dir, owned by the uid the kernel will run as.

    Mode 0o711: bwrap (root without capabilities until setpriv runs) must be able to enter it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if _drop is None:
        status = probe()
        _drop = status.available and status.drop_to_nobody
    if _drop:
        for root, dirs, files in os.walk(workdir):
            os.chown(root, NOBODY, NOBODY)
            os.chmod(root, 0o711)
            for name in files:
                os.chown(os.path.join(root, name), NOBODY, NOBODY)


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels start inside :func:`command`'s sandbox.

    Uses the ``ipc`` transport with sockets inside the work dir, and interrupts kernels with an
    ``interrupt_request`` message (signals sent to bwrap would not reach the kernel).
    """

    workdir = Instance(Path, allow_none=True)
    limits = Instance(Limits, args=())
    use_sandbox = Instance(bool, args=(True,))
    zygote = Any(None, allow_none=True)  # autograder.zygote.Zygote: fork the kernel from it

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        # "python" in the kernelspec: use this interpreter (the venv's), by absolute path
        if cmd and os.path.basename(cmd[0]).startswith("python"):
            cmd[0] = sys.executable
        return command(cmd, self.workdir, self.limits, use_sandbox=self.use_sandbox)

    async def _async_pre_start_kernel(self, **kw):
        if self.zygote is not None and self.provisioner is None:
            from .zygote import ZygoteProvisioner

            self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(__import__("uuid").uuid4())
            provisioner = ZygoteProvisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            provisioner.zygote, provisioner.workdir, provisioner.limits = self.zygote, self.workdir, self.limits
            self.provisioner = provisioner
        kw["env"] = env_for(self.workdir)
        kw["cwd"] = str(self.workdir)
        if self.zygote is None:
            # the kernel's own stdout/stderr (banners, crash messages) go to a log, not the terminal
            self._log = open(self.workdir / "kernel.log", "ab")  # noqa: SIM115 - closed after launch
            kw.setdefault("stdout", self._log)
            kw.setdefault("stderr", self._log)
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        status = probe()
        if self.use_sandbox and status.available and status.drop_to_nobody:
            os.chown(self.connection_file, NOBODY, NOBODY)  # written 0600 by us: let nobody read it
        return cmd, kw

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        try:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        finally:
            log = getattr(self, "_log", None)
            if log is not None:
                log.close()  # the kernel process holds its own copy
                self._log = None

    async def interrupt_kernel(self) -> None:  # type: ignore[override]
        if not self.has_kernel:
            raise RuntimeError("Cannot interrupt kernel. No kernel is running!")
        msg = self.session.msg("interrupt_request", content={})
        self._connect_control_socket()
        self.session.send(self._control_socket, msg)
