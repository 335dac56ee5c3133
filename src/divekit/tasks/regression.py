"""3.1-3.5 Regression: squared loss, reported as the mean over a split's examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from divekit.engine.task import Output, Task, register_task


@register_task("regression")
@dataclass
class Regression(Task):
    """Real-valued targets against predictions of the same size; loss: mean squared error.

    ``count`` is the number of examples (rows), and the loss is the mean over all target
    values, so a model with several outputs per example weights each output equally.

    Metrics: ``rmse``, the root of the mean squared error over the whole split (torchmetrics'
    ``MeanSquaredError(squared=False)``); on log targets (house prices) it is the log-RMSE
    the course and the Kaggle competition report.
    """

    monitor = "loss"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.float(), targets.reshape(outputs.shape).float())

    def metrics(self, split: str) -> dict:
        from torchmetrics import MeanSquaredError

        return {"rmse": MeanSquaredError(squared=False)}

    def update(self, metrics: dict, output: Output, batch) -> None:
        outputs = output.outputs.float()
        metrics["rmse"].update(outputs, self.targets(batch).reshape(outputs.shape).float())
