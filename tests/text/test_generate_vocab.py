"""Generation against the vocabulary: ``<unk>`` is never produced, and a lower-case
vocabulary (timemachine's) reads a capitalised prefix as its lower-case letters."""

import torch
from torch import nn

from divekit.text.generate import generate
from divekit.text.tokenize import preprocess_timemachine, tokenize
from divekit.text.vocab import Vocab

TEXT = "The Time Traveller (for so it will be convenient to speak of him) was expounding."


class FixedLogits(nn.Module):
    """A language model stub: the same logits at every step; records what it reads."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.read: list[int] = []

    def step(self, x, state=None):
        self.read += x[0].tolist()
        return self.logits.expand(1, x.shape[1], -1), state


def lowercase_char_vocab():
    return Vocab(tokenize(preprocess_timemachine(TEXT), "char"))


def test_unk_is_never_generated_even_when_the_model_prefers_it():
    vocab = lowercase_char_vocab()
    logits = torch.zeros(len(vocab))
    logits[vocab.unk] = 10.0  # by far the most likely token
    logits[vocab["e"]] = 5.0
    model = FixedLogits(logits)
    assert generate(model, vocab, "th", 4) == "th" + "eeee"
    # Sampling: all the unknown token's probability mass is gone, e^-5 of it left on others.
    sampled = generate(model, vocab, "th", 300, strategy="sample",
                       generator=torch.Generator().manual_seed(0))
    assert "<unk>" not in sampled
    assert set(sampled[2:]) <= set(vocab.idx_to_token[1:])
    assert sampled[2:].count("e") > 250


def test_a_capitalised_prefix_is_lower_cased_for_a_lower_case_vocabulary():
    vocab = lowercase_char_vocab()
    model = FixedLogits(torch.zeros(len(vocab)))
    text = generate(model, vocab, "The Time", 0)
    assert model.read == [vocab[c] for c in "the time"]
    assert vocab.unk not in model.read
    assert text == "the time"


def test_a_cased_vocabulary_reads_the_prefix_as_given():
    vocab = Vocab(tokenize(TEXT, "char"))  # not preprocessed: "T" is a token of its own
    model = FixedLogits(torch.zeros(len(vocab)))
    text = generate(model, vocab, "The", 0)
    assert model.read == [vocab["T"], vocab["h"], vocab["e"]] and vocab["T"] != vocab.unk
    assert text == "The"


def test_word_level_prefix_is_lower_cased_too():
    vocab = Vocab(tokenize(preprocess_timemachine(TEXT), "word"))
    model = FixedLogits(torch.zeros(len(vocab)))
    generate(model, vocab, "The Time", 0, level="word")
    assert model.read == [vocab["the"], vocab["time"]] and vocab.unk not in model.read
