"""The LSTM language model on The Time Machine (d2l 10.1; Hochreiter & Schmidhuber 1997): the
plain ``nn.LSTM`` training loop against the Trainer.

Both train the same network, one-hot characters -> ``nn.LSTM`` (hidden 32) -> ``nn.Linear``, on
the same windows (batch 1024, 32 steps), SGD lr 4 with the gradient norm clipped to 1. The plain
loop is what a learner writes after the course (forward, loss, backward, clip, step);
``divekit / plain`` is then the Trainer's own overhead.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk

NAME, UNIT = "lstm", "tokens/s"
WHAT = "LSTM LM, Time Machine, hidden 32, batch 1024 x 32 steps, SGD"
WARMUP, STEPS, QUICK_STEPS = 3, 25, 5
RESTART_BOOK = False
HIDDEN, BATCH_SIZE, NUM_STEPS, LR = 32, 1024, 32, 4.0


class PlainLSTMLM(nn.Module):
    """One-hot characters -> ``nn.LSTM`` -> ``nn.Linear`` (the layers of divekit's ``lstm-lm``),
    time-major as the book's concise model runs them (one-hot of ``x.T``, the layer's default
    ``(steps, batch, features)`` layout, the logits' axes swapped back at the end).

    Shape:
        x: ``(batch, steps)`` token ids -> logits ``(batch, steps, vocab_size)``.
    """

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = nn.LSTM(vocab_size, hidden_size)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.rnn(F.one_hot(x.T, self.vocab_size).float())
        return self.output(outputs).swapaxes(0, 1)


def book_steps(model: nn.Module, batches, lr: float,
               device: str | torch.device = "cpu") -> Iterator[int]:
    """The loop a learner writes: forward, loss, backward, clip the gradient norm to 1, step;
    yields each batch's token count after its step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        yield y.numel()


def prepare(batches: int) -> dict:
    """``batches`` full batches of windows (stride 1) from The Time Machine."""
    data = dk.load_data("timemachine", batch_size=BATCH_SIZE, num_steps=NUM_STEPS, stride=1,
                        num_train=batches * BATCH_SIZE)
    return {"data": data}


def book_run(state: dict, device: torch.device) -> Iterator[int]:
    data = state["data"]
    model = PlainLSTMLM(data.num_classes, HIDDEN).to(device)
    return book_steps(model, data.train_dataloader(), LR, device)


def divekit_run(state: dict) -> tuple[nn.Module, object, dict]:
    model = dk.create_model("lstm-lm", state["data"], hidden_size=HIDDEN)
    return model, state["data"], {"lr": LR, "optimizer": "sgd", "grad_clip": 1.0}

