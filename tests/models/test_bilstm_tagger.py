"""10.4's bidirectional LSTM as a tagger: packing, both directions, and learning POS tags."""

import dataclasses

import pytest
import torch

import divekit as dk
from divekit import experiment
from divekit.errors import DivekitError
from divekit.models.rnn import BiLSTMTagger
from divekit.recipes import get_recipe
from tests.conftest import real_data_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def tagger(**options):
    torch.manual_seed(0)
    return BiLSTMTagger(**{"vocab_size": 20, "num_classes": 5, "embedding_dim": 6,
                           "hidden_size": 4, **options}).double().eval()


def test_registered_for_token_classification_with_sizes_from_the_data():
    info = dk.model_info("bilstm-tagger")
    assert (info.family, info.task) == ("rnn", "token-classification")
    model = dk.create_model("bilstm-tagger", vocab_size=50, num_classes=3)
    tokens = torch.randint(50, (2, 7))
    assert model(tokens, torch.zeros_like(tokens), torch.tensor([7, 4])).shape == (2, 7, 3)


def oracle(model, tokens):
    """Both directions written out on the model's own weights, for one unpadded sequence."""
    lstm = model.rnn
    inputs = model.embedding.weight[tokens]
    states = []
    for suffix in ("_l0", "_l0_reverse"):
        w_ih, w_hh, b_ih, b_hh = (getattr(lstm, f"{kind}{suffix}")
                                  for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        sequence = inputs.flip(0) if suffix.endswith("reverse") else inputs
        h = c = torch.zeros(lstm.hidden_size, dtype=inputs.dtype)
        hs = []
        for x in sequence:
            i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
        hs = torch.stack(hs)
        states.append(hs.flip(0) if suffix.endswith("reverse") else hs)
    return torch.cat(states, -1) @ model.output.weight.T + model.output.bias


def test_padded_batches_give_each_sequence_its_own_outputs_and_gradients():
    model = tagger()
    lengths = [6, 3, 1]
    sequences = [torch.randint(1, 20, (n,), generator=torch.Generator().manual_seed(n))
                 for n in lengths]
    batch = torch.full((3, 6), 7)  # a padding id that is a real token: it must not leak in
    for row, sequence in zip(batch, sequences, strict=True):
        row[:len(sequence)] = sequence
    logits = model(batch, torch.zeros_like(batch), torch.tensor(lengths))
    projection = torch.randn(3, 6, 5, dtype=torch.float64)
    mask = torch.arange(6) < torch.tensor(lengths)[:, None]
    grads = torch.autograd.grad((logits * projection)[mask].sum(), list(model.parameters()))
    expected = [oracle(model, sequence) for sequence in sequences]
    for row, n in enumerate(lengths):
        torch.testing.assert_close(logits[row, :n], expected[row])
    expected_grads = torch.autograd.grad(
        sum((out * projection[row, :len(out)]).sum() for row, out in enumerate(expected)),
        list(model.parameters()))
    for name, grad, expected_grad in zip([n for n, _ in model.named_parameters()], grads,
                                         expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, msg=name)
    # Without the lengths, the backward direction reads the padding first: other outputs.
    unpacked = model(batch)
    assert not torch.allclose(unpacked[1, :3], expected[1])


def test_a_later_token_changes_the_tags_before_it():
    model = tagger()
    tokens = torch.randint(1, 20, (1, 8), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[0, 6] = (tokens[0, 6] + 1) % 20
    before, after = model(tokens), model(changed)
    assert not torch.allclose(before[0, :6], after[0, :6])  # the backward direction carries it
    torch.testing.assert_close(model.rnn(model.embedding(tokens.T))[0][:6, 0, :4],
                               model.rnn(model.embedding(changed.T))[0][:6, 0, :4])


def test_bad_settings_and_inputs_are_one_clear_error():
    with pytest.raises(DivekitError, match="hidden_size"):
        BiLSTMTagger(10, 3, hidden_size=0)
    with pytest.raises(DivekitError, match=r"dropout must be in \[0, 1\)"):
        BiLSTMTagger(10, 3, dropout=1.0)
    with pytest.raises(DivekitError, match=r"int64 tensor of token indices of shape"):
        tagger()(torch.zeros(2, 3))


@pytest.mark.slow
def test_the_recipe_learns_part_of_speech_tags_in_two_epochs(tmp_path):
    # 2 of the recipe's 10 epochs (the whole run: test word accuracy 0.925 in ~55 s); the
    # commonest tag (NOUN) is 17% of the words.
    config = get_recipe("bilstm-ewt-pos").run_config()
    config.data_dir = str(real_data_dir("ud-english-ewt"))
    config.trainer = dataclasses.replace(config.trainer, max_epochs=2)
    history, test = experiment.train(config, tmp_path, progress=False)
    assert test["test_acc"] >= 0.85, history
