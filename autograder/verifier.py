"""Honest verdicts: the hidden tests, re-run in a process the student's code never touched.

nbgrader runs the hidden tests in the student's kernel, where anything a test uses can be
replaced (``torch.allclose = lambda *a, **k: True``). The verifier computes each test cell's
verdict in the grader's own worker process instead, in three steps:

1. **Record** (once per run, trusted): every test cell of the trusted *source* notebook is
   executed here against the source notebook's own solution, with each answer (``one_hot``,
   ``LabelSmoothingLoss``, ...) wrapped by a recorder. The recorder notes every question the test
   asks: the call and its inputs (plain tensors and scalars), which answers and library
   functions the test had replaced at that moment (``one_hot = _reference_one_hot``,
   ``F.cross_entropy = _disabled``), which inputs required gradients and with which upstream
   vectors the test later differentiated. A test that fails on the solution is an assignment
   bug and stops the grader.
2. **Ask** (in the sandboxed kernel): right before each test cell, a probe cell
   (:mod:`autograder.kernel_probe`) asks the student's code exactly these questions and answers
   with plain data (values, exceptions, vector-Jacobian products, inputs after the call).
3. **Replay** (trusted): the same test cell is executed again here, in a fresh namespace, with
   each answer replaced by a stand-in that returns the kernel's recorded answer. References
   (``F.cross_entropy(...)``), comparisons (``torch.allclose``) and answer keys (``q2 == "b"``)
   are all computed here, by the test's own code. The verdict is whether that code raised, and
   its message is the test's own message.

The kernel never sees a reference value or an answer key, and the probe runs before the test's
hidden code enters the kernel. Checks a replay cannot do on plain data (a test reading the
function's source, e.g. "no built-in loss") are backed by :mod:`autograder.static`.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import io
import math
import operator
import random
from pathlib import Path
from typing import Any

import nbformat
import torch

MISSING = object()
#: library namespaces a test may patch (the probe reproduces the patch in the kernel)
WATCHED = [("torch",), ("torch", "nn"), ("torch", "nn", "functional"),
           ("torch", "nn", "modules", "loss"), ("torch", "_C", "_nn"), ("torch", "autograd"),
           ("torch", "Tensor"), ("builtins",)]
#: extra static checks, by assignment and grade_id: (rule, answer name)
#: aten ops the probe kernel watches for (at the dispatcher) while a "no built-in loss" test asks
FORBIDDEN_OPS = ("nll_loss", "cross_entropy")
STATIC_RULES = {
    "ps2_losses": {"test_label_smoothing_cross_entropy_no_builtin":
                   ("builtin_loss", "label_smoothing_cross_entropy")},
}


class SetupError(RuntimeError):
    """The source notebook cannot be verified (a test fails on its own solution, ...)."""


class NotVerified(BaseException):
    """Raised inside a replayed test when the kernel's answer is missing (a BaseException, so
    that a test's ``except Exception`` cannot swallow it)."""


@dataclasses.dataclass
class TestCell:
    grade_id: str
    source: str
    points: float


@dataclasses.dataclass
class Verdict:
    grade_id: str
    score: float
    max_score: float
    message: str = ""          # the test's own message when it failed
    unverifiable: bool = False  # the replay could not follow the test: instructor to look


# ----------------------------------------------------------------------------- the source notebook

def _loaded(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


class SourceAssignment:
    """The trusted source notebook: answers, tests (with hidden code), points, set-up cells."""

    def __init__(self, name: str, path: Path):
        self.name = name
        self.path = Path(path)
        self.nb = nbformat.read(self.path, as_version=4)
        self.answers: list[str] = []
        self.tests: list[TestCell] = []
        self.solution_sources: list[str] = []
        self.setup_sources: list[str] = []
        cells = [c for c in self.nb.cells if c.cell_type == "code"]
        for cell in cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution") and not meta.get("grade"):
                grade_id = meta.get("grade_id", "")
                if not grade_id.isidentifier():
                    raise SetupError(f"answer cell grade_id {grade_id!r} is not a Python name")
                self.answers.append(grade_id)
                self.solution_sources.append(cell.source)
            elif meta.get("grade") and not meta.get("solution"):
                self.tests.append(TestCell(meta["grade_id"], cell.source, float(meta.get("points", 0))))
        for cell in cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") or meta.get("solution"):
                continue
            if not (_loaded(cell.source) & set(self.answers)):
                self.setup_sources.append(cell.source)

    @property
    def max_score(self) -> float:
        return sum(t.points for t in self.tests)

    def points(self) -> dict[str, float]:
        return {t.grade_id: t.points for t in self.tests}


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def _seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass


@contextlib.contextmanager
def _isolated_rng():
    state = torch.random.get_rng_state(), random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(state[0])
        random.setstate(state[1])


def _exec(source: str, ns: dict, filename: str) -> None:
    exec(compile(source, filename, "exec"), ns)  # noqa: S102 - trusted course code only


def _resolve(path: tuple[str, ...]):
    obj = torch if path[0] == "torch" else builtins
    for part in path[1:]:
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------- plain data

def _is_plain(value: Any, depth: int = 0) -> bool:
    if depth > 5:
        return False
    if value is None or type(value) in (bool, int, float, str, torch.dtype):
        return True
    if type(value) is torch.Tensor:
        return True
    if type(value) in (list, tuple):
        return all(_is_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _own(value: Any) -> Any:
    """A detached copy: the plan must hold the inputs as they were at call time."""
    if type(value) is torch.Tensor:
        return value.detach().clone()
    if type(value) in (list, tuple):
        return type(value)(_own(v) for v in value)
    if type(value) is dict:
        return {k: _own(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality of recorded and replayed inputs (bitwise for tensors, NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if type(a) is torch.Tensor:
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point():
            return bool(torch.equal(torch.isnan(a), torch.isnan(b))
                        and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
        return bool(torch.equal(a, b))
    if type(a) is float:
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


class Opaque:
    """Stands for a value the kernel could not report as plain data (a tensor subclass, ...)."""

    def __init__(self, description: str):
        self.description = description

    def __repr__(self):
        return f"<{self.description}: not plain data>"


_NUMPY_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                 "uint16", "uint32", "uint64", "bool"}


def reconstruct(value: Any) -> Any:
    """Plain data from the kernel back into values a test can use (never code, never objects)."""
    if type(value) is torch.Tensor:
        return value.clone()
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) in (list, tuple):
        return type(value)(reconstruct(v) for v in value)
    if type(value) is dict and value.get("__kind__") in ("numpy", "ndarray"):
        import numpy

        dtype = value.get("dtype")
        if dtype not in _NUMPY_DTYPES:
            return Opaque(f"numpy {dtype}")
        if value["__kind__"] == "numpy":
            return numpy.dtype(dtype).type(value["value"])
        return numpy.asarray(value["value"].numpy(), dtype=dtype)
    if type(value) is dict and value.get("__kind__") == "unsupported":
        return Opaque(str(value.get("type", "object")))
    return Opaque("unknown object")


def _exception(error: dict) -> BaseException:
    """The kernel's exception as a builtin exception of the same kind, with its message."""
    message = str(error.get("msg", ""))
    for name in error.get("mro") or []:
        cls = getattr(builtins, str(name), None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            if not issubclass(cls, Exception):
                return NotVerified(f"your code raised {name} ({message[:200]})")
            try:
                return cls(message)
            except Exception:
                return RuntimeError(message)
    return RuntimeError(message)


# ----------------------------------------------------------------------------- recording

class _Recording:
    """Records the questions one test cell asks, while it runs against the solution."""

    def __init__(self, test: TestCell, ns: dict):
        self.test = test
        self.ns = ns
        self.events: list[dict] = []
        self.problem: str | None = None
        self.handles = 0
        self.tree = ast.parse(test.source)
        self.imports = "\n".join(ast.get_source_segment(test.source, n) for n in self.tree.body
                                 if isinstance(n, (ast.Import, ast.ImportFrom)))
        self.initial: dict[str, Any] = {}
        self.lib_initial: dict = {}
        self._specs: dict[int, tuple] = {}
        self.solution_ns: dict = {}
        self.helpers: dict[str, Any] = {}   # table key -> the test's helper (trusted side only)
        self.tables: dict[str, dict] = {}   # table key -> {"params", "calls"}: what reaches the kernel

    # what the test has replaced at this moment
    def _spec(self, value: Any, where: str) -> dict:
        key = id(value)
        if key not in self._specs:
            self._specs[key] = (value, self._make_spec(value, where))
        return self._specs[key][1]

    def _make_spec(self, value: Any, where: str) -> dict:
        if value is None or value is MISSING:
            return {"kind": "none"}
        if isinstance(value, type(torch)):
            return {"kind": "module", "name": value.__name__}
        if _is_plain(value):
            return {"kind": "value", "value": _own(value)}
        code = getattr(value, "__code__", None)
        name = getattr(value, "__name__", None)
        if code is not None and code.co_filename == self.filename and name and callable(value):
            # a helper the test defined: the kernel gets a table of its answers, never its code
            key = f"{where.strip('`')}#{len(self.tables)}"
            self.helpers[key] = value
            self.tables.setdefault(key, {"params": _params(value, where), "calls": []})
            return {"kind": "table", "key": key, "label": where.strip("`")}
        self.problem = self.problem or f"the test replaces {where} with something the probe cannot rebuild"
        return {"kind": "none"}

    @property
    def filename(self) -> str:
        return f"<autograder test {self.test.grade_id}>"

    def context(self) -> dict:
        globals_ = {}
        for name, obj in self.initial.items():
            now = self.ns.get(name, MISSING)
            if now is not obj:
                globals_[name] = self._spec(now, f"`{name}`")
        attrs = []
        for path, before in self.lib_initial.items():
            now = vars(_resolve(path))
            if now.keys() == before.keys() and all(map(operator.is_, now.values(), before.values())):
                continue  # the usual case, checked at C speed
            for key, obj in before.items():
                current = now.get(key, MISSING)
                if current is not obj:
                    attrs.append((path + (key,), self._spec(current, ".".join(path + (key,)))))
        return {"globals": globals_, "attrs": attrs, "grad_enabled": torch.is_grad_enabled()}

    def add_call(self, kind: str, args: tuple, kwargs: dict, **extra) -> dict:
        if not _is_plain(list(args)) or not _is_plain(dict(kwargs)):
            self.problem = self.problem or f"a call in {self.test.grade_id} passes non-plain data"
        grad = [("a", i) for i, a in enumerate(args) if type(a) is torch.Tensor and a.requires_grad]
        grad += [("k", k) for k, v in kwargs.items() if type(v) is torch.Tensor and v.requires_grad]
        event = {"kind": kind, "args": _own(tuple(args)), "kwargs": _own(dict(kwargs)),
                 "grad": grad, "vjps": [], **self.context(), **extra}
        self.events.append(event)
        return event

    def watch_gradient(self, event: dict, output: Any) -> Any:
        if event["grad"] and type(output) is torch.Tensor and output.requires_grad:
            output.register_hook(lambda g: event["vjps"].append(g.detach().clone()))
        return output

    @contextlib.contextmanager
    def helpers_installed(self, event: dict):
        """While the reference solution answers, the names the test replaced with its own helpers
        are those helpers (as the kernel's stand-ins will be), each logging its calls into the
        table the kernel gets."""
        undo_globals, undo_attrs = [], []
        for name, spec in event["globals"].items():
            if spec["kind"] == "table":
                undo_globals.append((name, self.solution_ns.get(name, MISSING)))
                self.solution_ns[name] = self._logged(spec["key"], event)
        for path, spec in event["attrs"]:
            if spec["kind"] == "table":
                owner = _resolve(path[:-1])
                undo_attrs.append((owner, path[-1], getattr(owner, path[-1])))
                setattr(owner, path[-1], self._logged(spec["key"], event))
        try:
            yield
        finally:
            for owner, attr, value in reversed(undo_attrs):
                setattr(owner, attr, value)
            for name, value in reversed(undo_globals):
                if value is MISSING:
                    self.solution_ns.pop(name, None)
                else:
                    self.solution_ns[name] = value

    def _logged(self, key: str, event: dict):
        import inspect

        helper, table = self.helpers[key], self.tables[key]
        recording = self

        def logged(*args, **kwargs):
            if event["grad"]:
                recording.problem = recording.problem or f"the test's helper {key} is used with gradients"
            try:
                bound = inspect.signature(helper).bind(*args, **kwargs)
                bound.apply_defaults()
                arguments = _own(dict(bound.arguments))
            except (TypeError, ValueError):
                arguments = None
            try:
                output = helper(*args, **kwargs)
            except Exception as exc:
                outcome = {"error": {"mro": [c.__name__ for c in type(exc).__mro__], "msg": str(exc)}}
                recording._log_helper_call(key, table, arguments, outcome)
                raise
            recording._log_helper_call(key, table, arguments, {"value": _own(output)})
            return output

        logged.__name__ = logged.__qualname__ = getattr(helper, "__name__", "helper")
        return logged

    def _log_helper_call(self, key: str, table: dict, arguments, outcome: dict) -> None:
        if arguments is None or not _is_plain(arguments) or not _is_plain(outcome):
            self.problem = self.problem or f"the test's helper {key} is called with or returns non-plain data"
            return
        if not any(_same(arguments, seen) for seen, _ in table["calls"]):
            table["calls"].append((arguments, outcome))

    # stand-ins for the answers
    def function(self, name: str, reference):
        recording = self

        def recorded(*args, **kwargs):
            event = recording.add_call("call", args, kwargs, target=name)
            with _isolated_rng(), recording.helpers_installed(event):
                output = reference(*args, **kwargs)
            return recording.watch_gradient(event, output)

        recorded.__name__ = recorded.__qualname__ = name
        _copy_signature(recorded, reference)
        return recorded

    def cls(self, name: str, reference):
        recording = self

        def new(*args, **kwargs):
            recording.handles += 1
            handle = recording.handles
            event = recording.add_call("new", args, kwargs, target=name, handle=handle)
            with _isolated_rng(), recording.helpers_installed(event):
                instance = reference(*args, **kwargs)
            return _proxy(recording, handle, name, instance, isinstance(instance, torch.nn.Module))

        standin = _standin_class(name, new)
        _copy_signature(standin, reference)
        return standin


def _params(helper, where: str) -> list:
    """A helper's parameters as plain data (name, kind, has default, default)."""
    import inspect

    try:
        parameters = inspect.signature(helper).parameters.values()
    except (TypeError, ValueError):
        return []
    out = []
    for p in parameters:
        has_default = p.default is not inspect.Parameter.empty
        default = p.default if has_default else None
        if not _is_plain(default):
            raise SetupError(f"the test's helper for {where} has a default that is not plain data")
        out.append((p.name, int(p.kind), has_default, default))
    return out


def _copy_signature(target, reference) -> None:
    """Tests may read an answer's signature (``inspect.signature(f).parameters["n_bins"]``)."""
    import inspect

    try:
        target.__signature__ = inspect.signature(reference)
    except (TypeError, ValueError, AttributeError):
        pass


class _StandInMeta(type):
    def __call__(cls, *args, **kwargs):
        return cls._ag_new(*args, **kwargs)

    def __instancecheck__(cls, obj):
        return getattr(type(obj), "_ag_answer", None) == cls._ag_name


def _standin_class(name: str, new) -> type:
    return _StandInMeta(name, (), {"_ag_name": name, "_ag_new": staticmethod(new)})


def _proxy(session, handle: int, name: str, instance, is_module: bool):
    """An object standing for an instance of a class answer (recording or replaying)."""
    base = torch.nn.Module if is_module else object

    def __init__(self):
        if is_module:
            torch.nn.Module.__init__(self)

    def __getattr__(self, attr):
        if attr.startswith("__") or attr in ("_parameters", "_buffers", "_modules"):
            raise AttributeError(attr)
        return session.attribute(handle, attr, instance)

    def __call__(self, *args, **kwargs):
        return session.call_instance(handle, instance, args, kwargs)

    proxy_cls = type(name, (base,), {"__init__": __init__, "__getattr__": __getattr__,
                                     "__call__": __call__, "_ag_answer": name})
    return proxy_cls()


def _recording_attribute(self: _Recording, handle, attr, instance):
    value = getattr(instance, attr)  # AttributeError propagates, as in the kernel
    if callable(value):
        self.events.append({"kind": "getattr", "handle": handle, "name": attr, "callable": True})

        def method(*args, **kwargs):
            event = self.add_call("method", args, kwargs, handle=handle, name=attr)
            with _isolated_rng(), self.helpers_installed(event):
                output = value(*args, **kwargs)
            return self.watch_gradient(event, output)

        return method
    self.events.append({"kind": "getattr", "handle": handle, "name": attr, "callable": False})
    return value


def _recording_call_instance(self: _Recording, handle, instance, args, kwargs):
    event = self.add_call("call_handle", args, kwargs, handle=handle)
    with _isolated_rng(), self.helpers_installed(event):
        output = instance(*args, **kwargs)
    return self.watch_gradient(event, output)


_Recording.attribute = _recording_attribute
_Recording.call_instance = _recording_call_instance


@dataclasses.dataclass
class Plan:
    """What every kernel is asked, per test cell, plus what the replay needs to follow it."""

    assignment: SourceAssignment
    base: dict                      # namespace after the set-up cells
    kinds: dict[str, str]           # answer -> "function" | "class" | "value"
    tests: dict[str, dict]          # grade_id -> {"events": [...], "values": [...]}

    def save(self, path: Path) -> None:
        """The plan file, read by the workers (to replay), and one small file per test cell in
        ``<path>.d/``: the questions a worker sends to the probe kernel for that test, as they are
        (inputs, names, tables of helper answers; never code).

        Plain data only (``torch.load(weights_only=True)`` reads them back)."""
        torch.save({"version": 3, "assignment": self.assignment.name, "kinds": self.kinds,
                    "tests": self.tests}, path)
        folder = Path(f"{path}.d")
        folder.mkdir(exist_ok=True)
        for grade_id, test in self.tests.items():
            torch.save(test, folder / f"{grade_id}.pt")


def load_plan(assignment: SourceAssignment, path: Path) -> Plan:
    data = torch.load(path, weights_only=True)
    if data.get("version") != 3:
        raise SetupError(f"plan {path} was written by another version of the grader: remove it")
    if data.get("assignment") != assignment.name:
        raise SetupError(f"plan {path} is for {data.get('assignment')!r}, not {assignment.name!r}")
    base: dict = {"__name__": "__main__", "__builtins__": builtins}
    with _quiet():
        for index, source in enumerate(assignment.setup_sources):
            _exec(source, base, f"<setup cell {index}>")
    return Plan(assignment, base, dict(data["kinds"]), dict(data["tests"]))


def record(assignment: SourceAssignment) -> Plan:
    """Run every test of the source notebook against its solution and note its questions."""
    base: dict = {"__name__": "__main__", "__builtins__": builtins}
    with _quiet():
        for index, source in enumerate(assignment.setup_sources):
            _exec(source, base, f"<setup cell {index}>")
        reference = dict(base)
        for index, source in enumerate(assignment.solution_sources):
            _exec(source, reference, f"<solution cell {index}>")
    kinds = {}
    for name in assignment.answers:
        if name not in reference:
            raise SetupError(f"the solution cell {name!r} does not define {name}")
        value = reference[name]
        kinds[name] = "class" if isinstance(value, type) else "function" if callable(value) else "value"
    values = sorted(n for n, k in kinds.items() if k == "value")
    callables = sorted(n for n, k in kinds.items() if k != "value")
    tests = {}
    for test in assignment.tests:
        ns = dict(reference)
        recording = _Recording(test, ns)
        recording.solution_ns = reference
        for name, kind in kinds.items():
            if kind == "function":
                ns[name] = recording.function(name, reference[name])
            elif kind == "class":
                ns[name] = recording.cls(name, reference[name])
        recording.initial = dict(ns)
        recording.lib_initial = {path: dict(vars(_resolve(path))) for path in WATCHED}
        _seed_all()
        try:
            with _quiet():
                _exec(test.source, ns, recording.filename)
        except BaseException as exc:
            raise SetupError(f"{assignment.name}: test cell {test.grade_id} fails on the source "
                             f"notebook's own solution: {type(exc).__name__}: {exc}") from exc
        finally:
            _restore_libraries(recording.lib_initial)
        if recording.problem:
            raise SetupError(f"{assignment.name}: cannot verify {test.grade_id}: {recording.problem}")
        for event in recording.events:
            if not _is_plain(event.get("vjps", [])):
                raise SetupError(f"{test.grade_id}: non-plain gradient")
        rule = STATIC_RULES.get(assignment.name, {}).get(test.grade_id)
        for event in recording.events:
            if rule is not None and rule[0] == "builtin_loss" and event["kind"] != "getattr":
                event["watch_ops"] = list(FORBIDDEN_OPS)
        tests[test.grade_id] = {"events": recording.events, "values": values, "signatures": callables,
                                "tables": recording.tables}
        _check_questions_only(tests[test.grade_id], test)
    return Plan(assignment, base, kinds, tests)


def _check_questions_only(questions: dict, test: TestCell) -> None:
    """What the kernel gets must hold no code of the test: no string of the plan may quote a
    line of the test cell's hidden part (belt and braces for :meth:`_Recording._make_spec`)."""
    hidden = test.source.split("### BEGIN HIDDEN TESTS", 1)[-1]
    lines = {line.strip() for line in hidden.splitlines() if len(line.strip()) > 20}

    def strings(value):
        if type(value) is str:
            yield value
        elif type(value) in (list, tuple):
            for item in value:
                yield from strings(item)
        elif type(value) is dict:
            for key, item in value.items():
                yield key
                yield from strings(item)

    for text in strings(questions):
        if any(line in text for line in lines):
            raise SetupError(f"{test.grade_id}: the kernel's questions would quote the hidden test")


def _restore_libraries(snapshot: dict) -> None:
    """Undo whatever a test left patched in torch (tests restore in ``finally``; belt and braces)."""
    for path, before in snapshot.items():
        owner = _resolve(path)
        now = vars(owner)
        for key, obj in before.items():
            if now.get(key, MISSING) is not obj:
                try:
                    setattr(owner, key, obj)
                except (AttributeError, TypeError):
                    pass


# ----------------------------------------------------------------------------- replaying

class _Replay:
    """Answers a replayed test's questions from the kernel's recorded answers."""

    def __init__(self, grade_id: str, events: list[dict], results: dict[str, dict], note: str | None):
        self.grade_id = grade_id
        self.events = events
        self.results = results
        self.note = note
        self.position = 0
        self.diverged: str | None = None

    def _next(self, kind: str, **match) -> tuple[dict, dict]:
        index = self.position
        self.position += 1
        if index >= len(self.events):
            self.diverged = self.diverged or "the test asked more questions than were recorded"
            raise NotVerified(self.diverged)
        event = self.events[index]
        for key, value in {"kind": kind, **match}.items():
            if key in ("args", "kwargs"):
                same = _same(tuple(event["args"]) if key == "args" else dict(event["kwargs"]),
                             tuple(value) if key == "args" else dict(value))
            else:
                same = event.get(key) == value
            if not same:
                self.diverged = self.diverged or f"question {index} of the test differs from the recorded one ({key})"
                raise NotVerified(self.diverged)
        result = self.results.get(str(index))
        if result is None:
            raise NotVerified(self.note or "the kernel did not answer (it died or timed out before this check)")
        if "undecodable" in result:
            return event, {"value": {"__kind__": "unsupported", "type": result["undecodable"]}}
        if result.get("interrupted"):
            raise NotVerified("your code did not finish within the time limit")
        if result.get("probe_failed"):
            raise NotVerified(f"the check could not run in your notebook: {result.get('error', {}).get('msg', '')}")
        return event, result

    def _answer(self, event: dict, result: dict, args: tuple, kwargs: dict, name: str):
        if result.get("missing"):
            raise NameError(f"name '{name}' is not defined")
        # the call's side effects on its inputs (a mutation test needs them)
        for arg, after in zip(args, result.get("args_after") or []):
            _mutate(arg, after)
        for key, after in (result.get("kwargs_after") or {}).items():
            if key in kwargs:
                _mutate(kwargs[key], after)
        if "error" in result:
            raise _exception(result["error"])
        value = reconstruct(result.get("value"))
        if event["grad"] and type(value) is torch.Tensor and result.get("requires_grad"):
            inputs = [args[i] if where == "a" else kwargs[i] for where, i in event["grad"]]
            table = list(zip(event["vjps"], result.get("vjps") or []))
            value = _ReplayGradient.apply(self, table, value, *inputs)
        return value

    def function(self, name: str):
        replay = self

        def replayed(*args, **kwargs):
            event, result = replay._next("call", target=name, args=args, kwargs=kwargs)
            return replay._answer(event, result, args, kwargs, name)

        replayed.__name__ = replayed.__qualname__ = name
        return replayed

    def cls(self, name: str):
        replay = self

        def new(*args, **kwargs):
            event, result = replay._next("new", target=name, args=args, kwargs=kwargs)
            if result.get("missing"):
                raise NameError(f"name '{name}' is not defined")
            if "error" in result:
                raise _exception(result["error"])
            return _proxy(replay, event["handle"], name, None, bool(result.get("is_module")))

        return _standin_class(name, new)

    def attribute(self, handle, attr, _instance):
        event, result = self._next("getattr", handle=handle, name=attr)
        if "error" in result:
            raise _exception(result["error"])
        if event.get("callable"):
            if not result.get("callable"):
                raise TypeError(f"'{attr}' is not callable in your object")

            def method(*args, **kwargs):
                call_event, call_result = self._next("method", handle=handle, name=attr, args=args, kwargs=kwargs)
                return self._answer(call_event, call_result, args, kwargs, attr)

            return method
        return reconstruct(result.get("value"))

    def call_instance(self, handle, _instance, args, kwargs):
        event, result = self._next("call_handle", handle=handle, args=args, kwargs=kwargs)
        return self._answer(event, result, args, kwargs, "forward")


def _mutate(arg: Any, after: Any) -> None:
    """Reproduce an in-place change the kernel saw on an input tensor."""
    if type(arg) is not torch.Tensor or type(after) is not torch.Tensor or arg.requires_grad:
        return
    if after.dtype != arg.dtype:
        return
    if after.shape == arg.shape and _same(arg, after):
        return
    with torch.no_grad():
        arg.set_(after.clone())


class _ReplayGradient(torch.autograd.Function):
    """Connects a replayed output to the test's inputs, with the kernel's gradients."""

    @staticmethod
    def forward(ctx, replay, table, value, *inputs):
        ctx.replay, ctx.table, ctx.count = replay, table, len(inputs)
        ctx.shapes = [(i.shape, i.dtype) for i in inputs]
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        for vector, grads in ctx.table:
            if type(vector) is torch.Tensor and _same(vector, grad_output.detach().to(vector.dtype)):
                out = []
                for grad, (shape, dtype) in zip(list(grads) + [None] * ctx.count, ctx.shapes):
                    ok = type(grad) is torch.Tensor and grad.shape == shape
                    out.append(grad.to(dtype) if ok else None)
                return (None, None, None, *out)
        ctx.replay.diverged = ctx.replay.diverged or "the test differentiated in a way that was not recorded"
        return (None, None, None, *[None] * ctx.count)


def _signature(result: dict | None):
    """The student's function signature (names, kinds, defaults) for ``inspect.signature``."""
    import inspect

    if not result or "params" not in result:
        return None
    try:
        params = [inspect.Parameter(str(name), inspect._ParameterKind(int(kind)),
                                    default=reconstruct(default) if has_default else inspect.Parameter.empty)
                  for name, kind, has_default, default in result["params"]]
        return inspect.Signature(params)
    except (TypeError, ValueError):
        return None


def replay(plan: Plan, grade_id: str, results: dict[str, dict], note: str | None,
           static_findings: dict[str, str | None]) -> Verdict:
    """The verdict for one test cell from the kernel's answers (and the static findings)."""
    test = next(t for t in plan.assignment.tests if t.grade_id == grade_id)
    recorded = plan.tests[grade_id]
    session = _Replay(grade_id, recorded["events"], results, note)
    ns = dict(plan.base)
    for name, kind in plan.kinds.items():
        if kind in ("function", "class"):
            ns[name] = session.function(name) if kind == "function" else session.cls(name)
            signature = _signature(results.get(f"sig:{name}"))
            if signature is not None:
                try:
                    ns[name].__signature__ = signature
                except (AttributeError, TypeError):
                    pass
        else:
            key = f"value:{name}"
            result = results.get(key)
            if result is None or "missing" in result or "undecodable" in result or "error" in result:
                ns.pop(name, None)
                if result is None and note:
                    return Verdict(grade_id, 0.0, test.points, note)
            else:
                ns[name] = reconstruct(result.get("value"))
    lib_snapshot = {path: dict(vars(_resolve(path))) for path in WATCHED}
    _seed_all()
    message, passed = "", True
    try:
        with _quiet():
            _exec(test.source, ns, f"<autograder test {grade_id}>")
    except NotVerified as exc:
        passed, message = False, str(exc)
    except BaseException as exc:  # the test's verdict: an assertion (or any error) fails it
        passed = False
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        _restore_libraries(lib_snapshot)
    if session.diverged:
        return Verdict(grade_id, 0.0, test.points, f"could not verify: {session.diverged}", True)
    rule = STATIC_RULES.get(plan.assignment.name, {}).get(grade_id)
    if passed and rule is not None:
        finding = static_findings.get(rule[1]) or _forbidden_ops(results)
        if finding:
            passed, message = False, f"AssertionError: {finding}"
    return Verdict(grade_id, test.points if passed else 0.0, test.points, message)


def _forbidden_ops(results: dict[str, dict]) -> str | None:
    """The runtime half of "no built-in loss": the probe kernel watched the dispatcher while the
    function ran. The kernel is untrusted, so this can only take points away; the static rules
    (:mod:`autograder.static`) are what a lying kernel cannot get around."""
    seen = sorted({str(op) for result in results.values() if isinstance(result, dict)
                   for op in (result.get("ops") or ()) if isinstance(op, str)})
    if seen:
        return (f"your function reached the built-in loss kernels at run time ({', '.join(seen[:3])}); "
                "build the loss from log_softmax")
    return None


def static_findings(assignment_name: str, student_sources: list[str],
                    context_sources: list[str] = ()) -> dict[str, str | None]:
    """Run the assignment's static rules once per submission: answer name -> problem or None."""
    from . import static

    out = {}
    for rule, name in STATIC_RULES.get(assignment_name, {}).values():
        if rule == "builtin_loss":
            out[name] = static.builtin_loss_violation(student_sources, name, context_sources)
    return out
