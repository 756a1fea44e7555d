"""Kernel-side half of the verifier: code that runs INSIDE the student's kernel.

The grader never runs this module itself: :mod:`autograder.probe` sends its source as an extra
cell placed right before a test cell. The cell answers the questions recorded for that test
(:mod:`autograder.verifier`): "what does your ``smooth_labels`` return for these inputs?", "what
is ``q1``?", "what is the gradient for this upstream vector?". Everything here is untrusted
once it runs, because the student's code ran first in the same process; that is by design: it
only *reports* plain data (exact ``torch.Tensor`` objects and Python scalars), which the grader
loads with ``torch.load(weights_only=True)`` and judges in a process the student's code never
touched. A lie can only report wrong data; the expected values never enter the kernel.

Only the standard library and torch are used; the cell deletes its names afterwards.
"""


def _autograder_probe(_plan_path, _test_id):  # pragma: no cover - runs inside the kernel
    import base64
    import builtins
    import io
    import random

    import torch

    test = torch.load(_plan_path, weights_only=True)  # this test's questions only
    user_ns = globals()
    torch_rng = torch.random.get_rng_state()
    py_rng = random.getstate()
    try:
        import numpy
        np_rng = numpy.random.get_state()
    except Exception:
        numpy, np_rng = None, None

    def typename(value):
        kind = type(value)
        return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"

    def plain(value, depth=0):
        """Plain data only: exact torch.Tensor, Python scalars, lists/tuples of those."""
        if depth > 5:
            return {"__kind__": "unsupported", "type": "too deeply nested"}
        if type(value) is torch.Tensor:
            return value.detach().cpu().clone()
        if value is None or type(value) in (bool, int, float, str):
            return value if type(value) is not str else value[:20000]
        if type(value) in (list, tuple):
            items = [plain(v, depth + 1) for v in list(value)[:20000]]
            return items if type(value) is list else tuple(items)
        if isinstance(value, torch.Tensor):
            return {"__kind__": "unsupported", "type": typename(value)}
        if numpy is not None and isinstance(value, numpy.ndarray) and value.dtype.kind in "biuf":
            return {"__kind__": "ndarray", "dtype": str(value.dtype),
                    "value": torch.from_numpy(numpy.array(value, dtype=numpy.float64))}
        if numpy is not None and isinstance(value, numpy.generic) and value.dtype.kind in "biuf":
            return {"__kind__": "numpy", "dtype": str(value.dtype), "value": float(value)}
        return {"__kind__": "unsupported", "type": typename(value), "repr": repr(value)[:200]}

    def error(exc):
        return {"type": typename(exc), "mro": [c.__name__ for c in type(exc).__mro__],
                "msg": str(exc)[:2000]}

    def resolve(path):
        obj = torch if path[0] == "torch" else builtins
        for part in path[1:]:
            obj = getattr(obj, part)
        return obj

    def define(spec):
        """A substitute the test put in place (a def from the test cell, None, or a module)."""
        if spec["kind"] == "none":
            return None
        if spec["kind"] == "module":
            import importlib
            return importlib.import_module(spec["name"])
        scope = {"__builtins__": builtins, "__name__": "__autograder_reference__"}
        exec(compile(spec["source"], "<test helper>", "exec"), scope)
        return scope[spec["name"]]

    handles = {}

    def run_event(event):
        out = {}
        kind = event["kind"]
        if kind == "value":
            if event["name"] not in user_ns:
                out["missing"] = True
            else:
                out["value"] = plain(user_ns[event["name"]])
            return out
        if kind == "getattr":
            obj = handles.get(event["handle"])
            if obj is None:
                out["error"] = {"type": "builtins.RuntimeError", "mro": ["RuntimeError"],
                                "msg": "object was not created"}
                return out
            try:
                value = getattr(obj, event["name"])
            except BaseException as exc:
                out["error"] = error(exc)
                return out
            out["value"] = None if event.get("callable") else plain(value)
            out["callable"] = callable(value)
            return out
        # call / new / call_handle / method: apply the test's substitutions, then call
        saved_globals, saved_attrs = [], []
        for name, spec in event.get("globals", {}).items():
            saved_globals.append((name, user_ns.get(name, saved_globals), name in user_ns))
            user_ns[name] = define(spec)
        for path, spec in event.get("attrs", ()):
            owner = resolve(path[:-1])
            saved_attrs.append((owner, path[-1], getattr(owner, path[-1])))
            setattr(owner, path[-1], define(spec))
        args = [a.clone() if type(a) is torch.Tensor else a for a in event.get("args", ())]
        kwargs = {k: (v.clone() if type(v) is torch.Tensor else v)
                  for k, v in dict(event.get("kwargs", {})).items()}
        grad_inputs = []
        for where in event.get("grad", ()):
            if where[0] == "a":
                args[where[1]] = args[where[1]].requires_grad_(True)
                grad_inputs.append(args[where[1]])
            else:
                kwargs[where[1]] = kwargs[where[1]].requires_grad_(True)
                grad_inputs.append(kwargs[where[1]])
        try:
            with torch.set_grad_enabled(bool(event.get("grad_enabled", True))):
                if kind == "new":
                    if event["target"] not in user_ns:
                        out["missing"] = True
                        return out
                    obj = user_ns[event["target"]](*args, **kwargs)
                    handles[event["handle"]] = obj
                    out["is_module"] = isinstance(obj, torch.nn.Module)
                    return out
                if kind == "call":
                    if event["target"] not in user_ns:
                        out["missing"] = True
                        return out
                    fn = user_ns[event["target"]]
                elif kind == "call_handle":
                    fn = handles[event["handle"]]
                else:  # method
                    fn = getattr(handles[event["handle"]], event["name"])
                result = fn(*args, **kwargs)
            out["value"] = plain(result)
            if grad_inputs and type(result) is torch.Tensor:
                out["requires_grad"] = bool(result.requires_grad)
                if result.requires_grad:
                    vjps = []
                    for vector in event.get("vjps", ()):
                        grads = torch.autograd.grad(result, grad_inputs, grad_outputs=vector,
                                                    retain_graph=True, allow_unused=True)
                        vjps.append([plain(g) for g in grads])
                    out["vjps"] = vjps
        except KeyboardInterrupt:
            out["error"] = {"type": "builtins.KeyboardInterrupt", "mro": ["KeyboardInterrupt"],
                            "msg": "interrupted: the call did not finish within the time limit"}
            out["interrupted"] = True
        except BaseException as exc:  # SystemExit too: a student's exit() must not stop the probe
            out["error"] = error(exc)
        finally:
            for owner, attr, original in reversed(saved_attrs):
                setattr(owner, attr, original)
            for name, original, existed in reversed(saved_globals):
                if existed:
                    user_ns[name] = original
                else:
                    user_ns.pop(name, None)
        out["args_after"] = [plain(a) if type(a) is torch.Tensor else None for a in args]
        out["kwargs_after"] = {k: plain(v) for k, v in kwargs.items() if type(v) is torch.Tensor}
        return out

    payload, pending = {}, {}

    def encode(result):
        buffer = io.BytesIO()
        torch.save(result, buffer)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def keep(key, result):
        pending[key] = result

    def flush():
        # one torch.save for all results (fast); one per result if some cannot be saved
        if not pending:
            return
        try:
            payload["*"] = encode(dict(pending))
        except BaseException:
            for key, result in pending.items():
                try:
                    payload[key] = encode(result)
                except BaseException as exc:
                    payload[key] = encode({"error": error(exc), "probe_failed": True})
        pending.clear()

    def signature(name):
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

    try:
        for name in test.get("signatures", ()):
            try:
                keep(f"sig:{name}", signature(name))
            except BaseException as exc:
                keep(f"sig:{name}", {"error": error(exc), "probe_failed": True})
        for name in test["values"]:
            try:
                keep(f"value:{name}", run_event({"kind": "value", "name": name}))
            except BaseException as exc:
                keep(f"value:{name}", {"error": error(exc), "probe_failed": True})
        for index, event in enumerate(test["events"]):
            try:
                result = run_event(event)
            except KeyboardInterrupt:
                result = {"interrupted": True}
            except BaseException as exc:
                result = {"error": error(exc), "probe_failed": True}
            keep(str(index), result)
            if result.get("interrupted"):
                break
    finally:
        flush()
        torch.random.set_rng_state(torch_rng)
        random.setstate(py_rng)
        if numpy is not None and np_rng is not None:
            numpy.random.set_state(np_rng)
        from IPython.display import publish_display_data
        publish_display_data({"application/x.autograder-probe+json": {"test": _test_id, "results": payload}})
