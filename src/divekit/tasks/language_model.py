"""9.3-9.5 Language modelling: next-token cross-entropy per token, and perplexity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from divekit.engine.metrics import Perplexity
from divekit.engine.task import Output, Task, register_task


@register_task("language-model")
@dataclass
class LanguageModeling(Task):
    """Token windows ``(B, T)`` and their next tokens ``(B, T)``; logits ``(B, T, V)``.

    The count is tokens (``B * T``), so accumulation and the epoch's loss weight every token
    equally. Metrics: ``ppl`` = exp(mean cross-entropy per token).
    """

    monitor = "ppl"

    def count(self, batch) -> int:
        return self.targets(batch).numel()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float().flatten(0, -2), targets.flatten())

    def metrics(self, split: str) -> dict:
        return {"ppl": Perplexity()}

    def update(self, metrics: dict, output: Output, batch) -> None:
        metrics["ppl"].update(output.loss, self.count(batch))
