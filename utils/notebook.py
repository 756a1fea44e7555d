"""The first code cell of every lecture: pick the device, seed everything, say what was chosen."""
from __future__ import annotations

import torch

from utils.claims import record
from utils.device import pick_device
from utils.seeding import seed_everything

DEVICE_LINE_PREFIX = "device: "


def setup(device: str = "auto", seed: int = 0, deterministic: bool = False) -> torch.device:
    """Seed, pick the device and print one line the course runner reads back (``device: cpu ...``)."""
    seed_everything(seed, deterministic=deterministic)
    chosen = pick_device(device)
    capability = torch.backends.cpu.get_cpu_capability()
    record("environment", {"device": str(chosen), "seed": seed, "torch": torch.__version__, "cpu_capability": capability,
                           "threads": torch.get_num_threads()})
    print(f"{DEVICE_LINE_PREFIX}{chosen} | seed: {seed} | torch {torch.__version__}")
    return chosen
