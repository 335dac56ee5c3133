"""9.2 Converting raw text into sequence data: the vocabulary mapping tokens to indices."""

from __future__ import annotations

import collections
import json
import numbers
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from divekit.errors import DivekitError

UNK = "<unk>"
_FORMAT = "divekit-vocab"


class Vocab:
    """Token <-> index tables built from token frequencies.

    Index 0 is ``"<unk>"``, then the reserved tokens in the order given, then every other token
    seen at least ``min_freq`` times, most frequent first (ties in alphabetical order, so the
    same tokens always give the same indices). Unknown tokens map to index 0.

    Attributes:
        idx_to_token: the tokens, position = index.
        token_to_idx: the inverse mapping.
        token_freqs: ``(token, count)`` for every distinct input token, most frequent first.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Iterable[Iterable[str]] = (),
        min_freq: int = 0,
        reserved_tokens: Sequence[str] = (),
    ) -> None:
        """Count ``tokens`` (a flat sequence, or one sequence per line) and index them.

        Args:
            tokens: the training tokens.
            min_freq: drop tokens seen fewer times than this (they become ``"<unk>"``).
            reserved_tokens: tokens that get the indices right after ``"<unk>"``, e.g. ``"<eos>"``.
        """
        tokens = list(tokens)
        if tokens and not isinstance(tokens[0], str):
            tokens = [token for line in tokens for token in line]
        reserved = [UNK, *reserved_tokens]
        if len(set(reserved)) != len(reserved):
            raise DivekitError(f"reserved tokens must be distinct and not {UNK!r}, "
                               f"got {list(reserved_tokens)}")
        freqs = sorted(collections.Counter(tokens).items(), key=lambda item: (-item[1], item[0]))
        taken = set(reserved)
        kept = [token for token, count in freqs if count >= min_freq and token not in taken]
        self._set(reserved + kept, freqs)

    def _set(self, idx_to_token: list[str], token_freqs: list[tuple[str, int]]) -> None:
        self.idx_to_token = idx_to_token
        self.token_to_idx = {token: index for index, token in enumerate(idx_to_token)}
        self.token_freqs = token_freqs

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        """The index of a token, or a (nested) list of indices for a (nested) list of tokens."""
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        index, unk = self.token_to_idx.get, self.unk
        return [index(token, unk) if isinstance(token, str) else self[token] for token in tokens]

    def __contains__(self, token: object) -> bool:
        return token in self.token_to_idx

    def to_tokens(self, indices):
        """The token of an index, or the list of tokens of a list or 1-D tensor of indices."""
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        if isinstance(indices, numbers.Integral):
            indices = int(indices)
            if not 0 <= indices < len(self):
                raise DivekitError(f"index {indices} is outside the vocabulary of {len(self)}")
            return self.idx_to_token[indices]
        return [self.to_tokens(index) for index in indices]

    @property
    def unk(self) -> int:
        """Index of the unknown token."""
        return 0

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, first={self.idx_to_token[:6]})"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON; the file is replaced atomically (never half written)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": _FORMAT, "idx_to_token": self.idx_to_token,
                 "token_freqs": [[token, count] for token, count in self.token_freqs]}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Read a vocabulary written by :meth:`save`; the same tokens get the same indices."""
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DivekitError(f"cannot read a vocabulary from {path}: {e}") from e
        if not _is_vocab_state(state):
            raise DivekitError(f"{path} is not a divekit vocabulary file (written by Vocab.save)")
        vocab = cls.__new__(cls)
        vocab._set(state["idx_to_token"], [(token, count) for token, count in state["token_freqs"]])
        return vocab


def _is_vocab_state(state: object) -> bool:
    """Whether parsed JSON has the fields :meth:`Vocab.save` writes, with the right types."""
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        return False
    tokens, freqs = state.get("idx_to_token"), state.get("token_freqs")
    return (
        isinstance(tokens, list) and tokens[:1] == [UNK]
        and all(isinstance(token, str) for token in tokens) and len(set(tokens)) == len(tokens)
        and isinstance(freqs, list)
        and all(isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                and type(pair[1]) is int for pair in freqs)
    )
