"""10.5 Machine translation and the dataset: English-French sentence pairs from Tatoeba.

``fra-eng`` reads ``fra.txt`` (one ``English<TAB>French`` pair per line, 167,130 of them in
d2l's ``fra-eng.zip``) with the course's preprocessing, indexes words with two vocabularies
(``<unk> <pad> <bos> <eos>`` first) and stores each split as padded tensors:

* ``src`` ``(N, S)``: the English words, then ``<eos>``, then ``<pad>``; ``src_len`` ``(N,)``;
* ``tgt_in`` ``(N, T)``: ``<bos>`` then the French words (teacher forcing); ``tgt_out``: the
  French words then ``<eos>`` (the next token at every position of ``tgt_in``), padded;
* ``ref_id`` ``(N,)``: on the first pair of each distinct English sentence of an evaluation
  split, the index of that sentence in :attr:`TranslationData.references` (all its French
  translations in the split: the references for BLEU); ``-1`` elsewhere.

fra.txt lists many English sentences several times, once per translation. The default split is
by English sentence (seeded), so no sentence is on both sides. ``num_train``/``num_val`` give
the book's setting instead: the first pairs of the file, vocabularies from all of them.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from divekit.data.buckets import BucketLoader
from divekit.data.download import download, file_digest, verify_digest
from divekit.data.paths import data_root, downloads_allowed
from divekit.data.registry import DataModule, Split, register_dataset
from divekit.errors import DataError, DivekitError
from divekit.text.tokenize import preprocess_nmt
from divekit.text.vocab import Vocab

FRA_ENG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"
FRA_ENG_ZIP_SHA1 = "94646ad1522d915e7b0f9296181140edcf86a4f5"  # published by d2l
FRA_TXT_MD5 = "cebd8a015c7f8c813d2c7f52716ea2dd"  # of the fra.txt inside that zip
SPECIALS = ("<pad>", "<bos>", "<eos>")
SECTION = "10.5 Machine Translation and the Dataset"

Pair = tuple[list[str], list[str]]


@dataclass(repr=False)
class TranslationData(DataModule):
    """A :class:`DataModule` of sentence pairs: batches ``(src, src_len, tgt_in, tgt_out,
    ref_id)`` of similar lengths (see :class:`~divekit.data.buckets.BucketLoader`).

    Attributes:
        src_vocab, tgt_vocab: source (English) and target (French) vocabularies.
        references: per evaluation split, for each distinct source sentence, its reference
            translations (the preprocessed French strings).
        sources: per evaluation split, the distinct source sentences, aligned with references.
        max_target_len: the most target tokens a pair has (``<eos>`` included): the decoding
            limit.
    """

    src_vocab: Vocab | None = None
    tgt_vocab: Vocab | None = None
    references: dict[str, list[list[str]]] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    max_target_len: int = 0

    @property
    def model_options(self) -> dict[str, int]:
        """The sizes a translation model takes from this data."""
        return {"src_vocab_size": len(self.src_vocab), "tgt_vocab_size": len(self.tgt_vocab)}

    def hold_out(self, val_size: float | int, seed: int) -> None:
        raise DivekitError(f"{self.name} splits by source sentence itself (a random split of "
                           "pairs would put one sentence on both sides); set its option "
                           "val_fraction instead of val_size")

    def _loader(self, split: Split, batch_size: int, shuffle: bool = False,
                transform=None) -> BucketLoader:
        src, src_len, tgt_in, tgt_out, ref_id = split
        tgt_len = (tgt_out != self.tgt_vocab["<pad>"]).sum(1)
        return BucketLoader(split, sort_key=src_len * (tgt_len.max() + 1) + tgt_len,
                            trim=(src_len, None, tgt_len, tgt_len, None),
                            batch_size=batch_size, shuffle=shuffle, seed=self.seed,
                            device=self.device)

    def _eval_loader(self, split: Split) -> BucketLoader:
        return self._loader(split, max(self.batch_size, 256))


def read_pairs(path: Path, max_words: int = 0, max_pairs: int = 0) -> list[Pair]:
    """The preprocessed, whitespace-tokenized ``(english, french)`` pairs of a fra.txt file.

    Args:
        path: tab-separated pairs, one per line (a third column, as in newer releases, is
            ignored).
        max_words: keep only pairs whose English side has at most this many words, counted
            before preprocessing (0 = all).
        max_pairs: stop after this many pairs (0 = read them all).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}") from e
    pairs = []
    raw_lines = text.split("\n")
    # Preprocessing never adds or removes line breaks or tabs: one pass over the whole text,
    # or line by line when only the first pairs are wanted.
    cleaned = (map(preprocess_nmt, raw_lines) if max_pairs
               else preprocess_nmt(text).split("\n"))
    for number, (raw, line) in enumerate(zip(raw_lines, cleaned, strict=True), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{path}, line {number}: expected 'English<TAB>French', got "
                            f"{raw[:60]!r}")
        if max_words and len(raw.split("\t", 1)[0].split()) > max_words:
            continue
        english, french = parts[0].split(), parts[1].split()
        if english and french:
            pairs.append((english, french))
        if len(pairs) == max_pairs:
            break
    if not pairs:
        raise DataError(f"{path} holds no sentence pairs" + (
            f" of at most {max_words} English words" if max_words else ""))
    return pairs


def split_by_source(pairs: list[Pair], val_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, list[Pair]]:
    """Split pairs so that every English sentence, with all its translations, is in one split.

    The distinct English sentences (in order of first appearance) are permuted with ``seed``;
    the first ``test_fraction`` of them go to ``test``, the next ``val_fraction`` to ``val``.
    """
    sentences = list(dict.fromkeys(" ".join(english) for english, _ in pairs))
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(test_fraction * len(sentences)), round(val_fraction * len(sentences))
    if n_test < 1 or (val_fraction and n_val < 1) or n_test + n_val >= len(sentences):
        raise DivekitError(f"{len(sentences)} distinct sentences cannot be split into "
                           f"val_fraction={val_fraction} and test_fraction={test_fraction}")
    split_of = {}
    for rank, index in enumerate(order.tolist()):
        split_of[sentences[index]] = ("test" if rank < n_test
                                      else "val" if rank < n_test + n_val else "train")
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for pair in pairs:
        splits[split_of[" ".join(pair[0])]].append(pair)
    return {name: split for name, split in splits.items() if split}


def encode_pairs(pairs: list[Pair], src_vocab: Vocab, tgt_vocab: Vocab, num_steps: int = 0,
                 references: bool = False) -> tuple[tuple[torch.Tensor, ...], list, list]:
    """Index, truncate and pad pairs into ``(src, src_len, tgt_in, tgt_out, ref_id)``.

    Args:
        num_steps: tokens kept per side (``<eos>`` included; the book's ``num_steps``);
            0 = the longest sentence of the pairs.
        references: number the distinct source sentences (``ref_id``) and collect their
            translations; otherwise ``ref_id`` is -1 everywhere.

    Returns:
        The tensors, the reference lists and the source sentences (empty without
        ``references``).
    """
    pad, bos, eos = (tgt_vocab[token] for token in SPECIALS)
    src_seqs = [src_vocab[english] + [eos] for english, _ in pairs]
    tgt_seqs = [tgt_vocab[french] + [eos] for _, french in pairs]
    src_steps = num_steps or max(map(len, src_seqs))
    tgt_steps = num_steps or max(map(len, tgt_seqs))
    n = len(pairs)
    src = torch.tensor([(s + [pad] * src_steps)[:src_steps] for s in src_seqs], dtype=torch.long)
    tgt_out = torch.tensor([(t + [pad] * tgt_steps)[:tgt_steps] for t in tgt_seqs],
                           dtype=torch.long)
    src_len = (src != pad).sum(1)
    tgt_in = torch.cat([torch.full((n, 1), bos), tgt_out[:, :-1]], dim=1)
    # <bos> then the target: where the target was cut, its last token is dropped, as the book.
    tgt_in[tgt_in == eos] = pad
    ref_id = torch.full((n,), -1, dtype=torch.long)
    refs: dict[str, list[str]] = {}
    if references:
        for i, (english, french) in enumerate(pairs):
            key = " ".join(english)
            if key not in refs:
                ref_id[i] = len(refs)
                refs[key] = []
            refs[key].append(" ".join(french))
    return (src, src_len, tgt_in, tgt_out, ref_id), list(refs.values()), list(refs)


def fetch_fra_eng(data_dir: str | None = None) -> Path:
    """The path of ``fra-eng/fra.txt``; when missing, d2l's zip is downloaded, its sha1
    checked and ``fra.txt`` extracted."""
    root = data_root(data_dir) / "fra-eng"
    path = root / "fra.txt"
    if path.is_file():
        return path
    reason = " Downloads are off (DIVEKIT_OFFLINE is set)."
    if downloads_allowed():
        archive = root / "fra-eng.zip"
        try:
            download(FRA_ENG_URL, archive, timeout=20)
            verify_digest(archive, FRA_ENG_ZIP_SHA1, "sha1")
            _extract(archive, "fra-eng/fra.txt", path)
            return path
        except DataError as e:
            reason = f" Downloading it failed: {e}"
        finally:
            archive.unlink(missing_ok=True)
    raise DataError(f"fra-eng file missing in {root}: fra.txt.{reason} Put fra.txt from "
                    f"{FRA_ENG_URL} in that folder, or point --data-dir / DIVEKIT_DATA at a "
                    "folder that has a 'fra-eng' sub-folder.")


def _extract(archive: Path, member: str, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        if file_digest(tmp) != FRA_TXT_MD5:
            raise DataError(f"{member} in {archive} is not the original file (md5 differs)")
        tmp.replace(dest)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{archive} is not d2l's fra-eng.zip: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


@register_dataset("fra-eng", section=SECTION, files=("fra.txt",))
def fra_eng(
    data_dir: str | None = None,
    max_words: int = 10,
    num_steps: int = 0,
    min_freq: int = 2,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    num_train: int = 0,
    num_val: int = 0,
) -> TranslationData:
    """English-French pairs (Tatoeba): 157,920 of at most 10 English words, split by sentence.

    Args:
        data_dir: folder holding the ``fra-eng/`` sub-folder.
        max_words: keep pairs whose English side has at most this many words (0 = all).
        num_steps: tokens kept per sentence, ``<eos>`` included (0 = all of the longest).
        min_freq: words seen fewer times in the training pairs become ``<unk>``.
        val_fraction, test_fraction: shares of the distinct English sentences held out.
        split_seed: seeds the split (not the training shuffle).
        num_train, num_val: the book's setting (d2l 1.0's ``MTFraEng``): the first
            ``num_train`` pairs of the file train and the next ``num_val`` are the test split,
            vocabularies from all of them; ``max_words`` and the fractions are then unused.
    """
    for name, value in (("max_words", max_words), ("num_steps", num_steps),
                        ("num_train", num_train), ("num_val", num_val),
                        ("min_freq", min_freq)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DivekitError(f"{name} must be a non-negative integer, got {value!r}")
    if num_val and not num_train:
        raise DivekitError("num_val needs num_train (the book's setting: the first num_train "
                           "pairs train, the next num_val test)")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, int | float) or not 0 <= value < 1:
            raise DivekitError(f"{name} must be in [0, 1), got {value!r}")
    if num_train:
        pairs = read_pairs(fetch_fra_eng(data_dir), max_pairs=num_train + num_val)
        if num_train + num_val > len(pairs):
            raise DivekitError(f"num_train + num_val = {num_train + num_val} pairs, but "
                               f"fra.txt has {len(pairs)}")
        splits = {"train": pairs[:num_train], "test": pairs[num_train:] or pairs[:num_train]}
        vocab_pairs = pairs
    else:
        splits = split_by_source(read_pairs(fetch_fra_eng(data_dir), max_words),
                                 val_fraction, test_fraction, split_seed)
        vocab_pairs = splits["train"]
    return build_translation("fra-eng", splits, vocab_pairs, num_steps, min_freq)


def build_translation(name: str, splits: dict[str, list[Pair]], vocab_pairs: list[Pair],
                      num_steps: int = 0, min_freq: int = 2) -> TranslationData:
    """Index tokenized pair splits with vocabularies of ``vocab_pairs`` into a
    :class:`TranslationData`."""
    src_vocab = Vocab([e for e, _ in vocab_pairs], min_freq=min_freq, reserved_tokens=SPECIALS)
    tgt_vocab = Vocab([f for _, f in vocab_pairs], min_freq=min_freq, reserved_tokens=SPECIALS)
    tensors, references, sources = {}, {}, {}
    for split, pairs in splits.items():
        tensors[split], references[split], sources[split] = encode_pairs(
            pairs, src_vocab, tgt_vocab, num_steps, references=split != "train")
    longest = max(len(french) + 1 for pairs in splits.values() for _, french in pairs)
    return TranslationData(
        name, train=tensors["train"], test=tensors["test"], val=tensors.get("val"),
        task="translation", src_vocab=src_vocab, tgt_vocab=tgt_vocab, references=references,
        sources=sources, max_target_len=min(longest, num_steps) if num_steps else longest)
