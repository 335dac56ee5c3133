"""Tokenizers for BERT (d2l 15.8-15.9; Devlin et al., 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding"; WordPiece: Wu et al., 2016).

One wrapper, :class:`BertTokenizer`, over a Hugging Face ``tokenizers.Tokenizer`` (``.backend``),
for the two vocabularies the course and its users meet:

- the course's word-level vocabulary (15.9): ``<unk>`` = 0, then ``<pad> <mask> <cls> <sep>``,
  then the words seen ``min_freq`` or more times, most frequent first (ties alphabetical, as
  :class:`~divekit.text.vocab.Vocab` orders them); lower case, split on whitespace;
- WordPiece with Hugging Face's names (``[PAD] [UNK] [CLS] [SEP] [MASK]``), trained here or read
  from a ``bert-base-uncased`` style ``vocab.txt``, giving the ids ``transformers`` gives.

Both wrap a sentence as ``CLS A SEP`` and a pair as ``CLS A SEP B SEP``, segment (token type)
ids 0 for ``CLS A SEP`` and 1 for ``B SEP``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import WordPieceTrainer

from divekit.errors import DivekitError
from divekit.text.vocab import Vocab

# Special tokens in id order: the course's word-level names and Hugging Face's WordPiece names.
WORD_SPECIALS = {"unk": "<unk>", "pad": "<pad>", "mask": "<mask>", "cls": "<cls>", "sep": "<sep>"}
WORDPIECE_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]",
                      "mask": "[MASK]"}
ACCEPTED = "a tokenizer.json, a WordPiece vocab.txt, or a folder holding one of them"


class Encoded(NamedTuple):
    """One encoded sentence or pair, special tokens included.

    Attributes:
        ids: token ids.
        segments: 0 for ``CLS A SEP``, 1 for ``B SEP``.
        word_ids: for each token, the index of its word within its own sequence (``None`` for
            the special tokens).
        sequence_ids: 0 for tokens of the first sequence, 1 of the second, ``None`` for specials.
        offsets: ``(start, end)`` character offsets into the token's own input string (into the
            word for pre-tokenized input); ``(0, 0)`` for specials.
        truncated: whether tokens were dropped to fit ``max_len``.
    """

    ids: list[int]
    segments: list[int]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    offsets: list[tuple[int, int]]
    truncated: bool


class BertTokenizer:
    """BERT's tokenizer: a ``tokenizers.Tokenizer`` plus the ids of its special tokens.

    Build one with :meth:`word_level`, :meth:`train_wordpiece` or :meth:`load`. Which special
    names it uses (``<cls>`` or ``[CLS]``) is read from the vocabulary.

    Attributes:
        backend: the wrapped ``tokenizers.Tokenizer`` (no truncation or padding set on it).
        cls_id, sep_id, pad_id, mask_id, unk_id: the special tokens' ids.
        special_ids: all five; never masked, never predicted in pretraining (``<unk>`` included,
            as Hugging Face's masking collator leaves it alone).
    """

    def __init__(self, backend: Tokenizer) -> None:
        vocab = backend.get_vocab(with_added_tokens=True)
        names = WORDPIECE_SPECIALS if WORDPIECE_SPECIALS["cls"] in vocab else WORD_SPECIALS
        missing = [token for token in names.values() if token not in vocab]
        if missing:
            raise DivekitError(f"the tokenizer's vocabulary lacks the special tokens {missing}: "
                               f"BERT needs {list(WORD_SPECIALS.values())} or "
                               f"{list(WORDPIECE_SPECIALS.values())}")
        self.backend = backend
        self.special_tokens = dict(names)
        self.unk_id, self.pad_id, self.mask_id, self.cls_id, self.sep_id = (
            vocab[names[kind]] for kind in ("unk", "pad", "mask", "cls", "sep"))
        self.special_ids = sorted({self.unk_id, self.pad_id, self.mask_id, self.cls_id,
                                   self.sep_id})
        backend.no_truncation()
        backend.no_padding()
        # Make sure the specials are matched whole in raw text and wrapped by the BERT template,
        # whatever a loaded file said.
        backend.add_special_tokens(list(names.values()))
        backend.post_processor = _template(names["cls"], self.cls_id, names["sep"], self.sep_id)

    # ---------------------------------------------------------------- construction

    @classmethod
    def word_level(cls, sentences: Iterable[list[str]], min_freq: int = 5) -> BertTokenizer:
        """The course's vocabulary (d2l 15.9): words of ``sentences`` seen ``min_freq`` or more
        times, lower-cased, most frequent first (ties alphabetical), after ``<unk> <pad> <mask>
        <cls> <sep>``.

        Args:
            sentences: tokenized sentences (lists of words).
            min_freq: rarer words become ``<unk>``.
        """
        lowered = [[word.lower() for word in sentence] for sentence in sentences]
        reserved = [WORD_SPECIALS[kind] for kind in ("pad", "mask", "cls", "sep")]
        vocab = Vocab(lowered, min_freq=min_freq, reserved_tokens=reserved)
        backend = Tokenizer(models.WordLevel(dict(vocab.token_to_idx),
                                             unk_token=WORD_SPECIALS["unk"]))
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return cls(backend)

    @classmethod
    def train_wordpiece(cls, texts: Iterable[str], vocab_size: int = 8000,
                        min_frequency: int = 2) -> BertTokenizer:
        """A WordPiece vocabulary of at most ``vocab_size`` pieces learned from ``texts``
        (lower case, BERT's normaliser and pre-tokenizer, Hugging Face's special names).

        Args:
            texts: raw training text, e.g. one string per line.
            vocab_size: pieces including the five special tokens and the alphabet.
            min_frequency: merges seen fewer times are not learned.
        """
        backend = _wordpiece_backend(models.WordPiece(unk_token=WORDPIECE_SPECIALS["unk"],
                                                      continuing_subword_prefix="##"))
        trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                   special_tokens=list(WORDPIECE_SPECIALS.values()),
                                   continuing_subword_prefix="##", show_progress=False)
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BertTokenizer:
        """Read a tokenizer: a ``tokenizer.json``, a WordPiece ``vocab.txt`` (one piece per
        line, ``bert-base-uncased`` format: lower case, ``[CLS]`` style names), or a folder holding
        one of them (``tokenizer.json`` first).

        Raises:
            DivekitError: the path is missing, holds neither file, or cannot be read.
        """
        path = Path(path)
        if path.is_dir():
            found = [path / name for name in ("tokenizer.json", "vocab.txt")
                     if (path / name).is_file()]
            if not found:
                raise DivekitError(f"no tokenizer in {path}: expected {ACCEPTED}")
            path = found[0]
        if not path.is_file():
            raise DivekitError(f"no tokenizer file {path}: give {ACCEPTED}")
        try:
            if path.suffix == ".json":
                backend = Tokenizer.from_file(str(path))
            else:
                backend = _wordpiece_backend(models.WordPiece.from_file(
                    str(path), unk_token=WORDPIECE_SPECIALS["unk"],
                    continuing_subword_prefix="##"))
        except Exception as error:  # the library raises plain Exceptions for unreadable files
            raise DivekitError(f"cannot read the tokenizer {path} ({error}): give {ACCEPTED}"
                               ) from error
        return cls(backend)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` atomically (a temporary file in the same folder, then a
        rename), so a crash never leaves half a file. A folder gets ``tokenizer.json`` inside.

        Returns:
            The file written.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(self.backend.to_str(pretty=True))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    # ---------------------------------------------------------------- use

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the embedding table's rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def kind(self) -> str:
        """``"word"`` for the course's word-level vocabulary, ``"wordpiece"`` otherwise."""
        return "wordpiece" if self.special_tokens == WORDPIECE_SPECIALS else "word"

    def encode(self, first: str | list[str], second: str | list[str] | None = None, *,
               max_len: int, is_pretokenized: bool = False) -> Encoded:
        """Encode a sentence, or a pair, as ``CLS A SEP [B SEP]``, at most ``max_len`` tokens.

        A pair too long loses tokens from the end of its longer sequence first (the library's
        ``longest_first``); a warning says so.

        Args:
            first: a string, or a list of words when ``is_pretokenized``.
            second: the optional second sequence, same kind as ``first``.
            max_len: the most tokens, specials included.
            is_pretokenized: the inputs are word lists (``word_ids`` then index those words).
        """
        seconds = None if second is None else [second]
        encoded, truncated = self._encode([first], seconds, max_len, is_pretokenized)
        if truncated:
            warnings.warn(f"1 of 1 inputs was longer than max_len={max_len} tokens and was "
                          "truncated", stacklevel=2)
        return encoded[0]

    def encode_batch(self, firsts: Sequence[str | list[str]],
                     seconds: Sequence[str | list[str]] | None = None, *, max_len: int,
                     is_pretokenized: bool = False) -> list[Encoded]:
        """Encode many sentences or pairs at once (see :meth:`encode`); one warning in all
        says how many were truncated."""
        encoded, truncated = self._encode(firsts, seconds, max_len, is_pretokenized)
        if truncated:
            warnings.warn(f"{truncated} of {len(encoded)} inputs were longer than "
                          f"max_len={max_len} tokens and were truncated", stacklevel=2)
        return encoded

    def to_tokens(self, ids: Iterable[int]) -> list[str]:
        """The token of each id (a list, or a 1-D tensor)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return [self.backend.id_to_token(int(index)) for index in ids]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (WordPiece joins ``##`` pieces back into words)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _encode(self, firsts, seconds, max_len: int, is_pretokenized: bool
                ) -> tuple[list[Encoded], int]:
        if seconds is not None and len(seconds) != len(firsts):
            raise DivekitError(f"encode_batch needs one second sequence per first one, got "
                               f"{len(seconds)} for {len(firsts)}")
        added = self.backend.num_special_tokens_to_add(seconds is not None)
        if max_len <= added:
            raise DivekitError(f"max_len={max_len} leaves no room next to the {added} special "
                               f"tokens: use max_len > {added}")
        inputs = list(firsts) if seconds is None else list(zip(firsts, seconds, strict=True))
        # The library's truncation (longest first, specials counted) gives the same tokens as
        # transformers; it lives on the backend, so it is set for this call only.
        self.backend.enable_truncation(max_len)
        try:
            encodings = self.backend.encode_batch(inputs, is_pretokenized=is_pretokenized)
        except TypeError as error:
            kind = "lists of words" if is_pretokenized else "strings"
            raise DivekitError(f"cannot encode the inputs ({error}): with "
                               f"is_pretokenized={is_pretokenized} pass {kind}") from error
        finally:
            self.backend.no_truncation()
        encoded = [Encoded(e.ids, e.type_ids, e.word_ids, e.sequence_ids, e.offsets,
                           bool(e.overflowing)) for e in encodings]
        return encoded, sum(e.truncated for e in encoded)

    def __repr__(self) -> str:
        return f"BertTokenizer({self.kind}, vocab_size={self.vocab_size})"


def _template(cls_token: str, cls_id: int, sep_token: str, sep_id: int
              ) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}",
        pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
        special_tokens=[(cls_token, cls_id), (sep_token, sep_id)])


def _wordpiece_backend(model: models.WordPiece) -> Tokenizer:
    """``bert-base-uncased``'s pipeline around a WordPiece model."""
    backend = Tokenizer(model)
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend

