"""Static inspection of submitted source: facts the verifier gets by reading, never by running.

Used for "written without the built-in loss". Running the function with ``F.cross_entropy`` and
friends disabled (the hidden test's way, replayed by the probe) is defeated by code that kept a
reference beforehand (``_ce = F.cross_entropy``); the hidden test also reads the function's own
source and globals, which the trusted replay cannot do on a kernel object. So the submitted
source is read here: **every code cell the student could edit** (whatever its tags, id or
metadata: :func:`autograder.notebook.written_by_student`), with these rules (the broken rule is
the message in the student's feedback):

R1. no dynamic access: anything that could reach a name without spelling it is refused, because
    the grader cannot then prove what it reaches. Refused: ``eval``, ``exec``, ``compile``,
    ``__import__``, ``globals()``/``vars()``/``locals()``; ``getattr``/``setattr``/... with a
    computed name *or used as a value* (``functools.reduce(getattr, [...], F)``); ``__dict__``,
    ``__getattribute__``, frames, ``gc``, ``sys.modules``; IPython (``get_ipython()`` and so
    ``.ev``/``.run_cell``/``.ex``, magics, ``!`` shell lines); ``importlib``, ``pickle``,
    ``runpy``, ``ctypes``...; torch's dynamic entry points and tables (``torch.ops``,
    ``torch._C``, ``torch._refs``, ``torch._decomp``, ``torch.overrides``, ``torch.library``,
    ``torch.jit``, ``torch.hub``, ``torch.load``, ``torch.utils``, ``torch.compile``...; not
    ``torch.autograd``, which an answer may use for its own ``Function``) and any
    private (``_name``) attribute of a library module; importing a module that is not on
    :data:`ALLOWED_IMPORTS` (a module the student wrote to disk and imports is not readable
    here);
R2. no changes to library objects: no assignment to an attribute or item of an imported module
    (``torch.logsumexp = ...``, ``F.__dict__[...] = ...``);
R3. a built-in cross-entropy / NLL function is only *called* on the spot
    (``print(F.cross_entropy(z, y))`` to compare is fine) or bound to a plain top-level name
    (``ce = F.cross_entropy``); passing or storing it anywhere else is not;
R4. code reachable from the function (its definition and, transitively, every top-level
    definition it names) does not mention a built-in loss at all;
R5. the function's own code does not use the banned names, even as local variable names
    (mirrors the hidden test, which reads the function's source).

At run time the probe kernel also watches the dispatcher while the function runs (any path to
``aten::nll_loss*`` / ``aten::cross_entropy*`` shows up there, however it was reached:
:func:`autograder.kernel_probe.watching_ops`); that report comes from an untrusted kernel, so it
can only take points away, and these static rules are the part a lying kernel cannot evade.
Tests: ``tests/test_verdict.py::test_static_policy_*`` and the ps2 attack bank
(``attack-builtin-via-reduce-getattr``, ``attack-builtin-via-ipython-ev``, ...).
"""
from __future__ import annotations

import ast
import re
import warnings

FORBIDDEN = re.compile(r"(?i)^(\w*cross_?entropy\w*|nll_?loss\w*)$")
BANNED_EXACT = {"cross_entropy", "nll_loss", "CrossEntropyLoss", "NLLLoss", "cross_entropy_loss",
                "nll_loss_nd", "nll_loss2d"}
DYNAMIC_CALLS = {"eval", "exec", "compile", "__import__", "globals", "locals", "vars",
                 "breakpoint"}
NAME_CALLS = {"getattr", "setattr", "delattr", "hasattr"}
DYNAMIC_ATTRS = {"__dict__", "__getattribute__", "__globals__", "__builtins__", "__closure__",
                 "__code__", "__wrapped__", "f_back", "f_globals", "f_locals", "_getframe",
                 "get_objects", "get_referrers", "attrgetter", "methodcaller", "__subclasses__",
                 "__setattr__", "__delattr__"}
BANNED_MODULES = {"importlib", "pickle", "marshal", "dill", "cloudpickle", "ctypes", "cffi", "gc",
                  "inspect", "builtins", "runpy", "types", "operator", "copyreg", "shelve"}
TORCH_DYNAMIC = {"load", "jit", "hub", "package", "ops", "overrides", "library", "utils", "compile", "fx",
                 "export", "func", "testing", "backends", "classes", "distributed"}
#: top-level modules a student cell may import (anything else could be a module written to disk)
ALLOWED_IMPORTS = {"torch", "numpy", "math", "cmath", "random", "functools", "itertools", "collections",
                   "typing", "dataclasses", "warnings", "time", "statistics", "abc", "enum", "numbers",
                   "string", "re", "copy", "fractions", "decimal", "matplotlib", "utils", "textwrap",
                   "pprint", "heapq", "bisect", "__future__"}
#: dunder attributes ordinary code uses (any other ``__x__`` attribute counts as dynamic access)
PLAIN_DUNDERS = {"__init__", "__name__", "__doc__", "__call__", "__len__", "__repr__", "__str__",
                 "__class__", "__eq__", "__hash__", "__iter__", "__next__", "__getitem__", "__enter__",
                 "__exit__", "__module__", "__qualname__"}


def to_python(source: str) -> str:
    """IPython cell source (magics, !shell) as plain Python."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:
        return source


def parse_cells(sources: list[str]) -> tuple[list[ast.stmt], str | None]:
    statements: list[ast.stmt] = []
    for index, source in enumerate(sources):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(to_python(source))
        except SyntaxError as exc:
            return statements, f"one of your code cells does not parse ({exc.msg}, line {exc.lineno})"
        statements.extend(tree.body)
        statements.extend(_magic_code(tree))
    return statements, None


#: IPython magics allowed in a student cell; the code they time is read like any other code
SAFE_MAGICS = {"time": True, "timeit": True, "matplotlib": False}


def _magic_code(tree: ast.AST) -> list[ast.stmt]:
    """Mark ``get_ipython().run_line_magic("time", "code")`` (from ``%time code``) as allowed and
    return the statements of the code it runs; any other use of get_ipython stays refused."""
    out: list[ast.stmt] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("run_line_magic", "run_cell_magic")
                and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
                and node.func.value.func.id == "get_ipython" and not node.func.value.args and node.args
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
                and not node.keywords and node.args[0].value in SAFE_MAGICS):
            continue
        code = [a.value for a in node.args[1:]] if SAFE_MAGICS[node.args[0].value] else []
        try:
            parsed = [ast.parse(to_python(c)) for c in code]
        except SyntaxError:
            continue
        node.func.value.func.ag_safe_magic = True
        for sub in parsed:
            out.extend(sub.body)
            out.extend(_magic_code(sub))
    return out


def _bound_names(stmt: ast.stmt) -> set[str]:
    names: set[str] = set()
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(stmt.name)
    elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
        for alias in stmt.names:
            names.add((alias.asname or alias.name).split(".")[0])
    else:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)
    return names


def _loaded_names(stmt: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _forbidden_mentions(stmt: ast.AST) -> list[tuple[ast.AST, str]]:
    out = []
    for node in ast.walk(stmt):
        if isinstance(node, ast.Attribute) and FORBIDDEN.match(node.attr):
            out.append((node, node.attr))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*" and (node.module or "").split(".")[0] == "torch":
                    out.append((node, f"from {node.module} import *"))
                elif FORBIDDEN.match(alias.name):
                    out.append((node, alias.name))
    return out


def _dynamic_access(stmt: ast.stmt, modules: set[str] = frozenset()) -> str | None:
    called = {id(n.func) for n in ast.walk(stmt) if isinstance(n, ast.Call)}
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in NAME_CALLS | DYNAMIC_CALLS and id(node) not in called:
                return f"`{node.id}` passed around as a value"
            if node.id == "get_ipython" and not getattr(node, "ag_safe_magic", False):
                return "IPython's `get_ipython()` (or a magic / shell line)"
        if isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr.endswith("__") \
                and node.attr not in PLAIN_DUNDERS:
            return f"`.{node.attr}`"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and _root_name(node) in modules:
            return f"the private `{ast.unparse(node)}`"
        if isinstance(node, ast.Attribute) and node.attr in TORCH_DYNAMIC and _root_name(node) in modules \
                and _root_name(node) in ("torch",) and isinstance(node.value, ast.Name):
            return f"`torch.{node.attr}`"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name in DYNAMIC_CALLS:
                return f"`{name}(...)`"
            if name in NAME_CALLS:
                attr = node.args[1] if len(node.args) > 1 else None
                if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                    return f"`{name}` with a computed attribute name"
                if FORBIDDEN.match(attr.value):
                    return f"`{name}(..., {attr.value!r})`"
        if isinstance(node, ast.Name) and node.id in ("__builtins__", "__loader__", "__spec__"):
            return f"`{node.id}`"
        if isinstance(node, ast.Attribute):
            if node.attr in DYNAMIC_ATTRS:
                return f"`.{node.attr}`"
            if isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr == "modules":
                return "`sys.modules`"
            if isinstance(node.value, ast.Name) and node.value.id == "torch" and node.attr in TORCH_DYNAMIC:
                return f"`torch.{node.attr}`"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.level:
                return "a relative import"
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in names:
                top = module.split(".")[0]
                if top in BANNED_MODULES or top not in ALLOWED_IMPORTS:
                    return f"`import {module}` (only {', '.join(sorted(ALLOWED_IMPORTS - {'__future__'}))} here)"
                if top == "torch" and any(part.startswith("_") or part in TORCH_DYNAMIC for part in module.split(".")[1:]):
                    return f"`import {module}`"
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
                for alias in node.names:
                    if alias.name.startswith("_") or alias.name in TORCH_DYNAMIC:
                        return f"`from {node.module} import {alias.name}`"
    return None


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _library_change(stmt: ast.stmt, modules: set[str]) -> str | None:
    for node in ast.walk(stmt):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, (ast.Attribute, ast.Subscript)) and _root_name(sub) in modules:
                    return ast.unparse(sub)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("setattr", "delattr") and node.args \
                and _root_name(node.args[0]) in modules:
            return ast.unparse(node)
    return None


def _taint_source(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement binds to a built-in loss (``ce = F.cross_entropy``, imports)."""
    if isinstance(stmt, ast.ImportFrom):
        return {alias.asname or alias.name for alias in stmt.names if FORBIDDEN.match(alias.name)}
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets) \
            and isinstance(stmt.value, ast.Attribute) and FORBIDDEN.match(stmt.value.attr):
        return {t.id for t in stmt.targets}
    return set()


def _mentions(stmt: ast.AST, tainted: set[str]) -> list[tuple[ast.AST, str]]:
    names = [(n, n.id) for n in ast.walk(stmt)
             if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in tainted]
    return _forbidden_mentions(stmt) + names


def _stored_references(stmt: ast.stmt, tainted: set[str]) -> list[str]:
    """Built-in losses mentioned outside call position (R3), taint-defining statements excepted."""
    if _taint_source(stmt) or isinstance(stmt, ast.Import):
        return []
    called = {id(n.func) for n in ast.walk(stmt) if isinstance(n, ast.Call)}
    return [name for node, name in _mentions(stmt, tainted) if id(node) not in called]


LIBRARY_NAMES = {"torch", "F", "nn", "np", "numpy", "math", "builtins", "sys", "os", "functools", "operator"}


def builtin_loss_violation(sources: list[str], target: str, context: list[str] = ()) -> str | None:
    """None when ``target`` is written without the built-in losses (rules in the module doc).

    ``sources``: the student's code cells; ``context``: the notebook's other (locked) code
    cells, read only for the names they import (``import torch.nn.functional as F``)."""
    statements, problem = parse_cells(sources)
    if problem:
        return problem
    modules = set(LIBRARY_NAMES)
    context_statements, _ = parse_cells(list(context))
    for stmt in statements + context_statements:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            modules |= _bound_names(stmt)
    for stmt in statements:
        dynamic = _dynamic_access(stmt, modules)
        if dynamic:
            return (f"your code uses {dynamic}: the grader cannot then check that `{target}` "
                    f"avoids the built-in losses, so this is not accepted here")
    for stmt in statements:
        change = _library_change(stmt, modules)
        if change:
            return f"your code changes a library object (`{change}`); leave torch as it is"
    tainted = set().union(*[_taint_source(stmt) for stmt in statements]) if statements else set()
    for stmt in statements:
        stored = _stored_references(stmt, tainted)
        if stored:
            line = ast.unparse(stmt).splitlines()[0][:80]
            return f"your code passes the built-in `{stored[0]}` around as a value (`{line}`)"
    definitions: dict[str, list[ast.stmt]] = {}
    for stmt in statements:
        for name in _bound_names(stmt):
            definitions.setdefault(name, []).append(stmt)
    own = [s for s in definitions.get(target, [])]
    if not own:
        return f"`{target}` is not defined in your code"
    for stmt in own:
        names = {n.attr for n in ast.walk(stmt) if isinstance(n, ast.Attribute)} | \
                {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
        banned = sorted(names & BANNED_EXACT)
        if banned:
            return f"`{target}` uses {', '.join(banned)}"
    todo, seen, reachable = [target], set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for stmt in definitions.get(name, []):
            if stmt not in reachable:
                reachable.append(stmt)
                todo.extend(_loaded_names(stmt) - seen)
    for stmt in reachable:
        mentions = _mentions(stmt, tainted)
        if mentions:
            where = getattr(stmt, "name", None) or ast.unparse(stmt).splitlines()[0][:60]
            return f"`{target}` uses the built-in `{mentions[0][1]}` (through `{where}`)"
    return None
