"""The task interface: structured batches, example counts, named loss parts, metric directions."""

import json
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import divekit as dk
from divekit.data import DataModule
from divekit.engine import Output, Task, create_task, load_checkpoint, register_task
from divekit.engine.metrics import Mean, Perplexity
from divekit.engine.task import to_device
from divekit.tasks import Classification, LanguageModeling
from tests.conftest import blobs

PAD = 0


def test_to_device_moves_every_tensor_of_a_nested_batch():
    Pair = namedtuple("Pair", "source target")
    batch = {
        "images": torch.rand(2, 3, 4, 4),
        "targets": [{"boxes": torch.rand(1, 4), "labels": torch.tensor([1])},
                    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
        "pair": Pair(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 1, 1, 1, dtype=torch.long)),
        "name": "kept as it is",
    }
    moved = to_device(batch, torch.device("meta"), channels_last=True)
    assert moved["images"].device.type == "meta"
    assert moved["images"].is_contiguous(memory_format=torch.channels_last)
    assert [t["boxes"].device.type for t in moved["targets"]] == ["meta", "meta"]
    assert isinstance(moved["pair"], Pair) and moved["pair"].source.device.type == "meta"
    # Only floating-point 4-D tensors are images; an int64 4-D tensor keeps its layout.
    assert moved["pair"].target.is_contiguous()
    assert moved["name"] == "kept as it is"


# ---------------------------------------------------------------- token-weighted accumulation
def padded_tagging_data(num_sentences=48, max_len=9, vocab=12, tags=5, seed=0):
    """Sentences of 2..max_len tokens, padded with 0, and a tag per token (-100 on padding)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, max_len + 1, (num_sentences,), generator=generator)
    tokens = torch.randint(1, vocab, (num_sentences, max_len), generator=generator)
    mask = torch.arange(max_len) < lengths[:, None]
    tokens = tokens.masked_fill(~mask, PAD)
    labels = (tokens * 3 % tags).masked_fill(~mask, -100)
    return tokens, labels


@dataclass
class Tagging(Task):
    """One tag per token; the loss is the mean over the tokens that are not padding."""

    per_sentence: bool = False  # the wrong rule, to show the test can fail

    def count(self, batch):
        tokens, labels = batch
        return len(tokens) if self.per_sentence else (labels != -100).sum()

    def loss(self, logits, labels):
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def tagger(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(12, 8), nn.Tanh(), nn.Linear(8, 5))


def train_tagger(batch_size, accumulate, task):
    data = DataModule("tags", train=padded_tagging_data(), test=padded_tagging_data(seed=1),
                      batch_size=batch_size, task="unused")
    trainer = dk.Trainer(max_epochs=1, lr=0.5, task=task, accumulate=accumulate,
                         progress=False)
    model = tagger()
    trainer.fit(model, data)
    return model


def test_accumulation_weights_batches_by_tokens_not_sentences():
    # 48 sentences in one batch of 48, or 4 accumulated batches of 12 with different numbers
    # of real tokens: the same single update only when each batch counts its tokens.
    large = train_tagger(48, 1, Tagging())
    accumulated = train_tagger(12, 4, Tagging())
    by_sentence = train_tagger(12, 4, Tagging(per_sentence=True))
    for a, b in zip(large.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, c, atol=1e-5)
               for a, c in zip(large.parameters(), by_sentence.parameters(), strict=True))


def test_the_epoch_loss_is_the_mean_over_counted_tokens():
    tokens, labels = padded_tagging_data()
    model = tagger()
    data = DataModule("tags", train=(tokens, labels), test=(tokens, labels), batch_size=7,
                      task="unused")
    metrics = dk.Trainer(task=Tagging(), progress=False).evaluate(model, data.test_dataloader())
    expected = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert metrics["test_loss"] == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- named parts, directions
@dataclass
class TwoPartRegression(Task):
    """A loss made of two named parts (as detection's classification and box losses)."""

    def step(self, model, batch):
        inputs, targets = batch
        predictions = model(inputs)
        squared = F.mse_loss(predictions[:, 0], targets[:, 0])
        absolute = F.l1_loss(predictions[:, 1], targets[:, 1])
        return Output(squared + absolute, predictions,
                      parts={"loss_sq": squared, "loss_abs": absolute})

    def metrics(self, split):
        from torchmetrics.regression import R2Score

        return {"r2": R2Score(multioutput="uniform_average")}


def regression_data(n, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    y = torch.stack([x.sum(1), x[:, 0] - x[:, 2]], 1) + 0.1 * torch.randn(n, 2,
                                                                           generator=generator)
    return x, y


def test_named_loss_parts_and_split_metrics_are_logged_per_epoch(tmp_path):
    data = DataModule("r", train=regression_data(200, 0), test=regression_data(61, 1),
                      batch_size=16, task="unused")
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    trainer = dk.Trainer(max_epochs=3, lr=0.1, task=TwoPartRegression(), progress=False,
                         out_dir=tmp_path)
    history = trainer.fit(model, data)
    assert {"train_loss_sq", "train_loss_abs", "test_loss_sq", "test_loss_abs", "test_r2",
            "train_r2"} <= set(history.last)
    # Exact over the 61 test examples (batches of 16, 16, 16, 13), not a mean of batch means.
    x, y = data.test
    with torch.no_grad():
        prediction = model(x)
    assert history.last["test_loss_sq"] == pytest.approx(
        F.mse_loss(prediction[:, 0], y[:, 0]).item(), rel=1e-5)
    assert history.last["test_loss_abs"] == pytest.approx(
        F.l1_loss(prediction[:, 1], y[:, 1]).item(), rel=1e-5)
    r2 = 1 - ((prediction - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert history.last["test_r2"] == pytest.approx(r2.mean().item(), rel=1e-4)
    # R^2 is maximised: the default monitor is the loss (minimised), r2 can be asked for.
    assert trainer.higher_is_better("test_r2") and not trainer.higher_is_better("test_loss_sq")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["test_loss_abs"] for row in written] == history.column("test_loss_abs")


class ScoreFromList(Task):
    """A task whose metric replays given values, to check which epoch is called best."""

    def __init__(self, values, higher_is_better):
        self.values, self.higher = iter(values), higher_is_better

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def metrics(self, split):
        task = self

        class Replay:
            higher_is_better = task.higher

            def to(self, device):
                return self

            def update(self, *args):
                pass

            def compute(self):
                return torch.tensor(next(task.values))

        return {"score": Replay()} if split == "test" else {}


@pytest.mark.parametrize(("higher", "mode", "best_epoch"),
                         [(True, None, 2), (False, None, 3), (None, "max", 2), (True, "min", 3)])
def test_best_checkpoint_follows_the_metric_direction(tmp_path, higher, mode, best_epoch):
    # Scores per epoch 0.5, 0.9, 0.1, 0.7: the best is epoch 2 when larger is better, else 3.
    data = DataModule("b", blobs(64), blobs(16), batch_size=32, class_names=list("abcd"))
    trainer = dk.Trainer(max_epochs=4, lr=0.1, monitor="score", mode=mode,
                         # The fifth score: the test split's at the end of fit (out_dir).
                         task=ScoreFromList([0.5, 0.9, 0.1, 0.7, 0.0], higher), out_dir=tmp_path,
                         progress=False)
    trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), data)
    assert trainer.monitor == "test_score"
    assert trainer.best["epoch"] == best_epoch
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == best_epoch


def test_a_metric_without_direction_needs_a_mode(tmp_path):
    data = DataModule("b", blobs(64), blobs(16), batch_size=32, class_names=list("abcd"))
    trainer = dk.Trainer(max_epochs=1, monitor="score", task=ScoreFromList([0.5], None),
                         progress=False)
    with pytest.raises(dk.DivekitError, match="pass mode='max' or 'min'"):
        trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), data)


def test_early_stopping_maximises_a_higher_is_better_metric():
    data = DataModule("b", blobs(64), blobs(16), batch_size=32, class_names=list("abcd"))
    trainer = dk.Trainer(max_epochs=6, monitor="score", early_stopping=2, progress=False,
                         task=ScoreFromList([0.5, 0.9, 0.8, 0.85, 0.95, 0.99], True))
    history = trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), data)
    # 0.9 at epoch 2 is not beaten in epochs 3 and 4: stop after 4 (a minimiser would stop at 3).
    assert len(history) == 4


# ---------------------------------------------------------------- built-in tasks vs oracles
def test_classification_accuracy_per_pixel_for_segmentation_shaped_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, 5, 4, generator=generator)
    labels = torch.randint(0, 3, (6, 5, 4), generator=generator)
    task = Classification(num_classes=3)
    metrics = task.metrics("test")
    for part in range(0, 6, 4):  # two uneven batches
        batch = (None, labels[part:part + 4])
        task.update(metrics, Output(torch.zeros(()), logits[part:part + 4]), batch)
    expected = (logits.argmax(1) == labels).double().mean()  # over the class axis, dim 1
    assert metrics["acc"].compute().item() == pytest.approx(expected.item())


def test_flip_test_averages_the_mirror_images_logits_in_evaluation_only(blob_data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))  # not mirror-symmetric
    x, y = blob_data.test[0][:16], blob_data.test[1][:16]
    task = create_task("classification", flip_test=True, num_classes=4)
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
        model.train()  # training: the image alone
        assert torch.equal(task.step(model, (x, y)).outputs, plain)
        model.eval()
        output = task.step(model, (x, y))
        torch.testing.assert_close(output.outputs, (plain + mirrored) / 2)
        torch.testing.assert_close(output.loss, F.cross_entropy((plain + mirrored) / 2, y))
        torch.testing.assert_close(task.predict(model, x), (plain + mirrored) / 2)
    # Through the Trainer: the reported accuracy is that of the averaged logits.
    metrics = dk.Trainer(task=task, progress=False).evaluate(model, blob_data.test_dataloader())
    with torch.no_grad():
        both = model(blob_data.test[0]) + model(blob_data.test[0].flip(-1))
    expected = (both.argmax(1) == blob_data.test[1]).double().mean().item()
    assert metrics["test_acc"] == pytest.approx(expected)


def test_flip_test_mirrors_a_label_map_back_before_averaging():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 3, 3, padding=1).eval()  # per-pixel logits
    x = torch.randn(2, 1, 6, 7)
    task = create_task("segmentation", flip_test=True, num_classes=3)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1)).flip(-1)) / 2
        torch.testing.assert_close(task.predict(model, x), expected.argmax(1))


def test_perplexity_from_the_loss_equals_torchmetrics_over_the_logits():
    from torchmetrics.text import Perplexity as Reference

    generator = torch.Generator().manual_seed(0)
    reference, ours = Reference(), Perplexity()
    for batch_size in (3, 5, 1):
        logits = torch.randn(batch_size, 7, 11, generator=generator)
        targets = torch.randint(0, 11, (batch_size, 7), generator=generator)
        reference.update(logits, targets)
        loss = LanguageModeling().loss(logits, targets)
        ours.update(loss, targets.numel())
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-5)


def test_mean_weights_batches_by_their_counts():
    mean = Mean()
    mean.update(torch.tensor(1.0), 3)
    mean.update(torch.tensor(4.0), torch.tensor(1))
    assert mean.compute().item() == pytest.approx((3 * 1.0 + 4.0) / 4)


# ---------------------------------------------------------------- registry and errors
def test_create_task_by_name_with_options_and_clear_errors():
    task = create_task("classification", label_smoothing=0.1)
    assert isinstance(task, Classification) and task.label_smoothing == 0.1
    assert task.options() == {"num_classes": None, "label_smoothing": 0.1, "flip_test": False}
    with pytest.raises(dk.DivekitError, match="unknown task 'detection-3d'; choose from"):
        create_task("detection-3d")
    with pytest.raises(dk.DivekitError, match="has no option smoothing; its options are"):
        create_task("classification", smoothing=0.1)
    with pytest.raises(dk.DivekitError, match=r"label_smoothing must be in \[0, 1\)"):
        create_task("classification", label_smoothing=1.5)
    with pytest.raises(dk.DivekitError, match="flip_test must be true or false, got 'yes'"):
        create_task("classification", flip_test="yes")


def test_a_registered_task_is_found_from_the_data():
    @register_task("test-sum-regression")
    @dataclass
    class SumRegression(Task):
        def loss(self, outputs, targets):
            return F.mse_loss(outputs.squeeze(1), targets.sum(1))

    x, y = regression_data(64, 0)
    data = DataModule("s", train=(x, y), test=(x, y), batch_size=16, task="test-sum-regression")
    torch.manual_seed(0)
    trainer = dk.Trainer(max_epochs=20, lr=0.05, progress=False)
    history = trainer.fit(nn.Linear(3, 1), data)
    assert isinstance(trainer.task, SumRegression)
    assert history.last["test_loss"] < 0.1 < history[0]["test_loss"]


def test_a_batch_a_task_cannot_read_is_one_clear_error():
    with pytest.raises(dk.DivekitError, match="expects \\(inputs, targets\\) batches, got a dict"):
        Classification(num_classes=2).count({"tokens": torch.zeros(2)})
    with pytest.raises(dk.DivekitError, match="evaluate needs a task"):
        dk.Trainer(progress=False).evaluate(nn.Linear(2, 2), [(torch.zeros(1, 2),)])


def test_fit_takes_plain_torch_dataloaders_and_shuffles_them_by_epoch():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    train, test = TensorDataset(*blobs(256)), TensorDataset(*blobs(64, sample_seed=1))
    # A DistributedSampler (one replica here) has set_epoch: the Trainer calls it every epoch.
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0)
    epochs_seen = []
    original = sampler.set_epoch
    sampler.set_epoch = lambda epoch: (epochs_seen.append(epoch), original(epoch))
    data = SimpleNamespace(
        task="classification", num_classes=4,
        train_dataloader=lambda: DataLoader(train, batch_size=32, sampler=sampler),
        val_dataloader=lambda: None,
        test_dataloader=lambda: DataLoader(test, batch_size=50))
    torch.manual_seed(0)
    trainer = dk.Trainer(max_epochs=3, lr=0.1, momentum=0.9, progress=False)
    history = trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), data)
    assert epochs_seen == [0, 1, 2]
    assert history.last["test_acc"] > 0.9


def test_regression_rmse_is_the_root_of_the_mean_squared_error_over_the_split():
    x, y = regression_data(61, 2)
    y = y[:, :1]
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    trainer = dk.Trainer(task="regression", progress=False)
    metrics = trainer.evaluate(model, dk.TensorLoader(x, y, batch_size=16))  # 16, 16, 16, 13
    with torch.no_grad():
        expected = ((model(x) - y) ** 2).mean().sqrt().item()
    assert metrics["test_rmse"] == pytest.approx(expected, rel=1e-5)
    assert metrics["test_loss"] == pytest.approx(expected ** 2, rel=1e-5)
