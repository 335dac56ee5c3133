"""amp="auto" / channels_last="auto": the choice rule, the probe, the cache and the Trainer."""

import json
import random

import numpy as np
import pytest
import torch

import divekit as dk
from divekit.cli import _apply_flags, build_parser
from divekit.config import RunConfig
from divekit.engine import autotune
from divekit.engine.autotune import ProbeResult, candidates, choose
from divekit.engine.task import create_task
from divekit.errors import DivekitError
from tests.conftest import KillAtStartOf, small_cnn

FP32, BF16, FP32_CL, BF16_CL = ("off", False), ("bf16", False), ("off", True), ("bf16", True)
FP16, FP16_CL = ("fp16", False), ("fp16", True)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("DIVEKIT_CACHE", str(tmp_path / "cache"))


class FakeClock:
    """A timer whose steps take the given seconds, in the order the probe times them."""

    def __init__(self, step_seconds):
        self.steps, self.now, self.calls = list(step_seconds), 0.0, 0

    def __call__(self):
        if self.calls % 2:  # the end of a step
            self.now += self.steps.pop(0)
        self.calls += 1
        return self.now


def clock_for(*per_candidate, warmup=1, steps=3):
    """Every step of candidate i takes per_candidate[i] seconds (warm-up: 100 s, ignored)."""
    return FakeClock([s for seconds in per_candidate for s in [100.0] * warmup + [seconds] * steps])


# ------------------------------------------------------------------ the choice rule
def test_a_lower_precision_must_be_clearly_faster_to_be_chosen():
    slow = choose({FP32: 1.0, BF16: 12.1}, where="this CPU (X)")
    assert slow.choice == FP32
    assert slow.reason == "bf16: 12.10x the time of fp32 on this CPU (X), staying in fp32"
    assert choose({FP32: 1.0, BF16: 0.95}).choice == FP32  # 5% better: not worth bf16
    assert choose({FP32: 1.0, BF16: 0.85}).choice == BF16
    fast = choose({FP32: 1.0, BF16: 0.5, FP32_CL: 0.6, BF16_CL: 0.41}, where="this CPU (X)")
    assert fast.choice == BF16_CL
    assert fast.reason == "bf16 + channels_last: 0.41x the time of fp32 on this CPU (X), using it"
    assert fast.timings == {"fp32": 1.0, "bf16": 0.5, "fp32 + channels_last": 0.6,
                            "bf16 + channels_last": 0.41}


def test_ties_go_to_the_baseline_then_to_the_earlier_candidate():
    assert choose({FP32: 1.0, BF16: 1.0}).choice == FP32
    for _ in range(3):  # deterministic
        assert choose({FP32: 1.0, BF16: 0.5, FP32_CL: 0.5}).choice == BF16
    assert choose({FP32_CL: 1.0, BF16_CL: 0.2}, baseline=FP32_CL).choice == BF16_CL
    assert choose({FP32: 1.0}).choice == FP32


def test_candidates_follow_the_settings_and_the_batch():
    images, vectors = torch.zeros(2, 1, 8, 8), torch.zeros(2, 5)
    assert candidates(CPU, (images, images), "auto", "auto") == [FP32, BF16, FP16, FP32_CL,
                                                                 BF16_CL, FP16_CL]
    assert candidates(CPU, (vectors, vectors), "auto", "auto") == [FP32, BF16, FP16]
    assert candidates(CPU, (images,), "off", "auto") == [FP32, FP32_CL]
    assert candidates(CPU, (images,), "auto", True) == [FP32_CL, BF16_CL, FP16_CL]


# ------------------------------------------------------------------ the probe
def test_probe_choice_follows_its_timings_and_leaves_model_and_generators_alone(blob_data):
    model, task = small_cnn(), create_task("classification")
    batch = (blob_data.train[0][:32], blob_data.train[1][:32])
    options = candidates(CPU, batch, "auto", "auto")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    seconds = (1.0, 3.0, 2.5, 0.5, 2.0, 1.5)
    results = [autotune.probe(model, batch, task, CPU, options, timer=clock_for(*seconds))
               for _ in range(2)]
    assert [r.choice for r in results] == [FP32_CL, FP32_CL]
    assert results[0].timings == {"fp32": 1.0, "bf16": 3.0, "fp16": 2.5,
                                  "fp32 + channels_last": 0.5, "bf16 + channels_last": 2.0,
                                  "fp16 + channels_last": 1.5}
    for name, tensor in model.state_dict().items():  # batch-norm statistics included
        assert torch.equal(tensor, weights[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


# ------------------------------------------------------------------ the Trainer
class CountingProbe:
    """Stands in for autotune.probe: counts calls and returns a fixed choice."""

    def __init__(self, choice):
        self.choice, self.calls = choice, 0

    def __call__(self, model, batch, task, device, options, **kwargs):
        self.calls += 1
        return choose({options[0]: 1.0, self.choice: 0.5}, where="the test machine")


def test_auto_run_uses_and_records_the_choice(blob_data, tmp_path, monkeypatch, capsys):
    fake = CountingProbe(BF16_CL)
    monkeypatch.setattr(autotune, "probe", fake)
    trainer = dk.Trainer(max_epochs=1, lr=0.1, amp="auto", channels_last="auto",
                         out_dir=tmp_path / "run")
    history = trainer.fit(small_cnn(), blob_data)
    assert fake.calls == 1 and len(history) == 1
    assert (trainer.amp, trainer.channels_last) == ("bf16", True)
    assert trainer.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    out = capsys.readouterr().out
    assert ("autotune: bf16 + channels_last: 0.50x the time of fp32 on the test machine, "
            "using it\n") in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["trainer"]["amp"] == "auto" and config["trainer"]["channels_last"] == "auto"
    assert config["autotune"]["amp"] == "bf16" and config["autotune"]["channels_last"] is True
    assert config["autotune"]["timings"] == {"fp32": 1.0, "bf16 + channels_last": 0.5}
    # config.json still reads back as a run config (the record is not a setting).
    assert RunConfig.from_dict({"model": "small-cnn", **config}).trainer.amp == "auto"


def test_choosing_fp32_gives_bitwise_the_results_of_a_plain_fp32_run(blob_data):
    plain = dk.Trainer(max_epochs=1, lr=0.1, progress=False)
    plain.fit(small_cnn(), blob_data)
    auto = dk.Trainer(max_epochs=1, lr=0.1, amp="auto", channels_last="auto", progress=False)
    real_probe = autotune.probe
    # fp32 fastest: the probe ran (drawing dropout masks, updating batch-norm statistics on
    # its copies) and must have left nothing behind.
    auto_probe = lambda *a, **k: real_probe(*a, **k, timer=clock_for(1.0, 2.0, 3.0, 1.5, 2.5, 3.5))  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(autotune, "probe", auto_probe)
        auto.fit(small_cnn(), blob_data)
    assert auto.autotune.choice == FP32
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, auto.model.state_dict()[name]), name


def test_resume_reuses_the_recorded_choice_without_probing(blob_data, tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "probe", CountingProbe(BF16))
    settings = dict(max_epochs=2, lr=0.1, amp="auto", progress=False)
    full = dk.Trainer(**settings, out_dir=tmp_path / "full")
    full.fit(small_cnn(), blob_data)
    with pytest.raises(KeyboardInterrupt):
        dk.Trainer(**settings, out_dir=tmp_path / "cut",
                   callbacks=[KillAtStartOf(epoch=2)]).fit(small_cnn(), blob_data)

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run must not probe")

    monkeypatch.setattr(autotune, "probe", no_probe)
    autotune.cache_path().unlink()  # not from the cache either: from the checkpoint
    resumed = dk.Trainer(**settings, out_dir=tmp_path / "cut")
    resumed.fit(small_cnn(), blob_data, resume=True)
    assert resumed.amp == "bf16"
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_cached_choice_skips_the_probe(blob_data, monkeypatch, capsys):
    fake = CountingProbe(BF16)
    monkeypatch.setattr(autotune, "probe", fake)
    for _ in range(2):
        dk.Trainer(max_epochs=1, lr=0.1, amp="auto", limit_batches=2).fit(small_cnn(), blob_data)
    assert fake.calls == 1
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("autotune: ")]
    assert len(lines) == 2 and not lines[0].endswith("(cached)")
    assert lines[1] == lines[0] + " (cached)"
    entries = json.loads(autotune.cache_path().read_text())
    assert [entry["amp"] for entry in entries.values()] == ["bf16"]


def test_a_corrupt_cache_is_measured_again_and_rewritten(blob_data, monkeypatch):
    fake = CountingProbe(BF16)
    monkeypatch.setattr(autotune, "probe", fake)
    path = autotune.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    trainer = dk.Trainer(max_epochs=1, lr=0.1, amp="auto", limit_batches=2, progress=False)
    trainer.fit(small_cnn(), blob_data)
    assert fake.calls == 1 and trainer.amp == "bf16"
    assert [entry["amp"] for entry in json.loads(path.read_text()).values()] == ["bf16"]


# ------------------------------------------------------------------ settings and flags
def test_wrong_settings_are_one_clear_error():
    with pytest.raises(DivekitError, match="unknown amp mode 'fast'; choose from: off, bf16, "
                                           "fp16, auto"):
        dk.Trainer(amp="fast", device="cpu")
    with pytest.raises(DivekitError, match="channels_last must be true, false or 'auto'"):
        dk.Trainer(channels_last="yes", device="cpu")


def test_amp_auto_flag_also_measures_the_memory_format_unless_it_is_given():
    parser = build_parser()
    args = parser.parse_args(["train", "small-cnn", "--amp", "auto"])
    assert _apply_flags(RunConfig("small-cnn"), args).trainer.channels_last == "auto"
    args = parser.parse_args(["train", "small-cnn", "--amp", "auto", "--channels-last"])
    assert _apply_flags(RunConfig("small-cnn"), args).trainer.channels_last is True
    assert ProbeResult.from_dict(ProbeResult(BF16_CL, {"bf16": 1.0}, "r").to_dict()).choice \
        == BF16_CL


def test_a_hopeless_candidate_is_timed_once(blob_data):
    model, task = small_cnn(), create_task("classification")
    batch = (blob_data.train[0][:32], blob_data.train[1][:32])
    # fp32: warm-up + 3 steps of 1 s; bf16 (12 s, over 4x fp32's): warm-up + 1 step only.
    clock = FakeClock([100.0, 1.0, 1.0, 1.0, 100.0, 12.0, 5.0, 5.0])
    result = autotune.probe(model, batch, task, CPU, [FP32, BF16], timer=clock)
    assert result.timings == {"fp32": 1.0, "bf16": 12.0} and result.choice == FP32
    assert clock.steps == [5.0, 5.0]  # never asked for


def test_eval_of_an_auto_run_uses_the_precision_it_trained_in(tmp_path, monkeypatch):
    from divekit import experiment
    from divekit.config import TrainerSettings

    monkeypatch.setattr(autotune, "probe", CountingProbe(BF16_CL))
    config = RunConfig("small-cnn", "digits", 64, trainer=TrainerSettings(
        max_epochs=1, lr=0.1, amp="auto", channels_last="auto", limit_batches=2, device="cpu"))
    experiment.train(config, tmp_path / "run", progress=False)
    trainer, _, _ = experiment.load_run(tmp_path / "run")
    assert (trainer.amp, trainer.channels_last) == ("bf16", True)


# ------------------------------------------------------------------ compile="auto"
def test_compile_pays_only_when_faster_steps_repay_twice_the_compiling():
    verdict = autotune.compile_verdict
    assert verdict(1.0, 0.5, 30.0, 1000) == (
        True, "compile: 0.50x the step time, saves ~500 s over 1,000 steps for ~60 s of "
              "compiling, compiling")
    assert verdict(1.0, 0.5, 30.0, 100) == (  # 50 s saved, 60 s spent
        False, "compile: 0.50x the step time, saves ~50 s over 100 steps for ~60 s of "
               "compiling, not compiling")
    assert verdict(1.0, 0.95, 1.0, 10**6)[0] is False  # within the margin: not worth it
    assert verdict(1.0, 1.25, 10.0, 400) == (
        False, "compile: 1.25x the step time, loses ~100 s over 400 steps for ~20 s of "
               "compiling, not compiling")


def test_probe_compile_times_a_compiled_copy_and_leaves_the_model_alone(blob_data,
                                                                        monkeypatch):
    model, task = small_cnn(), create_task("classification")
    batch = (blob_data.train[0][:32], blob_data.train[1][:32])
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    before = torch.get_rng_state()
    clock = FakeClock([30.0, 1.0, 3.0, 2.0])
    assert autotune.probe_compile(model, batch, task, CPU, FP32, timer=clock) == (30.0, 2.0)
    assert len(compiled) == 1 and compiled[0] is not model
    assert all(torch.equal(t, weights[k]) for k, t in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), before)


def fp32_probe(model, batch, task, device, options, **kwargs):
    """Stands in for autotune.probe: fp32 (the only candidate) takes 10 s a step."""
    return choose({options[0]: 10.0}, where="the test machine")


class FakeCompileProbe:
    """Stands in for autotune.probe_compile: counts calls, returns (first call, step)."""

    def __init__(self, first_call, step):
        self.result, self.calls = (first_call, step), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.result


def test_compile_auto_compiles_a_long_enough_run_and_records_it(blob_data, tmp_path,
                                                                monkeypatch, capsys):
    fake = FakeCompileProbe(30.0, 5.0)
    compiled = []
    monkeypatch.setattr(autotune, "probe", fp32_probe)
    monkeypatch.setattr(autotune, "probe_compile", fake)
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    # 16 steps of 10 s, 5 s each compiled: saves 80 s for 2 x 30 s of compiling.
    trainer = dk.Trainer(max_epochs=1, lr=0.1, compile="auto", out_dir=tmp_path / "run")
    trainer.fit(small_cnn(), blob_data)
    assert trainer.compile is True and compiled == [trainer.model] and fake.calls == 1
    reason = ("fp32: no other candidate to try on the test machine; compile: 0.50x the step "
              "time, saves ~80 s over 16 steps for ~60 s of compiling, compiling")
    assert f"autotune: {reason}\n" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["trainer"]["compile"] == "auto"
    assert config["autotune"] == {"amp": "off", "channels_last": False, "compile": True,
                                  "timings": {"fp32": 10.0, "first compiled call": 30.0,
                                              "compiled fp32": 5.0}, "reason": reason}
    # A run of 12 steps reads the timings from the cache and is not worth compiling.
    shorter = dk.Trainer(max_epochs=1, lr=0.1, compile="auto", limit_batches=12,
                         progress=False)
    shorter.fit(small_cnn(), blob_data)
    assert fake.calls == 1 and shorter.compile is False and len(compiled) == 1
    assert shorter.autotune.reason.endswith("saves ~60 s over 12 steps for ~60 s of "
                                            "compiling, not compiling")


def test_compile_auto_does_not_try_a_short_run_or_a_model_that_fails(blob_data, monkeypatch):
    monkeypatch.setattr(autotune, "probe", fp32_probe)
    fake = FakeCompileProbe(30.0, 5.0)
    monkeypatch.setattr(autotune, "probe_compile", fake)
    short = dk.Trainer(max_epochs=1, lr=0.1, compile="auto", limit_batches=11, progress=False)
    short.fit(small_cnn(), blob_data)
    assert fake.calls == 0 and short.compile is False
    assert short.autotune.reason.endswith("compile: not tried, the run is ~110 s of steps, too "
                                          "short to repay compiling")
    monkeypatch.setattr(autotune, "probe_compile", lambda *args, **kwargs: None)
    failing = dk.Trainer(max_epochs=2, lr=0.1, compile="auto", progress=False)
    failing.fit(small_cnn(), blob_data)
    assert failing.compile is False
    assert failing.autotune.reason.endswith("compile: failed here, not compiling")


def test_resume_keeps_the_recorded_compile_choice():
    trainer = dk.Trainer(compile="auto", device="cpu")
    record = ProbeResult(FP32, {"fp32": 1.0}, "r", compile=True).to_dict()
    assert trainer.use_recorded_choice({"config": {"autotune": record}}) and trainer.compile
    del record["compile"]  # written before compile was measured
    assert trainer.use_recorded_choice({"config": {"autotune": record}})
    assert trainer.compile is False
    fixed = dk.Trainer(compile=True, amp="auto", device="cpu")
    assert fixed.use_recorded_choice({"config": {"autotune": record}}) and fixed.compile


def test_compile_settings_and_flags():
    with pytest.raises(DivekitError, match="compile must be true, false or 'auto', got 'yes'"):
        dk.Trainer(compile="yes", device="cpu")
    parser = build_parser()
    for flags, expected in ((["--compile"], True), (["--compile", "auto"], "auto"),
                            (["--compile", "on"], True), (["--amp", "auto"], "auto"),
                            (["--amp", "auto", "--compile"], True),
                            (["--amp", "auto", "--compile", "off"], False), ([], False)):
        args = parser.parse_args(["train", "small-cnn", *flags])
        assert _apply_flags(RunConfig("small-cnn"), args).trainer.compile == expected, flags


@pytest.mark.slow
def test_compile_auto_measures_a_real_compile_and_follows_its_verdict(blob_data, monkeypatch):
    monkeypatch.setattr(autotune, "COMPILE_WORTH", 0.0)  # a tiny run: try it anyway
    trainer = dk.Trainer(max_epochs=1, lr=0.1, compile="auto", progress=False)
    trainer.fit(small_cnn(dropout=0.0), blob_data)
    timings = trainer.autotune.timings
    assert timings["first compiled call"] > timings["compiled fp32"] > 0
    use, verdict = autotune.compile_verdict(timings["fp32"], timings["compiled fp32"],
                                            timings["first compiled call"], 16)
    assert trainer.compile is use and trainer.autotune.reason.endswith(verdict)
    assert trainer.history[-1]["test_acc"] > 0.9


GRAPH_BREAK_SCRIPT = """
import sys, torch
from divekit.engine import autotune
from divekit.engine.task import create_task

class BreaksTheGraph(torch.nn.Module):  # a data-dependent branch: compile splits the graph
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 4)

    def forward(self, x):
        y = self.linear(x.flatten(1))
        if bool((y > 1e6).any()):
            y = y * 0
        return y

batch = (torch.randn(8, 1, 8, 8), torch.randint(4, (8,)))
if sys.argv[1] == "probe":
    print(autotune.probe_compile(BreaksTheGraph(), batch, create_task("classification"),
                                 torch.device("cpu"), ("off", False)))
else:
    torch.compile(BreaksTheGraph())(batch[0]).sum().backward()
"""


@pytest.mark.slow
def test_the_compile_probe_keeps_dynamos_graph_break_advice_to_itself(tmp_path):
    # Separate processes: dynamo gives its advice once per process.
    import subprocess
    import sys

    script = tmp_path / "breaks.py"
    script.write_text(GRAPH_BREAK_SCRIPT)
    by_hand, probed = (subprocess.run([sys.executable, str(script), how], capture_output=True,
                                      text=True, check=True) for how in ("hand", "probe"))
    assert "Graph break" in by_hand.stderr
    assert "Graph break" not in probed.stderr and probed.stdout.startswith("(")
