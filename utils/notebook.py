"""The first code cell of every lecture: pick the device, seed everything, say what was chosen."""
from __future__ import annotations

import torch

from utils.device import pick_device
from utils.seeding import seed_everything

DEVICE_LINE_PREFIX = "device: "


def setup(device: str = "auto", seed: int = 0, deterministic: bool = False) -> torch.device:
    """Seed, pick the device and print one line the course runner reads back (``device: cpu ...``)."""
    seed_everything(seed, deterministic=deterministic)
    chosen = pick_device(device)
    print(f"{DEVICE_LINE_PREFIX}{chosen} | seed: {seed} | torch {torch.__version__}")
    return chosen
