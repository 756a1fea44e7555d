"""``python -m bench``: run every benchmark, write build/bench/*.json and *.png, print the tables.

``--quick`` runs tiny sizes (a smoke test of the code, used by tests/test_bench.py); ``--only``
picks benchmarks by name. A benchmark that fails is reported and the others still run; the exit
status is 1 if any failed. ``bench.grading`` is written separately: when it is missing it is
skipped with a message, and since its ``run(out_dir)`` has no quick mode, ``--quick`` skips it
too unless its ``run`` accepts a ``quick`` argument.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = ("losses", "chunked", "grading")


def load(name: str):
    """The module ``bench.<name>``, or None when that file does not exist."""
    try:
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None
        raise


def run_one(name: str, module, out_dir: Path, quick: bool, device: str, solution: str | None) -> tuple[str, dict | None]:
    """Run one benchmark module; returns (status line, data or None)."""
    params = inspect.signature(module.run).parameters
    kwargs = {}
    if "quick" in params:
        kwargs["quick"] = quick
    elif quick:
        return f"{name}: skipped (its run() has no quick mode)", None
    if "device" in params:
        kwargs["device"] = device
    if solution and "solution_path" in params:
        kwargs["solution_path"] = solution
    data = module.run(out_dir, **kwargs)
    return f"{name}: ok", data


def describe(name: str, module, data: dict) -> str:
    if hasattr(module, "table"):
        return module.table(data)
    if isinstance(data, dict) and isinstance(data.get("table"), str):
        return data["table"]
    return json.dumps(data, indent=2, default=str)[:4000]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/bench", help="folder for the JSON files and plots")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code runs, measures nothing useful")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--solution", default=None, help="notebook with the loss solution (default: source/ps2_losses/ps2_losses.ipynb)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    statuses, failed = [], False
    for name in names:
        module = load(name)
        if module is None:
            statuses.append(f"{name}: skipped (bench/{name}.py is missing)")
            print(statuses[-1], flush=True)
            continue
        print(f"== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            status, data = run_one(name, module, out_dir, args.quick, args.device, args.solution)
        except Exception as exc:  # report and go on with the other benchmarks
            traceback.print_exc()
            status, data, failed = f"{name}: FAILED ({type(exc).__name__}: {exc})", None, True
        status += f" in {time.perf_counter() - start:.1f} s"
        if data is not None:
            print(describe(name, module, data), flush=True)
        print(status, flush=True)
        statuses.append(status)
    print("\n" + "\n".join(statuses) + f"\nresults in {out_dir}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
