"""Fine-tuning helpers (section 14.2): freeze, parameter groups, head swap, weight loading."""

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

import divekit as dk
from divekit.engine import Callback
from divekit.engine.finetune import (
    apply_finetune,
    freeze,
    load_weights,
    param_groups,
    replace_head,
)
from divekit.errors import DivekitError
from tests.conftest import KillAtStartOf, small_cnn

# small_cnn(): 0 conv, 1 batch norm, 2 ReLU, 3 flatten, 4 dropout, 5 linear head


def test_freeze_returns_matches_and_a_typo_lists_real_names():
    model = small_cnn()
    assert freeze(model, ["0.*", "1.w*"]) == ["0.weight", "0.bias", "1.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "1.bias", "5.weight", "5.bias"]
    assert freeze(model, "0.*", unfreeze=True) == ["0.weight", "0.bias"]
    assert model[0].weight.requires_grad and not model[1].weight.requires_grad
    with pytest.raises(DivekitError, match=r"'features\.\*' matches no parameter.*0\.weight"):
        freeze(model, ["features.*"])


def test_frozen_parameters_stay_put_and_are_not_in_the_optimizer(blob_data, one_thread):
    model = small_cnn()
    freeze(model, ["0.*", "1.*"])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = dk.Trainer(max_epochs=1, lr=0.1, momentum=0.9, weight_decay=0.1, progress=False)
    trainer.fit(model, blob_data)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == name.startswith(("0.", "1.")), name
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(model[5].weight), id(model[5].bias)}
    # Running statistics are buffers: by default they keep adapting to the new data.
    assert not torch.equal(model[1].running_mean, torch.zeros(4))


def test_bn_eval_keeps_frozen_batch_norm_in_eval_mode_through_model_train():
    model = small_cnn()
    freeze(model, ["0.*", "1.*"], bn_eval=True)
    model.train()
    assert model.training and model[0].training and not model[1].training
    model(torch.randn(8, 1, 8, 8))
    assert torch.equal(model[1].running_mean, torch.zeros(4))  # statistics untouched
    clone = copy.deepcopy(model).train()
    assert not clone[1].training and clone[1] is not model[1]
    freeze(model, ["1.*"], unfreeze=True)
    assert model[1].training
    model.eval()
    model.train()
    assert model[1].training


def test_param_groups_cover_every_trainable_parameter_once():
    model = small_cnn()
    freeze(model, ["1.*"])
    groups = param_groups(model, 0.01, {"5.weight": 10, "5.*": 3, "0.bias": 0.5})  # first wins
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.1, 0.03, 0.005])
    assert [[p is q for p, q in zip(g["params"], expected, strict=True)] for g, expected in zip(
        groups, [[model[0].weight], [model[5].weight], [model[5].bias], [model[0].bias]],
        strict=True)] == [[True]] * 4
    assert param_groups(model, 0.2)[0]["params"] == [
        p for p in model.parameters() if p.requires_grad]
    with pytest.raises(DivekitError, match=r"'1\.\*' matches no trainable parameter"):
        param_groups(model, 0.1, {"1.*": 10})  # frozen: a multiplier would do nothing
    with pytest.raises(DivekitError, match="positive number"):
        param_groups(model, 0.1, {"5.*": 0})
    freeze(model, "*")
    with pytest.raises(DivekitError, match="no trainable parameters"):
        param_groups(model, 0.1)


class RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, trainer):
        self.lrs.append([group["lr"] for group in trainer.optimizer.param_groups])


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step"])
def test_lr_mult_keeps_the_head_ten_times_the_body_under_schedules(blob_data, schedule, one_thread):
    model, record = small_cnn(), RecordLR()
    trainer = dk.Trainer(max_epochs=2, lr=0.05, lr_mult={"5.*": 10}, momentum=0.9,
                         weight_decay=1e-3, schedule=schedule, warmup_epochs=0.5,
                         progress=False, callbacks=[record])
    trainer.fit(model, blob_data)
    body, head = trainer.optimizer.param_groups
    assert head["params"] == [model[5].weight, model[5].bias]
    assert body["weight_decay"] == head["weight_decay"] == 1e-3
    assert len(record.lrs) == 32
    for step in (0, 5, 7, 16, 30):
        body_lr, head_lr = record.lrs[step]
        assert head_lr == pytest.approx(10 * body_lr, rel=1e-9), step
    assert len({round(lrs[0], 12) for lrs in record.lrs}) > 2  # the schedule did change it
    assert max(lrs[1] for lrs in record.lrs) == pytest.approx(0.5, rel=1e-3)


def test_lr_mult_rejects_a_callable_optimizer():
    with pytest.raises(DivekitError, match="lr_mult needs a named optimizer"):
        dk.Trainer(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), lr_mult={"fc.*": 10})


def test_a_fine_tuning_run_resumes_exactly(blob_data, tmp_path, one_thread):
    def frozen_model():
        model = small_cnn()
        freeze(model, ["0.*"])
        return model

    settings = dict(max_epochs=3, lr=0.02, lr_mult={"5.*": 10}, momentum=0.9,
                    schedule="cosine", seed=1, progress=False)
    full = dk.Trainer(out_dir=tmp_path / "full", **settings)
    full_history = full.fit(frozen_model(), blob_data)
    with pytest.raises(KeyboardInterrupt):
        dk.Trainer(out_dir=tmp_path / "cut", callbacks=[KillAtStartOf(3)], **settings).fit(
            frozen_model(), blob_data)
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["trainer"]["lr_mult"] == {"5.*": 10}
    resumed = dk.Trainer(out_dir=tmp_path / "cut", **config["trainer"] | {"progress": False,
                                                                        "device": "cpu"})
    history = resumed.fit(frozen_model(), blob_data, resume=True)
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert history.column("test_loss") == full_history.column("test_loss")


@pytest.mark.parametrize("name, head", [
    ("resnet-cpu", "fc"), ("small-cnn", "13"), ("googlenet", "head.2"), ("lenet", "11"),
])
def test_replace_head_swaps_the_last_linear(name, head):
    torch.manual_seed(0)
    model = dk.create_model(name, num_classes=10)
    old = model.get_submodule(head)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head + ".")}
    assert replace_head(model, 3) == head
    new = model.get_submodule(head)
    assert new is not old and (new.in_features, new.out_features) == (old.in_features, 3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())
    if name == "resnet-cpu":
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_replace_head_needs_a_linear_and_a_class_count():
    with pytest.raises(DivekitError, match="no nn.Linear classifier"):
        replace_head(dk.create_model("nin"), 5)
    with pytest.raises(DivekitError, match="num_classes must be a positive integer"):
        replace_head(small_cnn(), 0)


def test_load_weights_reads_safetensors_and_state_dicts(tmp_path):
    source, target = small_cnn(), small_cnn()
    torch.nn.init.normal_(source[5].weight)
    source[1].running_var.fill_(2.5)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for file in ("w.safetensors", "w.pt"):
        report = load_weights(target := small_cnn(), tmp_path / file)
        assert report.loaded == list(source.state_dict()) and not report.missing
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (file, key)


def test_load_weights_takes_the_model_of_a_divekit_checkpoint(blob_data, tmp_path, one_thread):
    trainer = dk.Trainer(max_epochs=1, lr=0.1, out_dir=tmp_path, progress=False)
    trainer.fit(small_cnn(), blob_data)
    target = small_cnn(dropout=0.1)
    load_weights(target, tmp_path / "checkpoints" / "last.pt")
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def torchvision_resnet18_state_dict(num_classes=1000):
    """torchvision's resnet18 keys and shapes, from its published architecture."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def batch_norm(prefix, channels):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    batch_norm("bn1", 64)
    in_channels = 64
    for stage, channels in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (channels, in_channels, 3, 3)
            batch_norm(f"{prefix}.bn1", channels)
            shapes[f"{prefix}.conv2.weight"] = (channels, channels, 3, 3)
            batch_norm(f"{prefix}.bn2", channels)
            if block == 0 and stage > 1:
                shapes[f"{prefix}.downsample.0.weight"] = (channels, in_channels, 1, 1)
                batch_norm(f"{prefix}.downsample.1", channels)
            in_channels = channels
    shapes |= {"fc.weight": (num_classes, 512), "fc.bias": (num_classes,)}
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) if shape else torch.tensor(7)
            for key, shape in shapes.items()}


def test_torchvision_resnet18_weights_load_strictly(tmp_path):
    weights = torchvision_resnet18_state_dict()
    assert len(weights) == 122  # torchvision's resnet18 has 62 parameters and 60 buffers
    torch.save(weights, tmp_path / "resnet18.pth")
    model = dk.create_model("resnet18", num_classes=1000, in_channels=3)
    report = load_weights(model, tmp_path / "resnet18.pth")
    assert len(report.loaded) == 122
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key

    # Into a 10-class model: the 1000-class head does not fit; skip it or swap it later.
    small = dk.create_model("resnet18", num_classes=10, in_channels=3)
    with pytest.raises(DivekitError, match=r"fc\.weight: file \(1000, 512\), model \(10, 512\)"
                                           r".*skip=\['fc\.\*'\].*replace_head"):
        load_weights(small, tmp_path / "resnet18.pth")
    fc_before = small.fc.weight.clone()
    report = load_weights(small, tmp_path / "resnet18.pth", skip=["fc.*"])
    assert report.skipped == ["fc.bias", "fc.weight"] and len(report.loaded) == 120
    assert torch.equal(small.fc.weight, fc_before)
    assert torch.equal(small.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])

    # The other order: load all, then a fresh head, at 10x the rate.
    model = dk.create_model("resnet18", num_classes=1000, in_channels=3)
    head = apply_finetune(model, weights=tmp_path / "resnet18.pth", num_classes=10,
                          freeze_patterns=["conv1.*", "bn1.*", "layer1.*"])
    assert head == "fc" and model.fc.out_features == 10
    assert not model.layer1[0].bn1.bias.requires_grad and model.layer2[0].bn1.bias.requires_grad
    assert torch.equal(model.layer2[0].downsample[0].weight,
                       weights["layer2.0.downsample.0.weight"])


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = small_cnn().state_dict()
    del state["5.bias"]
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(DivekitError, match=r"1 model keys are not in the file \(5\.bias\); "
                                           r"1 file keys are not in the model \(extra\.weight\)"):
        load_weights(small_cnn(), tmp_path / "w.pt")
    report = load_weights(small_cnn(), tmp_path / "w.pt", strict=False)
    assert report.missing == ["5.bias"] and report.unexpected == ["extra.weight"]
    with pytest.raises(DivekitError, match="'head.*' matches no key"):
        load_weights(small_cnn(), tmp_path / "w.pt", skip=["head.*"])


def test_head_patterns_load_agreeing_heads_and_leave_the_others(tmp_path):
    source = small_cnn()
    state = source.state_dict()
    state["pretrain_head.weight"] = torch.ones(3)  # a head the target model lacks
    state["5.weight"] = torch.zeros(7, state["5.weight"].shape[1])  # another class count
    torch.save(state, tmp_path / "w.pt")
    target = small_cnn()
    fresh_head = target[5].weight.detach().clone()
    report = load_weights(target, tmp_path / "w.pt", heads=["pretrain_head.*", "5.*"])
    assert report.skipped == ["5.weight", "pretrain_head.weight"]
    assert torch.equal(target[5].weight, fresh_head)  # shapes disagree: left as initialised
    assert torch.equal(target[5].bias, source[5].bias)  # agrees: loaded
    assert torch.equal(target[0].weight, source[0].weight)


def test_adapt_state_dict_renames_the_file_before_the_checks(tmp_path):
    source = small_cnn()
    torch.save({f"old.{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.pt")
    target = small_cnn()
    target.adapt_state_dict = lambda state: {k.removeprefix("old."): v for k, v in state.items()}
    load_weights(target, tmp_path / "w.pt")
    assert torch.equal(target[5].weight, source[5].weight)


class NotWeights:
    pass


def test_bad_files_get_a_clear_error_and_nothing_is_unpickled(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"neither a zip archive nor a pickle")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{oops")
    torch.save({"a": 1}, tmp_path / "dict.pt")
    torch.save(NotWeights(), tmp_path / "object.pt")
    for name, message in [("junk.pt", "could not be read"), ("junk.safetensors",
                          "could not be read"), ("dict.pt", "not a state dict"),
                          ("object.pt", "could not be read"), ("none.pt", "no weights file")]:
        with pytest.raises(DivekitError, match=message):
            load_weights(small_cnn(), tmp_path / name)
