"""``divekit bench``: the runner's arithmetic, the command's output and errors, and that the
book's loops and divekit train the same networks (LeNet, the LSTM LM) to the same loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.bench import lenet, lstm
from divekit.bench.runner import Row, check_names, measure_allocator, table
from divekit.data import DataModule
from divekit.data.vision import FASHION_MNIST
from divekit.engine.device import cpu_name
from divekit.engine.task import to_device
from divekit.errors import DivekitError
from tests.conftest import cli, real_data_dir
from tests.test_cli import one_line_error


def test_ratio_is_the_median_of_paired_ratios_not_the_ratio_of_medians():
    row = Row("case", "what", "images/s", book=[1.0, 2.0, 10.0],
              pairs={"divekit off": [(1.0, 3.0), (2.0, 2.0), (10.0, 40.0)]})
    # Paired ratios 3, 1, 4: median 3; the medians alone (3 / 2) would say 1.5.
    assert row.median("book") == 2.0 and row.median("divekit off") == 3.0
    assert row.ratio("divekit off") == 3.0
    lines = table([row], ["off", "bf16"])
    assert lines[0] == "| case | what | unit | book loop | divekit | ratio | divekit bf16 | ratio |"
    assert lines[2] == "| case | what | images/s | 2.0 | 3.0 | 3.00x | - | - |"


def test_cases_keep_the_table_order_and_an_unknown_one_is_refused(capsys):
    assert check_names([]) == ["lenet", "lstm", "transformer", "tiny-ssd", "allocator"]
    assert check_names(["allocator", "lenet"]) == ["lenet", "allocator"]
    with pytest.raises(DivekitError, match="choose from lenet, lstm"):
        check_names(["lenet", "resnet"])
    status, out, err = cli(capsys, "bench", "resnet", "--quick")
    one_line_error(status, err, "unknown benchmark case 'resnet'", "tiny-ssd")
    assert out == ""


def test_missing_data_is_one_line_naming_divekit_data(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DIVEKIT_DATA", str(tmp_path))
    status, _, err = cli(capsys, "bench", "lenet", "--quick")
    one_line_error(status, err, "DIVEKIT_DATA")


def test_bench_lenet_prints_the_machine_and_a_markdown_row(capsys, one_thread):
    real_data_dir("fashion-mnist")
    status, out, _ = cli(capsys, "bench", "lenet", "--quick", "--repeats", "1", "--steps", "1")
    assert status == 0
    assert f"CPU: {cpu_name()}" in out and f"torch {torch.__version__}, 1 threads" in out
    row = next(line for line in out.splitlines() if line.startswith("| lenet |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "images/s" and cells[5].endswith("x") and float(cells[5][:-1]) > 0


def test_allocator_row_times_both_settings_in_child_processes():
    row = measure_allocator(warmup=1, steps=1, repeats=1, threads=1)
    assert len(row.book) == len(row.pairs["divekit off"]) == 1
    assert row.ratio("divekit off") > 0


def test_lenet_book_batch_and_loss_equal_the_trainers(one_thread):
    # Pixels k/255 survive the book's uint8 -> PIL -> float path exactly.
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 28, 28), generator=generator).float() / 255
    labels = torch.randint(0, 10, (16,), generator=generator)
    data = DataModule("fake", train=(images, labels), test=(images, labels), batch_size=16,
                      class_names=FASHION_MNIST.classes)
    train_loader, _ = lenet.book_loaders(data, workers=0)
    x, y = next(iter(torch.utils.data.DataLoader(train_loader.dataset, batch_size=16)))
    torch.testing.assert_close(x, images, rtol=0, atol=0)
    model = dk.create_model("lenet")
    task = dk.create_task("classification")
    batch = to_device((images, labels), torch.device("cpu"), channels_last=True)
    with torch.no_grad():
        ours = task.step(model.to(memory_format=torch.channels_last), batch).loss
        assert abs(float(F.cross_entropy(model(x), y)) - float(ours)) < 1e-5


def test_plain_lstm_and_lstm_lm_are_the_same_network_with_the_same_loss(one_thread):
    torch.manual_seed(0)
    plain = lstm.PlainLSTMLM(28, lstm.HIDDEN)
    ours = dk.create_model("lstm-lm", num_classes=28, hidden_size=lstm.HIDDEN)
    ours.load_state_dict(plain.state_dict())
    x, y = torch.randint(0, 28, (2, 4, 32)).unbind(0)
    with torch.no_grad():
        logits = plain(x)
        book_loss = F.cross_entropy(logits.reshape(-1, 28), y.reshape(-1))
        task_loss = dk.create_task("language-model").step(ours, (x, y)).loss
    assert abs(float(book_loss) - float(task_loss)) < 1e-5
