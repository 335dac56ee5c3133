"""Data the library generates: the course's synthetic linear-regression problem (section 3.3)."""

from __future__ import annotations

import torch

from divekit.data.registry import DataModule, register_dataset

TRUE_W = (2.0, -3.4)
TRUE_B = 4.2


def synthetic_regression(
    w: torch.Tensor, b: float, num_examples: int, noise: float = 0.01, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``X ~ N(0, 1)`` and ``y = X w + b + noise * N(0, 1)``.

    Shape:
        X: ``(num_examples, len(w))``; y: ``(num_examples, 1)``.
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_examples, len(w), generator=generator)
    targets = features @ w.reshape(-1, 1) + b
    targets += noise * torch.randn(targets.shape, generator=generator)
    return features, targets


@register_dataset("synthetic-regression", section="3.3 Synthetic Regression Data")
def synthetic_regression_data(
    data_dir: str | None = None, num_train: int = 1000, num_test: int = 1000,
    noise: float = 0.01, generator_seed: int = 0,
) -> DataModule:
    """Generated: y = Xw + b + noise with the course's w = [2, -3.4], b = 4.2."""
    features, targets = synthetic_regression(
        torch.tensor(TRUE_W), TRUE_B, num_train + num_test, noise, generator_seed
    )
    return DataModule(
        "synthetic-regression",
        train=(features[:num_train], targets[:num_train]),
        test=(features[num_train:], targets[num_train:]),
        task="regression",
    )
