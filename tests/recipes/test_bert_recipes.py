"""BERT end to end: pretraining learns (masked words beat always guessing the commonest one),
``bert-encode`` shows context-dependent vectors, ``--weights RUN`` starts fine-tuning from the
pretrained encoder with the run's tokenizer, and each fine-tuning task learns on real data."""

import collections
import dataclasses
import json

import pytest
import torch

from divekit import cli, experiment
from divekit.config import RunConfig
from divekit.recipes import get_recipe
from tests.conftest import real_data_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """The book's recipe at a quarter of its batch for 60 steps (one epoch of valid.txt)."""
    config = get_recipe("bert-pretrain-wikitext-book").run_config()
    config.batch_size = 128
    config.data_dir = str(real_data_dir("wikitext-2"))
    config.trainer = dataclasses.replace(config.trainer, max_steps=48)
    out = tmp_path_factory.mktemp("bert-pretrain")
    _, test = experiment.train(config, out, progress=False)
    return out, test


def test_pretraining_beats_guessing_the_commonest_masked_word(pretrain_run):
    run_dir, test = pretrain_run
    _, data, _ = experiment.load_run(run_dir)
    labels = torch.cat([batch[3][batch[3] != -100] for batch in data.test_dataloader()])
    commonest = collections.Counter(labels.tolist()).most_common(1)[0][1] / len(labels)
    assert test["test_mlm_acc"] > commonest + 0.03, (test, commonest)
    assert test["test_mlm"] < 6.5  # from ln(4,211) = 8.3 at the start


def test_the_two_losses_are_logged_per_step(pretrain_run):
    run_dir, _ = pretrain_run
    rows = (run_dir / "steps.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step", "epoch", "loss", "mlm", "nsp"]
    assert len(rows) == 1 + 48
    first, last = (dict(zip(rows[0].split(","), map(float, row.split(",")), strict=True))
                   for row in (rows[1], rows[-1]))
    assert first["loss"] == pytest.approx(first["mlm"] + first["nsp"], rel=1e-5)
    assert last["mlm"] < first["mlm"] - 1
    assert (run_dir / "steps.png").stat().st_size > 0
    assert (run_dir / "tokenizer.json").is_file()


def test_bert_encode_gives_a_word_other_vectors_in_other_contexts(pretrain_run, capsys):
    run_dir, _ = pretrain_run
    assert cli.main(["bert-encode", str(run_dir), "a crane is flying",
                     "a crane driver came ||| he just left"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1: <cls> a crane is flying <sep>")
    assert lines[1].startswith("2: <cls> a crane driver came <sep> he just left <sep>")
    similarity = {line.split()[0]: float(line.split()[-1]) for line in lines[2:]}
    for token in ("'<cls>'", "'crane'", "'a'"):
        assert 0 < similarity[token] < 0.999, lines


def test_bert_encode_refuses_a_run_of_another_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model": "lenet", "data": "digits"}))
    assert cli.main(["bert-encode", str(tmp_path), "a crane"]) == 2
    assert "not a BERT model" in capsys.readouterr().err


def test_fine_tuning_starts_from_the_pretrained_encoder_and_its_tokenizer(pretrain_run):
    run_dir, _ = pretrain_run
    config = experiment.start_from_run(RunConfig("bert-classifier", "sst-2", 64), run_dir)
    assert config.data_options["tokenizer"] == str((run_dir / "tokenizer.json").resolve())
    assert config.model_options == {"size": "small"}
    config.data_dir = str(real_data_dir("sst-2"))
    data, model = experiment.build(config)
    pretrained = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    own = model.state_dict()
    encoder = [key for key in own if key.startswith("bert.")]
    assert len(encoder) > 30
    for key in encoder:
        assert torch.equal(own[key], pretrained[key]), key
    assert own["classifier.weight"].shape == (2, 128)
    embeddings = pretrained["bert.embeddings.word_embeddings.weight"]
    assert data.tokenizer.vocab_size == embeddings.shape[0]


def run_finetune(name, tmp_path, data, **trainer):
    config = get_recipe(name).run_config()
    config.data_dir = str(real_data_dir(data))
    config.trainer = dataclasses.replace(config.trainer, **trainer)
    return experiment.train(config, tmp_path, progress=False)
