"""Seeding, so that every number a notebook prints comes out the same on the next run."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0, deterministic: bool = False) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators (all devices) and return a CPU generator.

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPUs; on the CPU
    the course's code is deterministic already). The returned generator is seeded too, for code
    that prefers an explicit generator to the global state.

    Not done here: ``PYTHONHASHSEED``. Python reads it once, when the interpreter starts, to salt
    ``hash()`` of strings; setting it in a running process changes nothing for that process (and
    would only leak into child processes). Nothing in the course depends on string hashes; to fix
    them anyway, start Jupyter or Python with ``PYTHONHASHSEED=0`` in the environment.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA and MPS too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
