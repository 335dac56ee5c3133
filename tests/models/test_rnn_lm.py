"""Recurrent language models (9.6, 10.1-10.4) on the built-in layers, and text generation."""

import math

import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.data import load_data
from divekit.data.text import build_language_model
from divekit.errors import DivekitError
from divekit.models import rnn  # noqa: F401  (registers the language models)
from divekit.models.rnn import RNNLanguageModel
from divekit.text.generate import choose_token, generate
from divekit.text.vocab import Vocab

f64 = torch.float64
LMS = ["rnn-lm", "gru-lm", "lstm-lm", "deep-gru-lm"]
# name -> (gates per cell, layers, directions)
LAYOUTS = {"rnn-lm": (1, 1, 1), "gru-lm": (3, 1, 1), "lstm-lm": (4, 1, 1),
           "deep-gru-lm": (3, 2, 1)}


pytestmark = pytest.mark.usefixtures("one_thread")


def tokens(batch, steps, vocab_size, seed=0):
    return torch.randint(vocab_size, (batch, steps), generator=torch.Generator().manual_seed(seed))


def model64(seed=0, **options):
    torch.manual_seed(seed)
    return RNNLanguageModel(**options).double()


# --- Oracle: the course's recurrences written out on the model's own weights ---------------

def cell_oracle(cell, x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One time step of the RNN / GRU / LSTM equations (PyTorch's gate order)."""
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    if cell == "rnn":
        return torch.tanh(gi + gh), c
    if cell == "gru":
        (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, -1), gh.chunk(3, -1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        n = torch.tanh(ni + r * nh)
        return (1 - z) * n + z * h, c
    i, f, g, o = (gi + gh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def oracle_logits(model, x):
    """Stacked layers, each run forwards (and backwards when bidirectional), then the output."""
    rnn_layer = model.rnn
    inputs = (F.one_hot(x, model.vocab_size).to(f64) if model.embedding is None
              else model.embedding.weight[x])
    batch, steps = x.shape
    for layer in range(rnn_layer.num_layers):
        outputs = []
        for reverse in range(2 if model.bidirectional else 1):
            suffix = f"_l{layer}" + ("_reverse" if reverse else "")
            weights = [getattr(rnn_layer, f"{kind}{suffix}")
                       for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            seq = inputs.flip(1) if reverse else inputs
            h = c = torch.zeros(batch, rnn_layer.hidden_size, dtype=f64)
            hs = []
            for t in range(steps):
                h, c = cell_oracle(model.cell, seq[:, t], h, c, *weights)
                hs.append(h)
            hs = torch.stack(hs, 1)
            outputs.append(hs.flip(1) if reverse else hs)
        inputs = torch.cat(outputs, -1)
    return inputs @ model.output.weight.T + model.output.bias


@pytest.mark.parametrize("cell,num_layers,bidirectional,embedding_dim,batch", [
    ("rnn", 1, False, None, 2), ("gru", 2, False, None, 3), ("lstm", 1, True, None, 1),
    ("lstm", 2, False, 5, 2), ("gru", 1, True, 5, 2), ("rnn", 2, True, None, 1),
])
def test_forward_and_gradients_match_the_written_out_recurrence(
    cell, num_layers, bidirectional, embedding_dim, batch
):
    model = model64(vocab_size=7, cell=cell, hidden_size=4, num_layers=num_layers,
                    bidirectional=bidirectional, embedding_dim=embedding_dim)
    x = tokens(batch, 5, 7)
    params = list(model.parameters())
    projection = torch.randn(batch, 5, 7, dtype=f64, generator=torch.Generator().manual_seed(1))
    logits = model(x)
    expected = oracle_logits(model, x)
    torch.testing.assert_close(logits, expected)
    grads = torch.autograd.grad((logits * projection).sum(), params)
    expected_grads = torch.autograd.grad((expected * projection).sum(), params)
    for name, grad, expected_grad in zip([n for n, _ in model.named_parameters()], grads,
                                         expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, msg=name)


# --- Registered models ---------------------------------------------------------------------

@pytest.mark.parametrize("name", LMS)
def test_registered_lm_shapes_loss_and_gradients(name):
    info = dk.model_info(name)
    assert (info.family, info.task, info.input_shape) == ("rnn", "language-model", (35,))
    torch.manual_seed(0)
    model = dk.create_model(name)
    assert model.returns_loss and model.vocab_size == 28
    x, y = tokens(3, 35, 28, seed=0), tokens(3, 35, 28, seed=1)
    assert model(x).shape == (3, 35, 28)
    logits, loss = model(x, y)
    assert logits.shape == (3, 35, 28)
    torch.testing.assert_close(loss, F.cross_entropy(logits.permute(0, 2, 1), y))
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", LMS)
def test_parameter_count_follows_the_layout(name):
    gates, layers, directions = LAYOUTS[name]
    vocab, hidden = 28, 32

    def layer(inputs):  # two bias vectors per gate, as cuDNN and nn.RNN keep them
        return gates * (hidden * inputs + hidden * hidden + 2 * hidden)

    expected = directions * (layer(vocab) + (layers - 1) * layer(directions * hidden))
    expected += directions * hidden * vocab + vocab
    assert dk.count_parameters(dk.create_model(name)) == expected


def test_create_model_takes_the_vocabulary_size_from_the_data():
    data = build_language_model("toy", {"train": list("abcabcabd"), "test": list("abcab")}, 3)
    model = dk.create_model("gru-lm", data, embedding_dim=3)
    assert model.vocab_size == len(data.vocab) == 5
    x, y = data.train
    logits, _ = model(x, y)
    assert logits.shape == (len(x), 3, 5)


def test_embedding_input_has_its_own_table():
    model = RNNLanguageModel(11, "lstm", hidden_size=6, embedding_dim=4)
    assert model.embedding.weight.shape == (11, 4) and model.rnn.input_size == 4
    assert RNNLanguageModel(11, "lstm", hidden_size=6).rnn.input_size == 11  # one-hot


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_step_token_by_token_equals_one_forward(cell, num_layers):
    model = model64(vocab_size=6, cell=cell, hidden_size=5, num_layers=num_layers)
    x = tokens(2, 7, 6)
    expected = model(x)
    state, logits = None, []
    for t in range(7):
        step_logits, state = model.step(x[:, t : t + 1], state)
        logits.append(step_logits)
    torch.testing.assert_close(torch.cat(logits, 1), expected)
    # A state carried into forward continues the sequence.
    _, state = model.step(x[:, :3])
    torch.testing.assert_close(model(x[:, 3:], state=state), expected[:, 3:])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_only_the_bidirectional_model_sees_the_future(bidirectional):
    model = model64(vocab_size=6, cell="lstm", hidden_size=4, bidirectional=bidirectional)
    x = tokens(2, 6, 6)
    changed = x.clone()
    changed[:, 4:] = (x[:, 4:] + 1) % 6
    before, after = model(x)[:, :4], model(changed)[:, :4]
    if bidirectional:
        assert (before - after).abs().amax() > 1e-3
    else:
        torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_dropout_only_in_training():
    model = RNNLanguageModel(6, "gru", hidden_size=8, dropout=0.5)  # one layer: no warning
    x = tokens(2, 5, 6)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("options", [
    {"cell": "transformer"}, {"hidden_size": 0}, {"num_layers": 1.5}, {"embedding_dim": 0},
    {"dropout": 1.0}, {"vocab_size": 0},
])
def test_bad_model_options_are_refused(options):
    with pytest.raises(DivekitError):
        RNNLanguageModel(**{"vocab_size": 6, **options})


def test_bad_inputs_are_refused():
    model = RNNLanguageModel(6, "gru", hidden_size=4)
    x = tokens(2, 5, 6)
    with pytest.raises(DivekitError, match="int64"):
        model(x.float())
    with pytest.raises(DivekitError, match=r"\(batch, steps\)"):
        model(x[0])
    with pytest.raises(DivekitError, match="targets"):
        model(x, x[:, :4])
    with pytest.raises(DivekitError, match="sees the future"):
        RNNLanguageModel(6, "lstm", hidden_size=4, bidirectional=True).step(x)


# --- Generation ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pattern_model():
    """A small GRU trained on "abcd" repeated: it must continue the pattern."""
    vocab = Vocab(list("abcd"))
    stream = torch.tensor(vocab[list("abcd" * 40)])
    x = torch.stack([stream[i : i + 12] for i in range(0, 140, 3)])
    y = torch.stack([stream[i + 1 : i + 13] for i in range(0, 140, 3)])
    torch.manual_seed(0)
    model = RNNLanguageModel(len(vocab), "gru", hidden_size=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return model, vocab


@pytest.fixture(scope="module")
def random_lm():
    vocab = Vocab(list("the time traveller for so it will be convenient to speak of him"))
    torch.manual_seed(3)
    return RNNLanguageModel(len(vocab), "lstm", hidden_size=16), vocab


def greedy_by_forward(model, vocab, prefix_tokens, num_tokens):
    """Greedy decoding that re-reads the whole sequence with forward at every step (never
    choosing ``<unk>``)."""
    indices = vocab[prefix_tokens]
    with torch.no_grad():
        for _ in range(num_tokens):
            scores = model(torch.tensor([indices]))[0, -1]
            scores[vocab.unk] = -math.inf
            indices.append(int(scores.argmax()))
    return vocab.to_tokens(indices[len(prefix_tokens):])


@pytest.mark.parametrize("prefix", ["ab", "dabc", "c"])
def test_greedy_continues_a_learned_pattern(pattern_model, prefix):
    model, vocab = pattern_model
    text = generate(model, vocab, prefix, 12)
    start = "abcd".index(prefix[-1]) + 1
    assert text == prefix + ("abcd" * 5)[start : start + 12]


def test_greedy_equals_rereading_the_sequence_and_is_deterministic(random_lm):
    model, vocab = random_lm
    prefix = "time tr?"  # '?' is not in the vocabulary: it is read as <unk>
    text = generate(model, vocab, prefix, 15)
    assert text == generate(model, vocab, prefix, 15)
    assert text == prefix + "".join(greedy_by_forward(model, vocab, list(prefix), 15))
    assert generate(model, vocab, prefix, 0) == prefix


def test_word_level_generation():
    words = ["the", "time", "traveller", "smiled", "and", "the", "time", "traveller", "laughed"]
    vocab = Vocab(words)
    torch.manual_seed(1)
    model = RNNLanguageModel(len(vocab), "gru", hidden_size=8, embedding_dim=4)
    text = generate(model, vocab, "the time", 4, level="word")
    assert text == " ".join(["the", "time", *greedy_by_forward(model, vocab, ["the", "time"], 4)])


def test_sampling_is_reproducible_with_a_generator(random_lm):
    model, vocab = random_lm

    def sample(seed, **options):
        generator = torch.Generator().manual_seed(seed)
        return generate(model, vocab, "the ", 40, strategy="sample", generator=generator,
                        **options)

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)  # 40 draws from a near-uniform untrained model
    assert sample(0, top_k=3) == sample(0, top_k=3)


def test_top_1_and_a_tiny_temperature_give_greedy(random_lm):
    model, vocab = random_lm
    greedy = generate(model, vocab, "the ", 30)
    generator = torch.Generator().manual_seed(0)
    assert generate(model, vocab, "the ", 30, strategy="sample", top_k=1,
                    generator=generator) == greedy
    assert generate(model, vocab, "the ", 30, strategy="sample", temperature=1e-6,
                    generator=generator) == greedy


def test_generation_keeps_the_training_mode(pattern_model):
    model, vocab = pattern_model
    model.train()
    generate(model, vocab, "ab", 3)
    assert model.training
    model.eval()
    generate(model, vocab, "ab", 3)
    assert not model.training


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.5, None), (2.0, 3)])
def test_sampling_frequencies_follow_the_tempered_softmax(temperature, top_k):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    generator = torch.Generator().manual_seed(0)
    n = 4000
    draws = [choose_token(logits, "sample", temperature, top_k, generator) for _ in range(n)]
    counts = torch.bincount(torch.tensor(draws), minlength=5).double()
    probs = torch.zeros(5, dtype=f64)
    kept = logits.topk(top_k or 5).indices
    probs[kept] = torch.softmax(logits[kept].double() / temperature, 0)
    # Five standard deviations of a binomial count: a correct sampler fails with p < 1e-5.
    tolerance = 5 * (n * probs * (1 - probs)).sqrt() + 1e-9
    assert ((counts - n * probs).abs() <= tolerance).all(), (counts, n * probs)
    assert (counts[probs == 0] == 0).all()


def test_bidirectional_model_cannot_generate(random_lm):
    _, vocab = random_lm
    model = RNNLanguageModel(len(vocab), "lstm", hidden_size=4, bidirectional=True)
    with pytest.raises(DivekitError, match="sees the future.*cannot generate text.*tagging"):
        generate(model, vocab, "the ", 5)


@pytest.mark.parametrize("options", [
    {"temperature": 0}, {"temperature": -1.0}, {"top_k": 0}, {"top_k": 2.5},
    {"strategy": "beam"}, {"level": "byte"}, {"num_tokens": -1}, {"prefix": ""},
    {"prefix": "   ", "level": "word"},
])
def test_bad_generation_arguments_are_refused(random_lm, options):
    model, vocab = random_lm
    arguments = {"prefix": "the ", "num_tokens": 5, **options}
    with pytest.raises(DivekitError):
        generate(model, vocab, **arguments)


# --- Learning ------------------------------------------------------------------------------

def test_gru_lm_beats_the_unigram_model_with_the_trainer():
    data = load_data("embedded-text", batch_size=32, num_steps=35, max_tokens=20000)
    # The best context-free model: train-split character frequencies (add-one smoothed).
    counts = torch.bincount(data.corpus, minlength=data.num_classes).double() + 1
    unigram_ppl = math.exp(-(counts / counts.sum()).log()[data.test[1]].mean().item())
    assert 15 < unigram_ppl < 20
    torch.manual_seed(0)
    model = dk.create_model("gru-lm", data, hidden_size=64)
    trainer = dk.Trainer(max_epochs=2, lr=0.02, optimizer="adam", grad_clip=1.0,
                         progress=False)
    history = trainer.fit(model, data)
    last = history[-1]
    assert last["test_ppl"] == pytest.approx(math.exp(last["test_loss"]))
    # Measured 9.2 (vs 17.0 for the unigram model): the GRU uses the preceding characters.
    assert last["test_ppl"] < 0.75 * unigram_ppl
    assert generate(model, data.vocab, "the ", 10).startswith("the ")
