"""The course's data set: scikit-learn's bundled handwritten digits, split once and for all.

``load_digits`` ships inside scikit-learn (1,797 images of 8x8 pixels, 10 classes), so the
notebooks never download anything. The split is stratified and fixed by ``seed``, and label noise,
when asked for, is applied to the training labels only: validation and test stay clean so that
they measure what the model learned about the real digits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_CLASSES = 10
NUM_FEATURES = 64


@dataclass(frozen=True)
class Split:
    """Features ``x`` (float32, ``[n, 64]``, scaled to [0, 1]) and labels ``y`` (int64, ``[n]``)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: str | torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Digits:
    train: Split
    val: Split
    test: Split
    noise_rate: float = 0.0
    num_classes: int = NUM_CLASSES

    def to(self, device: str | torch.device) -> "Digits":
        return Digits(self.train.to(device), self.val.to(device), self.test.to(device), self.noise_rate, self.num_classes)


def add_symmetric_label_noise(labels: torch.Tensor, rate: float, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a copy of ``labels`` where a fraction ``rate`` of them is moved to another class.

    Symmetric noise: each corrupted label becomes one of the *other* ``num_classes - 1`` classes,
    uniformly, so exactly ``round(rate * n)`` labels are wrong.
    """
    if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} and dtype {labels.dtype}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {labels.min().item()} to {labels.max().item()}")
    noisy = labels.clone()
    n_flip = int(round(float(rate) * len(labels)))
    if n_flip == 0:
        return noisy
    idx = torch.randperm(len(labels), generator=generator)[:n_flip]
    shift = torch.randint(1, num_classes, (n_flip,), generator=generator)
    noisy[idx] = (labels[idx] + shift) % num_classes
    return noisy


def load_digits_split(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2, noise_rate: float = 0.0, device: str | torch.device = "cpu") -> Digits:
    """The digits as train/validation/test tensors, stratified, fixed by ``seed``.

    ``noise_rate`` flips that fraction of the *training* labels (see :func:`add_symmetric_label_noise`).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {frac!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must leave data to train on, got {val_fraction} + {test_fraction}")

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    rest, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
    train_idx, val_idx = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction), random_state=seed, stratify=y.numpy()[rest])
    train = Split(x[train_idx], y[train_idx])
    if noise_rate:
        gen = torch.Generator().manual_seed(seed)
        train = Split(train.x, add_symmetric_label_noise(train.y, noise_rate, NUM_CLASSES, gen))
    digits = Digits(train, Split(x[val_idx], y[val_idx]), Split(x[test_idx], y[test_idx]), float(noise_rate))
    return digits.to(device)
