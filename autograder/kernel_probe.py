"""Kernel-side half of the verifier: code that runs INSIDE the probe kernel.

The grader never imports this module for itself. :mod:`autograder.probe` sends its source,
once, to the *probe kernel*: a second sandboxed kernel that has run the student's own cells and
nothing else (no test cell, no hidden test code, no plan file in its work dir). Then, for each
test, the worker sends one execute request whose code carries that test's questions (inputs,
names to call; plain data, no code) and reads the answer from that request's own reply
(``user_expressions``). :func:`answer` asks the questions ("what does your ``smooth_labels``
return for these inputs?", "what is ``q1``?", "the gradient for this upstream vector?") and
returns plain data (exact ``torch.Tensor`` and Python scalars) as a base64 ``torch.save``
archive, which the worker bounds and loads with ``torch.load(weights_only=True)``.

It is loaded before the student's cells run, then the student's cells run, then the questions
are asked. Everything here is untrusted once student code has run in this process: a lie can
only report wrong data, and the expected values never enter this kernel. Where a test
replaced a name while it asked (``one_hot = _reference_one_hot``, ``F.cross_entropy =
_disabled``), the substitute here is a *lookup table* of what the test's helper answered to the
reference solution's calls (computed by the trusted worker): data, never the helper's code.

Only the standard library and torch are used.
"""
import base64
import builtins
import io
import random

import torch

#: limits on what is reported (the worker enforces its own limits again)
MAX_ITEMS, MAX_DEPTH, MAX_STR = 20000, 5, 20000

# This module is loaded before any student cell runs: the comparisons of :func:`same` (the
# lookup tables' keys) keep these references when the student's code later replaces
# ``builtins.all`` or ``torch.equal`` (else every table would answer with its first entry, and a
# correct function would lose the tests that substitute a helper: tests/attacks,
# ``attack-patch-comparisons``). Such a replacement can still only hurt its own answers.
_all, _len, _zip, _type = builtins.all, builtins.len, builtins.zip, builtins.type
_equal, _isnan, _nan_to_num = torch.equal, torch.isnan, torch.nan_to_num


def typename(value):
    kind = type(value)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"


def plain(value, depth=0):
    """Plain data only: exact torch.Tensor (dense copies), Python scalars, lists/tuples."""
    if depth > MAX_DEPTH:
        return {"__kind__": "unsupported", "type": "too deeply nested"}
    if type(value) is torch.Tensor:
        return value.detach().cpu().clone().contiguous()
    if value is None or type(value) in (bool, int, float):
        return value
    if type(value) is str:
        return value[:MAX_STR]
    if type(value) in (list, tuple):
        items = [plain(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
        return items if type(value) is list else tuple(items)
    if isinstance(value, torch.Tensor):
        return {"__kind__": "unsupported", "type": typename(value)}
    numpy = _numpy()
    if numpy is not None and isinstance(value, numpy.ndarray) and value.dtype.kind in "biuf" \
            and value.size <= 1 << 22:
        return {"__kind__": "ndarray", "dtype": str(value.dtype),
                "value": torch.from_numpy(numpy.array(value, dtype=numpy.float64))}
    if numpy is not None and isinstance(value, numpy.generic) and value.dtype.kind in "biuf":
        return {"__kind__": "numpy", "dtype": str(value.dtype), "value": float(value)}
    return {"__kind__": "unsupported", "type": typename(value)}


def _numpy():
    try:
        import numpy
        return numpy
    except Exception:
        return None


def error(exc):
    return {"type": typename(exc), "mro": [c.__name__ for c in type(exc).__mro__][:20],
            "msg": str(exc)[:2000]}


def rebuild_error(info):
    """A recorded exception (from a helper's table) raised again, as the builtin of its kind."""
    for name in info.get("mro", ()):
        cls = getattr(builtins, str(name), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(info.get("msg", ""))
    return RuntimeError(info.get("msg", ""))


def same(a, b):
    """Bitwise equality of plain data (NaN equals NaN)."""
    if _type(a) is not _type(b):
        return False
    if _type(a) is torch.Tensor:
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        if a.is_floating_point():
            return bool(_equal(_isnan(a), _isnan(b)) and _equal(_nan_to_num(a, 0.0), _nan_to_num(b, 0.0)))
        return bool(_equal(a, b))
    if _type(a) in (list, tuple):
        return _len(a) == _len(b) and _all(same(x, y) for x, y in _zip(a, b))
    if _type(a) is float:
        return a == b or (a != a and b != b)
    return a == b


def table_stub(name, table):
    """Stands for a helper the test put in place: answers from the recorded table, or raises."""
    import inspect

    params = [inspect.Parameter(str(n), inspect._ParameterKind(int(k)),
                                default=d if has else inspect.Parameter.empty)
              for n, k, has, d in table.get("params", ())]
    signature = inspect.Signature(params) if params else None

    def stand_in(*args, **kwargs):
        bound = None
        if signature is not None:
            try:
                call = signature.bind(*args, **kwargs)
                call.apply_defaults()
                bound = dict(call.arguments)
            except TypeError:
                bound = None
        for recorded, outcome in table.get("calls", ()):
            if bound is not None and recorded.keys() == bound.keys() \
                    and _all(same(recorded[k], bound[k]) for k in recorded):
                if "error" in outcome:
                    raise rebuild_error(outcome["error"])
                value = outcome.get("value")
                return value.clone() if type(value) is torch.Tensor else value
        raise RuntimeError(f"{name} is replaced by the test here (disabled by the test outside the "
                           f"calls the reference solution makes)")

    stand_in.__name__ = stand_in.__qualname__ = str(name).rsplit(".", 1)[-1]
    return stand_in


def resolve(path):
    obj = torch if path[0] == "torch" else builtins
    for part in path[1:]:
        obj = getattr(obj, part)
    return obj


def substitute(spec, tables):
    if spec["kind"] == "none":
        return None
    if spec["kind"] == "value":
        value = spec["value"]
        return value.clone() if type(value) is torch.Tensor else value
    if spec["kind"] == "module":
        import importlib
        return importlib.import_module(spec["name"])
    return table_stub(spec.get("label", spec["key"]), tables[spec["key"]])


class Substitutions:
    """The names and library attributes the test had replaced at the moment of one call."""

    def __init__(self, event, tables, user_ns):
        self.event, self.tables, self.user_ns = event, tables, user_ns
        self.saved_globals, self.saved_attrs = [], []

    def __enter__(self):
        for name, spec in self.event.get("globals", {}).items():
            self.saved_globals.append((name, self.user_ns.get(name), name in self.user_ns))
            self.user_ns[name] = substitute(spec, self.tables)
        for path, spec in self.event.get("attrs", ()):
            owner = resolve(path[:-1])
            self.saved_attrs.append((owner, path[-1], getattr(owner, path[-1])))
            setattr(owner, path[-1], substitute(spec, self.tables))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self.saved_attrs):
            setattr(owner, attr, original)
        for name, original, existed in reversed(self.saved_globals):
            if existed:
                self.user_ns[name] = original
            else:
                self.user_ns.pop(name, None)
        return False


def watching_ops(patterns):
    """A dispatcher-level record of the aten ops whose names contain one of ``patterns``
    (``nll_loss``: any path to the built-in loss kernels shows up here, however it was reached)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(getattr(func, "__name__", func))
            if any(p in name for p in patterns):
                Watch.seen.add(name)
            return func(*args, **(kwargs or {}))

    return Watch()


def call_inputs(event):
    args = [a.clone() if type(a) is torch.Tensor else a for a in event.get("args", ())]
    kwargs = {k: (v.clone() if type(v) is torch.Tensor else v) for k, v in dict(event.get("kwargs", {})).items()}
    grad_inputs = []
    for where, key in event.get("grad", ()):
        holder = args if where == "a" else kwargs
        holder[key] = holder[key].requires_grad_(True)
        grad_inputs.append(holder[key])
    return args, kwargs, grad_inputs


def gradients(result, grad_inputs, event):
    out = {"requires_grad": bool(result.requires_grad)}
    if result.requires_grad:
        out["vjps"] = [[plain(g) for g in torch.autograd.grad(result, grad_inputs, grad_outputs=vector,
                                                             retain_graph=True, allow_unused=True)]
                       for vector in event.get("vjps", ())]
    return out


def target(event, user_ns, handles):
    """The callable an event asks about, or None when the student's code does not define it."""
    kind = event["kind"]
    if kind in ("call", "new"):
        return user_ns.get(event["target"]) if event["target"] in user_ns else None
    if kind == "call_handle":
        return handles[event["handle"]]
    return getattr(handles[event["handle"]], event["name"])


def run_call(event, user_ns, handles, tables):
    """call / new / call_handle / method: apply the test's substitutions, then call."""
    out = {}
    args, kwargs, grad_inputs = call_inputs(event)
    watch = watching_ops(event["watch_ops"]) if event.get("watch_ops") else None
    try:
        with Substitutions(event, tables, user_ns), torch.set_grad_enabled(bool(event.get("grad_enabled", True))):
            fn = target(event, user_ns, handles)
            if fn is None:
                return {"missing": True}
            if watch is not None:
                with watch:
                    result = fn(*args, **kwargs)
            else:
                result = fn(*args, **kwargs)
            if event["kind"] == "new":
                handles[event["handle"]] = result
                return {"is_module": isinstance(result, torch.nn.Module)}
        out["value"] = plain(result)
        if grad_inputs and type(result) is torch.Tensor:
            out.update(gradients(result, grad_inputs, event))
    except KeyboardInterrupt:
        out = {"error": {"type": "builtins.KeyboardInterrupt", "mro": ["KeyboardInterrupt"],
                         "msg": "interrupted: the call did not finish within the time limit"}, "interrupted": True}
    except BaseException as exc:  # SystemExit too: a student's exit() must not stop the probe
        out["error"] = error(exc)
    if watch is not None:
        out["ops"] = sorted(type(watch).seen)
    out["args_after"] = [plain(a) if type(a) is torch.Tensor else None for a in args]
    out["kwargs_after"] = {k: plain(v) for k, v in kwargs.items() if type(v) is torch.Tensor}
    return out


def run_getattr(event, handles):
    obj = handles.get(event["handle"])
    if obj is None:
        return {"error": {"type": "builtins.RuntimeError", "mro": ["RuntimeError"], "msg": "object was not created"}}
    try:
        value = getattr(obj, event["name"])
    except BaseException as exc:
        return {"error": error(exc)}
    return {"value": None if event.get("callable") else plain(value), "callable": callable(value)}


def signature_of(name, user_ns):
    import inspect

    if name not in user_ns:
        return {"missing": True}
    try:
        sig = inspect.signature(user_ns[name])
    except (TypeError, ValueError) as exc:
        return {"error": error(exc)}
    params = []
    for p in sig.parameters.values():
        has_default = p.default is not inspect.Parameter.empty
        params.append((p.name, int(p.kind), has_default, plain(p.default) if has_default else None))
    return {"params": params}


def questions(test, user_ns):
    """(key, thunk) for every question of one test, in order."""
    handles = {}
    tables = test.get("tables", {})
    for name in test.get("signatures", ()):
        yield f"sig:{name}", lambda name=name: signature_of(name, user_ns)
    for name in test.get("values", ()):
        yield f"value:{name}", lambda name=name: ({"value": plain(user_ns[name])} if name in user_ns
                                                  else {"missing": True})
    for index, event in enumerate(test["events"]):
        if event["kind"] == "getattr":
            yield str(index), lambda event=event: run_getattr(event, handles)
        else:
            yield str(index), lambda event=event: run_call(event, user_ns, handles, tables)


def encode(results):
    buffer = io.BytesIO()
    try:
        torch.save(results, buffer)
    except BaseException as exc:
        buffer = io.BytesIO()
        torch.save({key: {"error": error(exc), "probe_failed": True} for key in results}, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def answer(questions_b64, user_ns):
    """Answer one test's questions; the result is a base64 string (see the module doc)."""
    test = torch.load(io.BytesIO(base64.b64decode(questions_b64)), weights_only=True)
    state = torch.random.get_rng_state(), random.getstate()
    results = {}
    try:
        for key, thunk in questions(test, user_ns):
            try:
                results[key] = thunk()
            except KeyboardInterrupt:
                results[key] = {"interrupted": True}
            except BaseException as exc:
                results[key] = {"error": error(exc), "probe_failed": True}
            if results[key].get("interrupted"):
                break
    finally:
        torch.random.set_rng_state(state[0])
        random.setstate(state[1])
    return encode(results)
