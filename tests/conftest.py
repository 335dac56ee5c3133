"""Shared fixtures: small in-memory datasets and the real-data folder (``DIVEKIT_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from divekit.data import DataModule
from divekit.data.vision import FASHION_MNIST
from divekit.engine import Callback


@pytest.fixture(autouse=True)
def _no_network_and_fixed_threads(monkeypatch):
    # Tests never reach the internet; the ones that test downloads serve files on 127.0.0.1.
    monkeypatch.setenv("DIVEKIT_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """Run a test on one thread: tiny models gain nothing from a second one, and on a busy
    2-core machine the thread handoffs made such tests 5-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_data_dir(dataset: str) -> Path:
    """The folder holding the original files of ``dataset``, or skip when it is not here."""
    root = os.environ.get("DIVEKIT_DATA")
    if not root or not (Path(root) / dataset).is_dir():
        pytest.skip(f"no real {dataset} files: set DIVEKIT_DATA (CI uses ../shared/data)")
    return Path(root)


def blobs(num_examples: int = 512, num_classes: int = 4, sample_seed: int = 0,
          shape: tuple[int, ...] = (1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable classes: each class is a fixed random pattern (the same for every call) plus
    noise drawn with ``sample_seed``."""
    centers = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(sample_seed)
    labels = torch.randint(0, num_classes, (num_examples,), generator=generator)
    inputs = centers[labels] + 0.8 * torch.randn(num_examples, *shape, generator=generator)
    return inputs, labels


@pytest.fixture
def blob_data() -> DataModule:
    return DataModule("blobs", train=blobs(512, sample_seed=0), test=blobs(200, sample_seed=1),
                      batch_size=32, class_names=["a", "b", "c", "d"])


def small_cnn(num_classes: int = 4, dropout: float = 0.3) -> torch.nn.Module:
    """A CNN with batch norm and dropout, so resume tests cover running stats and RNG."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Dropout(dropout), torch.nn.Linear(4 * 64, num_classes),
    )


def fake_fashion(num_train: int, num_test: int, batch_size: int) -> DataModule:
    """Random 28x28 grey images with Fashion-MNIST's classes: the real set's shapes."""
    generator = torch.Generator().manual_seed(0)

    def split(n):
        return (torch.rand(n, 1, 28, 28, generator=generator),
                torch.randint(0, 10, (n,), generator=generator))

    return DataModule("fake", train=split(num_train), test=split(num_test),
                      batch_size=batch_size, class_names=FASHION_MNIST.classes)


class KillAtStartOf(Callback):
    """Interrupts the run as a kill would: after epoch ``epoch - 1`` was checkpointed."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer):
        if trainer.epoch + 1 == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def _signal_handlers_are_left_as_found(request):
    """A test that leaves a SIGINT/SIGTERM handler behind would change how every later test
    (and Ctrl-C) behaves: fail that test, and put the handlers back."""
    import signal

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    changed = [signal.Signals(signum).name for signum, handler in before.items()
               if signal.getsignal(signum) is not handler]
    for signum, handler in before.items():
        signal.signal(signum, handler)
    assert not changed, f"{request.node.nodeid} left the {', '.join(changed)} handler changed"


def cli(capsys, *args):
    """Run the command in this process (fast); returns (exit status, stdout, stderr)."""
    from divekit.cli import main

    try:
        status = main([str(a) for a in args])
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(autouse=True, scope="session")
def _autotune_cache_in_a_temporary_folder(tmp_path_factory):
    """Runs with ``--amp auto`` cache their measurements; keep them out of the user's cache."""
    import os

    previous = os.environ.get("DIVEKIT_CACHE")
    os.environ["DIVEKIT_CACHE"] = str(tmp_path_factory.mktemp("divekit-cache"))
    yield
    if previous is None:
        os.environ.pop("DIVEKIT_CACHE", None)
    else:
        os.environ["DIVEKIT_CACHE"] = previous

