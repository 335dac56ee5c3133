"""9.2-9.3 Text as sequence data: language-model datasets and the two minibatch samplers.

Every dataset here is one stream of token indices cut into windows of ``num_steps`` tokens
(consecutive by default, overlapping with ``stride``); the target of each window is the same
window shifted by one token, so a model learns to predict the next token. Four datasets are
registered:

* ``timemachine``: H. G. Wells, *The Time Machine* (the course's corpus), preprocessed as the
  course does (letters only, lower case); the last ``val_fraction`` of the stream is the test
  split.
* ``wikitext-2``: WikiText-2 (Merity et al. 2016, "Pointer Sentinel Mixture Models"), word
  level, one ``<eos>`` per line. Only ``valid.txt`` and ``test.txt`` are needed: see
  :func:`wikitext2`.
* ``text-file``: any UTF-8 text file of yours.
* ``embedded-text``: a corpus that needs no network, the reference documentation that every
  CPython ships for ``help()`` (see :func:`embedded_text`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from divekit.data.download import fetch_missing, verify_digest
from divekit.data.paths import data_root
from divekit.data.registry import DataModule, register_dataset
from divekit.errors import DataError, DivekitError
from divekit.text.tokenize import LEVELS, preprocess_timemachine, tokenize
from divekit.text.vocab import Vocab

TIMEMACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
# The sha1 is the one d2l publishes; the md5 (of the same file) lets download() check the bytes
# before they are moved into place, which it can do only for md5 or sha256.
TIMEMACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
TIMEMACHINE_MD5 = "7353d136ab308ecd0d4f1c5bf0e23122"
WIKITEXT2_URL = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"
SECTION = "9.2 Converting Raw Text into Sequence Data"


@dataclass(repr=False)
class TextDataModule(DataModule):
    """A :class:`DataModule` for language modelling that also keeps the vocabulary and stream.

    ``train``/``test`` (and ``val`` when present) are ``(X, Y)`` pairs of int64 tensors of
    shape ``(num_sequences, num_steps)`` with ``Y[i, t]`` the token after ``X[i, t]``;
    ``class_names`` are the vocabulary's tokens, so ``num_classes`` is the vocabulary size.

    Attributes:
        vocab: maps tokens to the indices in the tensors.
        corpus: the training stream of token indices (the text the training windows are cut
            from), shape ``(num_tokens,)``, for :func:`random_batches` and
            :func:`sequential_batches`.
    """

    vocab: Vocab | None = None
    corpus: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        """Vocabulary size: predicting the next token is a classification over it."""
        return len(self.class_names)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DivekitError(f"{name} must be a positive integer, got {value!r}")


def _check_count(name: str, value: int, zero_means: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DivekitError(f"{name} must be 0 ({zero_means}) or a positive integer, "
                           f"got {value!r}")


def _check_options(level: str, num_steps: int, max_tokens: int, val_fraction: float,
                   stride: int | None = None, num_train: int = 0, num_val: int = 0) -> None:
    if level not in LEVELS:
        raise DivekitError(f"token level must be 'char' or 'word', got {level!r}")
    _check_positive("num_steps", num_steps)
    _check_count("max_tokens", max_tokens, "all")
    if not 0 < val_fraction < 1:
        raise DivekitError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if stride is not None:
        _check_positive("stride", stride)
    _check_count("num_train", num_train, "every window")
    _check_count("num_val", num_val, "no validation split")
    if num_val and not num_train:
        raise DivekitError("num_val needs num_train: the validation windows are the ones right "
                           "after the first num_train training windows")


def windows(
    stream: torch.Tensor, num_steps: int, stride: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into input windows that start ``stride`` tokens apart, and their targets.

    The default ``stride = num_steps`` gives consecutive, non-overlapping windows; ``stride = 1``
    gives a window at every position, as d2l 1.0's ``TimeMachine`` does.

    Args:
        stream: token indices, shape ``(num_tokens,)`` with ``num_tokens > num_steps``.
        num_steps: tokens per window.
        stride: tokens between the starts of neighbouring windows (default ``num_steps``).

    Returns:
        ``(X, Y)`` of shape ``(n, num_steps)`` with ``n = (num_tokens - num_steps - 1) // stride
        + 1``, ``X[i] = stream[i*stride : i*stride + num_steps]`` and ``Y[i]`` the same shifted
        by one token. Both are views of ``stream``: overlapping windows cost no memory.
    """
    _check_positive("num_steps", num_steps)
    stride = num_steps if stride is None else stride
    _check_positive("stride", stride)
    if len(stream) <= num_steps:
        raise DivekitError(f"a stream of {len(stream)} tokens is too short for one window of "
                           f"num_steps={num_steps} plus its target")
    chunks = stream.unfold(0, num_steps + 1, stride)
    return chunks[:, :-1], chunks[:, 1:]


def build_language_model(
    name: str,
    splits: dict[str, list[str]],
    num_steps: int,
    reserved_tokens: Sequence[str] = (),
    stride: int | None = None,
) -> TextDataModule:
    """Index token splits with a vocabulary of the training tokens and cut them into windows.

    The vocabulary sees only ``splits["train"]``, so tokens that occur only in the held-out
    splits become ``"<unk>"``, as they would for truly unseen text. Held-out splits are always
    cut into non-overlapping windows, so every held-out token is predicted once.

    Args:
        name: the dataset's name.
        splits: ``"train"``, ``"test"`` and optionally ``"val"`` -> token lists.
        num_steps: tokens per window.
        reserved_tokens: passed to :class:`Vocab`, e.g. ``("<eos>",)``.
        stride: tokens between the starts of neighbouring training windows (see
            :func:`windows`); default ``num_steps``.
    """
    vocab = Vocab(splits["train"], reserved_tokens=reserved_tokens)
    streams = {split: torch.tensor(vocab[tokens], dtype=torch.long)
               for split, tokens in splits.items()}
    for split, stream in streams.items():
        if len(stream) <= num_steps:
            raise DataError(f"the {split} split of {name} has {len(stream)} tokens, too few for "
                            f"one window of num_steps={num_steps} plus its target; use a "
                            "smaller num_steps or more text")
    val = windows(streams["val"], num_steps) if "val" in streams else None
    return TextDataModule(
        name, train=windows(streams["train"], num_steps, stride),
        test=windows(streams["test"], num_steps),
        val=val, task="language-model", class_names=list(vocab.idx_to_token), vocab=vocab,
        corpus=streams["train"],
    )


def _split_stream(
    name: str, tokens: list[str], num_steps: int, max_tokens: int, val_fraction: float,
    stride: int | None = None, num_train: int = 0, num_val: int = 0,
) -> TextDataModule:
    """Keep the first ``max_tokens`` tokens; the last ``val_fraction`` of them is the test split.

    With ``num_train`` the training windows are only the first ``num_train`` of the training
    stream's windows, and the ``num_val`` after them are the validation split: d2l 1.0's
    ``TimeMachine(num_train=10000, num_val=5000)`` with ``stride=1``.
    """
    if max_tokens:
        tokens = tokens[:max_tokens]
    cut = len(tokens) - round(val_fraction * len(tokens))
    data = build_language_model(name, {"train": tokens[:cut], "test": tokens[cut:]}, num_steps,
                                stride=stride)
    if not num_train:
        return data
    X, Y = data.train
    if num_train + num_val > len(X):
        raise DivekitError(f"num_train + num_val = {num_train + num_val} windows, but the "
                           f"training stream of {name} has only {len(X)} (num_steps={num_steps}, "
                           f"stride={stride or num_steps})")
    data.train = X[:num_train], Y[:num_train]
    data.val = (X[num_train : num_train + num_val], Y[num_train : num_train + num_val]) \
        if num_val else None
    # The samplers must not read the validation windows' text.
    data.corpus = data.corpus[: (num_train - 1) * (stride or num_steps) + num_steps + 1]
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}") from e


def fetch_timemachine(data_dir: str | None = None) -> Path:
    """Return the path of the verified ``timemachine.txt``, downloading it when it is missing."""
    root = data_root(data_dir) / "timemachine"
    path = root / "timemachine.txt"
    reason = fetch_missing(TIMEMACHINE_URL, path, TIMEMACHINE_MD5)
    if not path.is_file():
        raise DataError(
            f"timemachine file missing in {root}: timemachine.txt.{reason} Put the original "
            f"file from {TIMEMACHINE_URL} in that folder, or point --data-dir / DIVEKIT_DATA "
            "at a folder that has a 'timemachine' sub-folder."
        )
    verify_digest(path, TIMEMACHINE_SHA1, "sha1")
    return path


@register_dataset("timemachine", section=SECTION, files=("timemachine.txt",))
def timemachine(
    data_dir: str | None = None,
    level: str = "char",
    num_steps: int = 35,
    max_tokens: int = 0,
    val_fraction: float = 0.1,
    stride: int | None = None,
    num_train: int = 0,
    num_val: int = 0,
) -> TextDataModule:
    """The Time Machine (H. G. Wells): 173,428 characters / 32,775 words, the course's corpus.

    ``stride=1, num_train=10000, num_val=5000, num_steps=32`` is d2l 1.0's
    ``TimeMachine(batch_size, num_steps=32)``: a window at every character, the first 10,000
    train and the next 5,000 validate (the test split stays the last ``val_fraction``).

    Args:
        data_dir: folder holding the ``timemachine/`` sub-folder.
        level: ``"char"`` (28 tokens with ``"<unk>"``) or ``"word"``.
        num_steps: tokens per window.
        max_tokens: keep only the first this many tokens (0 = all).
        val_fraction: the last this fraction of the token stream is the test split.
        stride: tokens between the starts of neighbouring training windows; default
            ``num_steps`` (non-overlapping), 1 = a window at every token.
        num_train: train on only the first this many windows (0 = all of them).
        num_val: the windows right after those are the validation split (needs ``num_train``).
    """
    _check_options(level, num_steps, max_tokens, val_fraction, stride, num_train, num_val)
    text = preprocess_timemachine(_read_text(fetch_timemachine(data_dir)))
    return _split_stream("timemachine", tokenize(text, level), num_steps, max_tokens,
                         val_fraction, stride, num_train, num_val)


def _wikitext_tokens(path: Path) -> list[str]:
    """The file's tokens, one ``<eos>`` after each line (blank lines included), as in the paper."""
    try:
        with open(path, encoding="utf-8") as f:
            return [token for line in f for token in [*line.split(), "<eos>"]]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}") from e


@register_dataset("wikitext-2", section="9.3 Language Models", files=("valid.txt", "test.txt"))
def wikitext2(data_dir: str | None = None, num_steps: int = 35) -> TextDataModule:
    """WikiText-2 (word level): trained on the validation file when the train file is absent.

    The folder ``wikitext-2/`` holds the files of ``wikitext-2-v1.zip`` under the names
    pytorch/examples uses: ``valid.txt`` (``wiki.valid.tokens``, 217,646 tokens with one
    ``<eos>`` per line) and ``test.txt`` (``wiki.test.tokens``, 245,569 tokens). The training
    file ``wiki.train.tokens`` (2,088,628 tokens) is optional: when ``train.txt`` is there it is
    the train split and ``valid.txt`` the validation split; without it ``valid.txt`` is the
    train split. ``test.txt`` is always the test split. Rare words are already ``<unk>``.

    Args:
        data_dir: folder holding the ``wikitext-2/`` sub-folder.
        num_steps: tokens per window.
    """
    _check_positive("num_steps", num_steps)
    splits = {split: _wikitext_tokens(path) for split, path in wikitext2_files(data_dir).items()}
    return build_language_model("wikitext-2", splits, num_steps, reserved_tokens=("<eos>",))


def wikitext2_files(data_dir: str | None = None) -> dict[str, Path]:
    """The WikiText-2 file of each split: ``train.txt``/``valid.txt``/``test.txt`` when the
    training file is there, else ``valid.txt`` trains and ``test.txt`` tests (no validation
    split).

    Raises:
        DataError: naming the missing files and where to get them.
    """
    root = data_root(data_dir) / "wikitext-2"
    missing = [name for name in ("valid.txt", "test.txt") if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"wikitext-2 files missing in {root}: {', '.join(missing)}. Take wiki.valid.tokens "
            f"and wiki.test.tokens from {WIKITEXT2_URL} and save them in that folder as "
            "valid.txt and test.txt (optionally wiki.train.tokens, the book's training file, as "
            "train.txt), or point --data-dir / DIVEKIT_DATA at a folder that has a "
            "'wikitext-2' sub-folder."
        )
    if (root / "train.txt").is_file():
        return {"train": root / "train.txt", "val": root / "valid.txt", "test": root / "test.txt"}
    return {"train": root / "valid.txt", "test": root / "test.txt"}


@register_dataset("text-file", section=SECTION)
def text_file(
    data_dir: str | None = None,
    path: str | None = None,
    level: str = "char",
    preprocess: bool = True,
    num_steps: int = 35,
    max_tokens: int = 0,
    val_fraction: float = 0.1,
    stride: int | None = None,
) -> TextDataModule:
    """Your own UTF-8 text file as a language-modelling corpus (option ``path``).

    Args:
        data_dir: unused; ``path`` is read as given.
        path: the text file.
        level: ``"char"`` or ``"word"``.
        preprocess: apply the course's preprocessing (letters only, lower case); otherwise
            every character counts (``"char"``) or words are split at whitespace (``"word"``).
        num_steps: tokens per window.
        max_tokens: keep only the first this many tokens (0 = all).
        val_fraction: the last this fraction of the token stream is the test split.
        stride: tokens between the starts of neighbouring training windows (default
            ``num_steps``).
    """
    if path is None:
        raise DivekitError("dataset 'text-file' needs the option path=<your text file>")
    _check_options(level, num_steps, max_tokens, val_fraction, stride)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"text file {file} does not exist")
    text = _read_text(file)
    if preprocess:
        text = preprocess_timemachine(text)
    return _split_stream("text-file", tokenize(text, level), num_steps, max_tokens, val_fraction,
                         stride)


def python_reference_text() -> str:
    """The text of the Python reference topics that ``help()`` shows, concatenated by name.

    It is ``pydoc_data.topics.topics`` (about 465,000 characters of English in CPython 3.11),
    part of the standard library of every CPython build. Being data rather than docstrings, it
    survives ``python -OO``. The text is fixed for a given Python version; documentation edits
    make it differ slightly between versions.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise DataError(
            "this Python has no pydoc_data module (some Linux distributions ship it separately, "
            "e.g. as python3-pydoc); install it, or use the 'timemachine' dataset"
        ) from e
    return "\n".join(topics[name] for name in sorted(topics))


@register_dataset("embedded-text", section="embedded default (no network)")
def embedded_text(
    data_dir: str | None = None,
    level: str = "char",
    num_steps: int = 35,
    max_tokens: int = 0,
    val_fraction: float = 0.1,
    stride: int | None = None,
) -> TextDataModule:
    """Embedded: Python's reference documentation, preprocessed like The Time Machine.

    A stand-in for ``timemachine`` that needs no file: the ``help()`` topics of the running
    Python (:func:`python_reference_text`) with the course's preprocessing, so the character
    vocabulary is the same 28 tokens.

    Args:
        data_dir: unused.
        level: ``"char"`` or ``"word"``.
        num_steps: tokens per window.
        max_tokens: keep only the first this many tokens (0 = all).
        val_fraction: the last this fraction of the token stream is the test split.
        stride: tokens between the starts of neighbouring training windows (default
            ``num_steps``).
    """
    _check_options(level, num_steps, max_tokens, val_fraction, stride)
    text = preprocess_timemachine(python_reference_text())
    return _split_stream("embedded-text", tokenize(text, level), num_steps, max_tokens,
                         val_fraction, stride)


def _check_corpus(corpus: torch.Tensor, batch_size: int, num_steps: int) -> torch.Tensor:
    _check_positive("batch_size", batch_size)
    _check_positive("num_steps", num_steps)
    corpus = torch.as_tensor(corpus)
    if corpus.ndim != 1:
        raise DivekitError(f"corpus must be a 1-D tensor of token indices, got shape "
                           f"{tuple(corpus.shape)}")
    # The random offset can drop up to num_steps - 1 tokens and the targets need one more.
    needed = (batch_size + 1) * num_steps
    if len(corpus) < needed:
        raise DivekitError(f"a corpus of {len(corpus)} tokens is too short for a batch of "
                           f"{batch_size} x {num_steps}; it needs at least {needed} tokens")
    return corpus


def _offset(num_steps: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(num_steps, (1,), generator=generator))


def random_batches(
    corpus: torch.Tensor,
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random sampling: minibatches of subsequences taken from random places in the corpus.

    The corpus is shifted by a random offset in ``[0, num_steps)`` and cut into
    ``n = (len(corpus) - offset - 1) // num_steps`` non-overlapping subsequences; a random
    permutation of them is served ``batch_size`` at a time (the leftover ``n % batch_size``
    are dropped). Neighbouring rows are unrelated, so a recurrent model must reset its state
    for every minibatch.

    Args:
        corpus: token indices, shape ``(num_tokens,)``.
        batch_size: subsequences per minibatch.
        num_steps: tokens per subsequence.
        generator: source of the offset and the permutation (default: torch's global one).

    Returns:
        An iterator over ``n // batch_size`` pairs ``(X, Y)``, each of shape
        ``(batch_size, num_steps)``, with ``Y[i, t] = corpus[s_i + t + 1]`` when
        ``X[i, t] = corpus[s_i + t]``.
    """
    corpus = _check_corpus(corpus, batch_size, num_steps)
    offset = _offset(num_steps, generator)
    X, Y = windows(corpus[offset:], num_steps)
    order = torch.randperm(len(X), generator=generator).to(corpus.device)
    order = order[: len(order) // batch_size * batch_size]
    return zip(X[order].split(batch_size), Y[order].split(batch_size), strict=True)


def sequential_batches(
    corpus: torch.Tensor,
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential partitioning: ``batch_size`` parallel streams read ``num_steps`` at a time.

    After a random offset in ``[0, num_steps)`` the corpus is cut into ``batch_size`` equal,
    contiguous streams (the rows of a ``(batch_size, L)`` matrix); minibatch ``k`` holds columns
    ``k * num_steps`` to ``(k + 1) * num_steps - 1``. Row ``i`` of minibatch ``k + 1`` therefore
    continues row ``i`` of minibatch ``k``, so a recurrent model can carry its hidden state over
    (detached) from one minibatch to the next.

    Args:
        corpus: token indices, shape ``(num_tokens,)``.
        batch_size: number of parallel streams.
        num_steps: tokens per minibatch and stream.
        generator: source of the offset (default: torch's global one).

    Returns:
        An iterator over ``L // num_steps`` pairs ``(X, Y)``, each of shape
        ``(batch_size, num_steps)``, where ``L = (len(corpus) - offset - 1) // batch_size`` and
        ``Y`` is ``X`` shifted by one token in the corpus.
    """
    corpus = _check_corpus(corpus, batch_size, num_steps)
    offset = _offset(num_steps, generator)
    length = (len(corpus) - offset - 1) // batch_size
    used = length // num_steps * num_steps
    streams_x = corpus[offset : offset + batch_size * length].reshape(batch_size, length)
    streams_y = corpus[offset + 1 : offset + 1 + batch_size * length].reshape(batch_size, length)
    return zip(streams_x[:, :used].split(num_steps, dim=1),
               streams_y[:, :used].split(num_steps, dim=1), strict=True)
