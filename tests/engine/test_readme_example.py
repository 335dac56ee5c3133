"""The README's engine example (a multi-label task in one class) runs and learns."""

import re
from pathlib import Path

import torch

import divekit as dk
from divekit.engine.task import TASKS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_multilabel_task_learns(capsys, monkeypatch, one_thread):
    block = re.search(r"<!-- engine-example -->\n```python\n(.*?)```", README.read_text(),
                      re.DOTALL)
    assert block, "the README lost its engine example"
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))  # registered only in here
    namespace = {"__name__": "readme_example"}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    history, data = namespace["history"], namespace["data"]
    assert set(history.last) >= {"train_loss", "train_f1", "test_loss", "test_f1"}
    assert history.last["test_f1"] > 0.98
    assert "test F1" in capsys.readouterr().out
    # The same metric on an untrained model of the example's shape: learning made the gap.
    torch.manual_seed(0)
    untrained = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 4))
    before = dk.Trainer(task="multilabel", progress=False).evaluate(
        untrained, data.test_dataloader())
    assert before["test_f1"] < 0.6
