"""15.9 The dataset for pretraining BERT: WikiText-2 as next-sentence pairs with masked tokens.

BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding") learns from two tasks at once. Next sentence prediction: is sentence B the one
that follows sentence A, or a random one? Masked language modelling: recover the tokens hidden
in ``<cls> A <sep> B <sep>``. The course builds both from WikiText-2 (Merity et al. 2016):

1. :func:`read_paragraphs`: the lines of at least two sentences, lower case, cut on ``" . "``;
2. :func:`next_sentence_pairs`: every two consecutive sentences of a paragraph, B replaced by a
   random sentence half of the time;
3. :func:`mask_tokens`: 15% of the ordinary tokens of each sequence to predict; of those, 80%
   become ``<mask>``, 10% a random token, 10% stay.

Batches are ``(tokens, segments, valid_len, mlm_labels, nsp_labels)``: tokens, segments and
mlm_labels ``(B, L)`` int64, trimmed to the batch's longest sequence; ``mlm_labels`` is -100
(PyTorch's ``ignore_index``) except at the positions to predict, where it holds the original
token id; valid_len and nsp_labels ``(B,)`` int64, ``nsp_labels`` 1 when B truly follows A.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from divekit.data.buckets import BucketLoader
from divekit.data.paths import data_root
from divekit.data.registry import DataModule, Split, register_dataset
from divekit.data.text import wikitext2_files
from divekit.errors import DataError, DivekitError
from divekit.text.bert_tokenizer import BertTokenizer

SECTION = "15.9 The Dataset for Pretraining BERT"
IGNORE_INDEX = -100  # cross_entropy's default ignore_index: positions not predicted
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen positions; the other 10% keep their token

Pair = tuple[list[str], list[str], bool]


def read_paragraphs(path: str | os.PathLike) -> list[list[str]]:
    """The course's paragraphs of a WikiText file: each line of at least two sentences, lower
    case, as its list of sentences (cut on ``" . "``).

    As in the book, the final ``" ."`` of a line stays on its last sentence. Lines of one
    sentence are dropped (the book keeps them as candidates for random next sentences), and so
    are empty sentences.

    Raises:
        DataError: the file cannot be read as UTF-8 text.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} as UTF-8 text: {error}") from error
    paragraphs = []
    for line in text.split("\n"):
        sentences = [s for s in line.strip().lower().split(" . ") if s.strip()]
        if len(sentences) >= 2:
            paragraphs.append(sentences)
    return paragraphs


def squad_paragraphs(data_dir: str | None = None) -> list[list[str]]:
    """The paragraphs of the SQuAD articles the ``squad`` dataset trains on (with its default
    split of the dev file: never the held-out articles), lower case, as lists of sentences
    (cut after ``.``, ``!`` or ``?``), punctuation spaced as in WikiText: unlabelled English
    text to pretrain on."""
    from divekit.data.squad import DEV_FILE, TRAIN_FILE, read_squad, split_articles

    root = data_root(data_dir) / "squad-v1.1"
    if (root / TRAIN_FILE).is_file():
        articles = read_squad(root / TRAIN_FILE)
    elif (root / DEV_FILE).is_file():
        articles, _ = split_articles(read_squad(root / DEV_FILE), 0.2, 0)
    else:
        raise DataError(f"squad_passages needs the SQuAD v1.1 files in {root} ({DEV_FILE}); "
                        "see `divekit list datasets` for squad, or leave squad_passages off")
    paragraphs = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            text = re.sub(r'([.,!?;:()"])', r" \1 ", paragraph["context"].lower())
            sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
            sentences = [s for s in sentences if s]
            if len(sentences) >= 2:
                paragraphs.append(sentences)
    return paragraphs


def next_sentence_pairs(paragraphs: Sequence[Sequence[str]],
                        generator_or_seed: torch.Generator | int = 0) -> list[Pair]:
    """Next-sentence-prediction examples (the book's ``_get_next_sentence``).

    For every two consecutive sentences ``a, b`` of a paragraph: with probability 0.5 the pair
    ``(a, b, True)``; otherwise ``b`` is replaced by a random sentence of a random paragraph
    (which may, rarely, be ``b`` itself: it is labelled ``False`` all the same, as in the book).

    Args:
        paragraphs: lists of sentence strings (see :func:`read_paragraphs`).
        generator_or_seed: the random source, or a seed for a new one.

    Returns:
        ``(a_words, b_words, is_next)`` per pair, words split on whitespace, in paragraph order.
    """
    generator = (generator_or_seed if isinstance(generator_or_seed, torch.Generator)
                 else torch.Generator().manual_seed(generator_or_seed))
    starts = [(p, i) for p, paragraph in enumerate(paragraphs) for i in range(len(paragraph) - 1)]
    if not starts:
        return []
    count = len(starts)
    is_next = (torch.rand(count, generator=generator) < 0.5).tolist()
    other_paragraph = torch.randint(len(paragraphs), (count,), generator=generator)
    sizes = torch.tensor([len(paragraph) for paragraph in paragraphs])[other_paragraph]
    other_sentence = (torch.rand(count, generator=generator) * sizes).long().clamp(max=sizes - 1)
    pairs = []
    for (p, i), true_next, q, j in zip(starts, is_next, other_paragraph.tolist(),
                                       other_sentence.tolist(), strict=True):
        second = paragraphs[p][i + 1] if true_next else paragraphs[q][j]
        pairs.append((paragraphs[p][i].split(), second.split(), true_next))
    return pairs


def mask_tokens(tokens: torch.Tensor, valid_len: torch.Tensor, *, special_ids: Sequence[int],
                mask_id: int, vocab_size: int, mask_prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the tokens BERT must predict and hide them (the book's ``_replace_mlm_tokens``,
    for a whole batch at once).

    In each row, ``k = max(1, round(valid_len * mask_prob))`` positions (the book counts the
    special tokens in the length too) are drawn uniformly among the positions before
    ``valid_len`` that do not hold a special token (fewer when there are fewer such positions).
    Of those, 80% become ``mask_id``, 10% a random non-special token, 10% stay as they are.

    Args:
        tokens: token ids, padded after ``valid_len``.
        valid_len: tokens before the padding in each row.
        special_ids: ids never chosen (``<cls>``, ``<sep>``, ``<pad>``, ...), nor drawn as the
            random replacement.
        mask_id: the ``<mask>`` id.
        vocab_size: random replacements are drawn from ``0 .. vocab_size - 1``.
        mask_prob: share of each sequence to predict.
        generator: the random source; None draws from torch's global generator of the tokens'
            device.

    Returns:
        ``(masked_tokens, mlm_labels)``: the input with the chosen positions replaced, and the
        original ids at the chosen positions, -100 elsewhere.

    Shape:
        tokens, masked_tokens, mlm_labels: ``(B, L)``; valid_len: ``(B,)``.
    """
    if tokens.dim() != 2 or valid_len.shape != tokens.shape[:1]:
        raise DivekitError(f"mask_tokens takes tokens (B, L) and valid_len (B,), got "
                           f"{tuple(tokens.shape)} and {tuple(valid_len.shape)}")
    device = tokens.device
    specials = torch.tensor(sorted(set(special_ids)), dtype=tokens.dtype, device=device)
    ordinary = torch.ones(vocab_size, dtype=torch.bool, device=device)
    ordinary[specials[specials < vocab_size]] = False
    ordinary_ids = ordinary.nonzero().squeeze(1)
    if not len(ordinary_ids):
        raise DivekitError(f"a vocabulary of {vocab_size} tokens, all special, has nothing to "
                           "mask")
    positions = torch.arange(tokens.shape[1], device=device)
    candidates = (positions < valid_len[:, None]) & ~torch.isin(tokens, specials)
    # float64 so that round() agrees with Python's (half to even) on the book's counts.
    wanted = torch.round(valid_len.to(torch.float64) * mask_prob).long().clamp(min=1)
    wanted = torch.minimum(wanted, candidates.sum(1))

    draw_device = generator.device if generator is not None else device

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=draw_device).to(device)

    # A uniform random subset of k candidates: the k smallest of random keys; other positions
    # get keys above every candidate's.
    keys = uniform(*tokens.shape).masked_fill(~candidates, 2.0)
    ranks = keys.argsort(1).argsort(1)
    chosen = ranks < wanted[:, None]
    action = uniform(*tokens.shape)
    replacements = ordinary_ids[torch.randint(len(ordinary_ids), tokens.shape,
                                              generator=generator, device=draw_device).to(device)]
    masked = tokens.clone()
    masked[chosen & (action < MASK_SHARE)] = mask_id
    random_here = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
    masked[random_here] = replacements[random_here]
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return masked, labels


@dataclass(repr=False)
class BertPretrainData(DataModule):
    """A :class:`DataModule` of BERT pretraining examples, served in batches of similar
    lengths (see :class:`~divekit.data.buckets.BucketLoader`).

    Every split is ``(tokens, segments, valid_len, mlm_labels, nsp_labels)``, stored padded to
    ``max_len``. The evaluation splits were masked once, with a fixed generator, so their
    metrics are deterministic. The training split is masked once at build time
    (``static_masking``, as the book does) or afresh for every batch, as RoBERTa does (Liu et
    al. 2019), from torch's global generator, which the Trainer seeds and checkpoints.

    Attributes:
        tokenizer: the :class:`~divekit.text.bert_tokenizer.BertTokenizer` of the tokens.
        max_len: tokens per example, specials included; longer pairs were truncated.
        static_masking: the training split holds its masking (else masked per batch).
        mask_seed: seeds the masking of splits held out later (:meth:`hold_out`).
        truncated: per split, how many pairs were longer than ``max_len``.
    """

    tokenizer: BertTokenizer | None = None
    max_len: int = 0
    static_masking: bool = False
    mask_seed: int = 0
    truncated: dict[str, int] = field(default_factory=dict)

    @property
    def model_options(self) -> dict[str, int]:
        """The sizes a BERT model takes from this data."""
        return {"vocab_size": self.tokenizer.vocab_size}

    def mask_batch(self, tokens: torch.Tensor, segments: torch.Tensor, valid_len: torch.Tensor,
                   mlm_labels: torch.Tensor, nsp_labels: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """A batch with fresh masked-language-model targets (any stored ones are replaced)."""
        tok = self.tokenizer
        masked, labels = mask_tokens(tokens, valid_len, special_ids=tok.special_ids,
                                     mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                                     generator=generator)
        return masked, segments, valid_len, labels, nsp_labels

    def hold_out(self, val_size: float | int, seed: int) -> None:
        """Move training examples into a validation split (see :meth:`DataModule.hold_out`),
        masked once with a fixed generator when the training split is masked per batch."""
        super().hold_out(val_size, seed)
        if not self.static_masking:
            self.val = self.mask_batch(*self.val,
                                       generator=torch.Generator().manual_seed(self.mask_seed))

    def train_dataloader(self) -> BucketLoader:
        transform = self.transform
        if not self.static_masking:
            transform = self.mask_batch if transform is None else self._mask_then_transform
        return self._loader(self.train, self.batch_size, shuffle=True, transform=transform)

    def _mask_then_transform(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.transform(*self.mask_batch(*batch))

    def _loader(self, split: Split, batch_size: int, shuffle: bool = False,
                transform: Callable | None = None) -> BucketLoader:
        valid_len = split[2]
        return BucketLoader(split, sort_key=valid_len,
                            trim=(valid_len, valid_len, None, valid_len, None),
                            batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                            device=self.device, transform=transform)

    def _eval_loader(self, split: Split) -> BucketLoader:
        return self._loader(split, max(self.batch_size, 256))


def encode_pairs(pairs: Sequence[Pair], tokenizer: BertTokenizer, max_len: int
                 ) -> tuple[tuple[torch.Tensor, ...], int]:
    """``<cls> a <sep> b <sep>`` of every pair, truncated to ``max_len`` (longest first, with
    a warning) and padded to it, with -100 masked-language-model labels (nothing masked yet).

    Returns:
        ``(tokens, segments, valid_len, mlm_labels, nsp_labels)`` and the number of pairs
        truncated.
    """
    encoded = tokenizer.encode_batch([a for a, _, _ in pairs], [b for _, b, _ in pairs],
                                     max_len=max_len, is_pretokenized=True)
    pad = tokenizer.pad_id
    tokens = torch.tensor([e.ids + [pad] * (max_len - len(e.ids)) for e in encoded],
                          dtype=torch.long)
    segments = torch.tensor([e.segments + [0] * (max_len - len(e.ids)) for e in encoded],
                            dtype=torch.long)
    valid_len = torch.tensor([len(e.ids) for e in encoded], dtype=torch.long)
    nsp_labels = torch.tensor([int(is_next) for _, _, is_next in pairs], dtype=torch.long)
    mlm_labels = torch.full_like(tokens, IGNORE_INDEX)
    return (tokens, segments, valid_len, mlm_labels, nsp_labels), sum(e.truncated for e in encoded)


def encode_sentences(sentences: Sequence[list[str]], tokenizer: BertTokenizer, max_len: int
                     ) -> tuple[torch.Tensor, ...]:
    """``<cls> a <sep>`` of single sentences (masked-LM examples only), in the layout of
    :func:`encode_pairs`, with next-sentence labels of -100: no loss or accuracy reads them."""
    encoded = tokenizer.encode_batch(list(sentences), max_len=max_len, is_pretokenized=True)
    pad = tokenizer.pad_id
    tokens = torch.tensor([e.ids + [pad] * (max_len - len(e.ids)) for e in encoded],
                          dtype=torch.long)
    valid_len = torch.tensor([len(e.ids) for e in encoded], dtype=torch.long)
    return (tokens, torch.zeros_like(tokens), valid_len, torch.full_like(tokens, IGNORE_INDEX),
            torch.full_like(valid_len, IGNORE_INDEX))


def fra_eng_sentences(data_dir: str | None = None) -> list[list[str]]:
    """The distinct English sentences of the ``fra-eng`` dataset's training split (its default
    split: never its validation or test sentences), as words: unlabelled English text."""
    from divekit.data.translation import fetch_fra_eng, read_pairs, split_by_source

    splits = split_by_source(read_pairs(fetch_fra_eng(data_dir), 10), 0.05, 0.05, 0)
    return [list(words) for words in dict.fromkeys(tuple(english)
                                                   for english, _ in splits["train"])]


def _resolve_tokenizer(tokenizer: str | os.PathLike, train_paragraphs: list[list[str]],
                       min_freq: int, vocab_size: int) -> BertTokenizer:
    if tokenizer == "word":
        return BertTokenizer.word_level(
            [sentence.split() for paragraph in train_paragraphs for sentence in paragraph],
            min_freq=min_freq)
    if tokenizer == "wordpiece":
        lines = [" ".join(paragraph) for paragraph in train_paragraphs]
        return BertTokenizer.train_wordpiece(lines, vocab_size=vocab_size)
    if not isinstance(tokenizer, str | os.PathLike):
        raise DivekitError(f"option tokenizer must be 'word', 'wordpiece' or a path, got "
                           f"{tokenizer!r}")
    return BertTokenizer.load(Path(tokenizer).expanduser())


def _check_options(max_len, min_freq, vocab_size, static_masking, data_seed) -> None:
    for name, value, least in (("max_len", max_len, 5), ("min_freq", min_freq, 1),
                               ("vocab_size", vocab_size, 6), ("data_seed", data_seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DivekitError(f"{name} must be an integer of at least {least}, got {value!r}")
    if not isinstance(static_masking, bool):
        raise DivekitError(f"static_masking must be true or false, got {static_masking!r}")


@register_dataset("wikitext-2-bert", section=SECTION, files=("valid.txt", "test.txt"))
def wikitext2_bert(
    data_dir: str | None = None,
    max_len: int = 64,
    min_freq: int = 5,
    tokenizer: str = "word",
    vocab_size: int = 8000,
    static_masking: bool = False,
    data_seed: int = 0,
    squad_passages: bool = False,
    fra_eng: bool = False,
) -> BertPretrainData:
    """WikiText-2 as BERT pretraining pairs (next sentence + masked tokens), max_len 64.

    Reads the ``wikitext-2/`` folder of the ``wikitext-2`` dataset. With ``train.txt``
    (``wiki.train.tokens``, the book's file) the splits are train / val / test = ``train.txt``
    / ``valid.txt`` / ``test.txt``. With only ``valid.txt`` and ``test.txt`` (the files the
    language-model chapters need) ``valid.txt`` trains, ``test.txt`` tests and there is no
    validation split; ``--val-size`` can still hold one out of the training pairs.

    Args:
        data_dir: folder holding the ``wikitext-2/`` sub-folder.
        max_len: tokens per example, specials included (the book's 64); longer pairs lose
            tokens from their longer sentence (a warning says how many).
        min_freq: for ``tokenizer="word"``: rarer words of the training split become
            ``<unk>`` (the book's 5).
        tokenizer: ``"word"`` (the course's word-level vocabulary of the training split),
            ``"wordpiece"`` (trained on the training paragraphs), or a path
            :meth:`BertTokenizer.load` reads (``tokenizer.json``, ``vocab.txt``, a folder).
        vocab_size: for ``tokenizer="wordpiece"``: pieces to learn.
        static_masking: mask the training split once at build time, as the book does; by
            default every training batch is masked afresh.
        data_seed: seeds the next-sentence pairs and the fixed masking of the evaluation
            splits (named so as not to clash with the training seed of ``load_data``).
        squad_passages: also train on the paragraphs of SQuAD's training articles
            (:func:`squad_paragraphs`; about as much text again as ``valid.txt``).
        fra_eng: also train the masked LM on the English sentences of fra-eng's training
            split (:func:`fra_eng_sentences`: 98,607 short sentences, no next-sentence
            label).
    """
    _check_options(max_len, min_freq, vocab_size, static_masking, data_seed)
    files = wikitext2_files(data_dir)
    paragraphs = {split: read_paragraphs(path) for split, path in files.items()}
    for split, found in paragraphs.items():
        if not found:
            raise DataError(f"{files[split]} has no line of two or more sentences (' . ' "
                            "between them): is it a WikiText file?")
    if squad_passages:
        paragraphs["train"] = paragraphs["train"] + squad_paragraphs(data_dir)
    singles = fra_eng_sentences(data_dir) if fra_eng else []
    text = paragraphs["train"] + [[" ".join(words)] for words in singles]
    tok = _resolve_tokenizer(tokenizer, text, min_freq, vocab_size)
    generator = torch.Generator().manual_seed(data_seed)
    tensors, truncated = {}, {}
    for split in files:  # train first, then the others: one generator, a fixed order
        pairs = next_sentence_pairs(paragraphs[split], generator)
        with warnings.catch_warnings():  # warned below, naming the split
            warnings.simplefilter("ignore", UserWarning)
            tensors[split], truncated[split] = encode_pairs(pairs, tok, max_len)
        if truncated[split]:
            warnings.warn(f"wikitext-2-bert, {split} split: {truncated[split]} of {len(pairs)} "
                          f"pairs were longer than max_len={max_len} tokens and were truncated",
                          stacklevel=2)
    if singles:
        extra = encode_sentences(singles, tok, max_len)
        tensors["train"] = tuple(torch.cat(parts) for parts in zip(tensors["train"], extra,
                                                                    strict=True))
    data = BertPretrainData("wikitext-2-bert", train=tensors["train"], test=tensors["test"],
                            val=tensors.get("val"), task="bert-pretraining", tokenizer=tok,
                            max_len=max_len, static_masking=static_masking,
                            mask_seed=data_seed, truncated=truncated)
    for split in files:
        if split != "train" or static_masking:
            setattr(data, split, data.mask_batch(*tensors[split], generator=generator))
    return data
