"""BERT pretraining data (d2l 15.9): paragraphs, next-sentence pairs, masking, the DataModule on
the real WikiText-2 files and on small files written here."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from divekit.data.bert import (
    BertPretrainData,
    mask_tokens,
    next_sentence_pairs,
    read_paragraphs,
    wikitext2_bert,
)
from divekit.data.registry import load_data
from divekit.errors import DataError, DivekitError
from tests.conftest import real_data_dir

SPECIALS = [0, 1, 2, 3, 4]  # <unk> <pad> <mask> <cls> <sep>, as the word-level vocabulary
PAD, MASK, CLS, SEP = 1, 2, 3, 4


def book_paragraphs(path: Path) -> list[list[str]]:
    """The book's _read_wiki, kept naive: lines of 2+ sentences, lower case, split on ' . '."""
    with open(path, encoding="utf-8") as f:
        paragraphs = [line.strip().lower().split(" . ") for line in f]
    return [p for p in paragraphs if len(p) >= 2]


def expected_masked_count(valid_len: int, candidates: int) -> int:
    return min(max(1, round(valid_len * 0.15)), candidates)


def check_batch(batch, tok, max_len):
    """Every field of a pretraining batch as the spec gives it."""
    tokens, segments, valid_len, mlm_labels, nsp_labels = batch
    size, length = tokens.shape
    assert [t.dtype for t in batch] == [torch.int64] * 5
    assert segments.shape == mlm_labels.shape == (size, length)
    assert valid_len.shape == nsp_labels.shape == (size,)
    assert length == int(valid_len.max()) <= max_len  # trimmed to the longest
    assert set(nsp_labels.tolist()) <= {0, 1}
    for row in range(size):
        n = int(valid_len[row])
        original = torch.where(mlm_labels[row] != -100, mlm_labels[row], tokens[row])
        seps = (original[:n] == tok.sep_id).nonzero().squeeze(1).tolist()
        assert original[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
        expected_segments = [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1) + [0] * (length - n)
        assert segments[row].tolist() == expected_segments
        assert (tokens[row, n:] == tok.pad_id).all()
        chosen = (mlm_labels[row] != -100).nonzero().squeeze(1)
        assert chosen.numel() and int(chosen.max()) < n
        assert not torch.isin(mlm_labels[row, chosen], torch.tensor(tok.special_ids)).any()
        candidates = int((~torch.isin(original[:n], torch.tensor(tok.special_ids))).sum())
        assert chosen.numel() == expected_masked_count(n, candidates)


# ------------------------------------------------------------------ paragraphs and pairs


def test_read_paragraphs_keeps_lines_of_two_or_more_sentences(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(" \n = Title = \n \n The Cat sat . It ran away . \n One sentence only . \n"
                    " A . B . C \n", encoding="utf-8")
    assert read_paragraphs(path) == [["the cat sat", "it ran away ."], ["a", "b", "c"]]
    with pytest.raises(DataError, match="missing.txt"):
        read_paragraphs(tmp_path / "missing.txt")


def test_next_sentence_pairs_follow_the_book():
    paragraphs = [[f"p{p} s{s}" for s in range(2 + p % 5)] for p in range(400)]
    pairs = next_sentence_pairs(paragraphs, 7)
    consecutive = [(p[i].split(), p[i + 1].split()) for p in paragraphs for i in range(len(p) - 1)]
    assert [a for a, _, _ in pairs] == [a for a, _ in consecutive]
    every_sentence = {s for p in paragraphs for s in p}
    for (_, b, is_next), (_, true_b) in zip(pairs, consecutive, strict=True):
        assert b == true_b if is_next else " ".join(b) in every_sentence
    share = sum(is_next for _, _, is_next in pairs) / len(pairs)
    assert abs(share - 0.5) < 0.05  # 1,600 pairs: 4 standard deviations
    random_paragraphs = {b[0] for _, b, is_next in pairs if not is_next}
    assert len(random_paragraphs) > 200  # drawn from all over, not from the neighbourhood
    assert next_sentence_pairs(paragraphs, 7) == pairs
    assert next_sentence_pairs(paragraphs, torch.Generator().manual_seed(7)) == pairs
    assert next_sentence_pairs(paragraphs, 8) != pairs


# ------------------------------------------------------------------ masking


def _batch(rows=4000, length=64, vocab_size=1000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    valid_len = torch.randint(5, length + 1, (rows,), generator=generator)
    tokens = torch.randint(5, vocab_size, (rows, length), generator=generator)
    positions = torch.arange(length)
    tokens[positions >= valid_len[:, None]] = PAD
    tokens[:, 0] = CLS
    tokens[torch.arange(rows), valid_len - 1] = SEP
    middle = (valid_len // 2).clamp(min=1)
    tokens[torch.arange(rows), middle] = SEP
    tokens[::7, 1] = 0  # some <unk> in the text
    return tokens, valid_len


def test_mask_tokens_picks_k_ordinary_positions_per_row():
    tokens, valid_len = _batch()
    masked, labels = mask_tokens(tokens, valid_len, special_ids=SPECIALS, mask_id=MASK,
                                 vocab_size=1000, generator=torch.Generator().manual_seed(1))
    chosen = labels != -100
    for row in range(len(tokens)):
        n = int(valid_len[row])
        ordinary = sum(int(t) not in SPECIALS for t in tokens[row, :n])
        assert int(chosen[row].sum()) == expected_masked_count(n, ordinary)
    special_or_padding = torch.isin(tokens, torch.tensor(SPECIALS))
    assert not (chosen & special_or_padding).any()
    assert torch.equal(labels[chosen], tokens[chosen])  # the original ids
    assert torch.equal(masked[~chosen], tokens[~chosen])  # the rest untouched
    assert not torch.isin(masked[chosen & (masked != MASK)], torch.tensor(SPECIALS)).any()

    # 80% <mask>, 10% a random token, 10% kept (a random draw equals the original 1/995).
    total = int(chosen.sum())
    assert total > 15_000
    became_mask = int((masked[chosen] == MASK).sum()) / total
    kept = int((masked[chosen] == tokens[chosen]).sum()) / total
    assert abs(became_mask - 0.8) < 0.012 and abs(kept - 0.1) < 0.01
    assert abs(1 - became_mask - kept - 0.1) < 0.01


def test_mask_tokens_chooses_positions_uniformly_and_reproducibly():
    rows, length = 6000, 20
    tokens = torch.randint(5, 50, (rows, length))
    tokens[:, 0], tokens[:, -1] = CLS, SEP
    valid_len = torch.full((rows,), length)
    _, labels = mask_tokens(tokens, valid_len, special_ids=SPECIALS, mask_id=MASK,
                            vocab_size=50, generator=torch.Generator().manual_seed(0))
    per_position = (labels != -100).sum(0).float()
    assert per_position[0] == per_position[-1] == 0
    expected = rows * 3 / 18  # k = round(20 * 0.15) = 3 of the 18 ordinary positions
    assert ((per_position[1:-1] - expected).abs() < 5 * expected ** 0.5).all()
    again = mask_tokens(tokens, valid_len, special_ids=SPECIALS, mask_id=MASK, vocab_size=50,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[1], labels)
    # A row with a single ordinary token still gets k = 1, and only that one.
    one = torch.tensor([[CLS, 9, SEP, SEP, PAD]])
    _, labels = mask_tokens(one, torch.tensor([4]), special_ids=SPECIALS, mask_id=MASK,
                            vocab_size=50)
    assert labels.tolist() == [[-100, 9, -100, -100, -100]]
    with pytest.raises(DivekitError, match=r"\(B, L\)"):
        mask_tokens(one[0], torch.tensor([4]), special_ids=SPECIALS, mask_id=MASK, vocab_size=50)


# ------------------------------------------------------------------ the real WikiText-2 files


@pytest.fixture(scope="module")
def real():
    root = real_data_dir("wikitext-2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = wikitext2_bert(data_dir=str(root))
    return root, data, [str(w.message) for w in caught]


def test_real_splits_pairs_and_vocabulary(real):
    root, data, messages = real
    assert isinstance(data, BertPretrainData) and data.task == "bert-pretraining"
    assert data.val is None and data.class_names == []
    train_paragraphs = book_paragraphs(root / "wikitext-2" / "valid.txt")
    test_paragraphs = book_paragraphs(root / "wikitext-2" / "test.txt")
    assert len(train_paragraphs) > 1000
    for split, paragraphs in ((data.train, train_paragraphs), (data.test, test_paragraphs)):
        assert len(split[0]) == sum(len(p) - 1 for p in paragraphs) > 5000
        assert abs(split[4].float().mean().item() - 0.5) < 0.03
        assert split[0].shape[1] == 64
    # The course's vocabulary: words of the training sentences seen 5+ times, plus 5 specials.
    counts = Counter(w for p in train_paragraphs for s in p for w in s.split())
    assert data.tokenizer.vocab_size == 5 + sum(c >= 5 for w, c in counts.items()
                                                if w != "<unk>")
    assert data.model_options == {"vocab_size": data.tokenizer.vocab_size}
    # Long pairs were cut to max_len, and the warnings said how many.
    assert 0 < data.truncated["train"] < len(data.train[0])
    assert int((data.train[2] == 64).sum()) >= data.truncated["train"]
    assert any(f"{data.truncated['test']} of {len(data.test[0])}" in m and "max_len=64" in m
               for m in messages)


def test_real_batches_have_the_pretraining_format(real):
    _, data, _ = real
    data.batch_size = 64
    torch.manual_seed(0)
    loader = data.train_dataloader()
    batches = [batch for _, batch in zip(range(4), loader, strict=False)]
    for batch in batches:
        check_batch(batch, data.tokenizer, 64)
    # Masked afresh: the same batches of the next pass hide other tokens.
    again = [batch for _, batch in zip(range(4), data.train_dataloader(), strict=False)]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(batches, again, strict=True))
    assert not all(torch.equal(a[3], b[3]) for a, b in zip(batches, again, strict=True))
    torch.manual_seed(0)
    replay = [batch for _, batch in zip(range(4), data.train_dataloader(), strict=False)]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(batches, replay, strict=True))
    tests = list(data.test_dataloader())
    assert sum(len(b[0]) for b in tests) == len(data.test[0])
    for batch in tests[:3]:
        check_batch(batch, data.tokenizer, 64)
    assert all(torch.equal(a[3], b[3]) for a, b in zip(tests, data.test_dataloader(),
                                                        strict=True))  # masked once


def test_real_true_pairs_are_consecutive_sentences(real):
    root, data, _ = real
    tok = data.tokenizer
    by_lengths = defaultdict(list)
    for paragraph in book_paragraphs(root / "wikitext-2" / "test.txt"):
        for a, b in zip(paragraph, paragraph[1:], strict=False):
            by_lengths[len(a.split()), len(b.split())].append((a.split(), b.split()))

    def same(tokens, words):  # rare words became <unk>
        return all(t == w or t == "<unk>" for t, w in zip(tokens, words, strict=True))

    tokens, _, valid_len, labels, nsp = data.test
    original = torch.where(labels != -100, labels, tokens)
    checked = 0
    for row in torch.nonzero((nsp == 1) & (valid_len < 64)).squeeze(1)[:300].tolist():
        pieces = tok.to_tokens(original[row, 1 : valid_len[row] - 1])
        cut = pieces.index("<sep>")
        a, b = pieces[:cut], pieces[cut + 1 :]
        assert any(same(a, x) and same(b, y) for x, y in by_lengths[len(a), len(b)]), (a, b)
        checked += 1
    assert checked == 300


# ------------------------------------------------------------------ small files written here


def _write(folder: Path, name: str, paragraphs: list[list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [" = Heading = ", ""] + [" " + " . ".join(p) + " . " for p in paragraphs]
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _sentences(seed: int, count: int, words: int = 6) -> list[list[str]]:
    generator = torch.Generator().manual_seed(seed)
    vocabulary = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "log", "big", "small",
                  "red", "old", "new", "tree"]
    ids = torch.randint(len(vocabulary), (count, 3, words), generator=generator)
    return [[" ".join(vocabulary[i] for i in sentence) for sentence in paragraph]
            for paragraph in ids.tolist()]


@pytest.fixture
def small_root(tmp_path) -> Path:
    _write(tmp_path / "wikitext-2", "valid.txt", _sentences(0, 40))
    _write(tmp_path / "wikitext-2", "test.txt", _sentences(1, 20))
    return tmp_path


def test_small_files_two_splits_and_reproducible(small_root):
    data = wikitext2_bert(data_dir=str(small_root), min_freq=1)
    assert len(data.train[0]) == 80 and len(data.test[0]) == 40 and data.val is None
    assert data.tokenizer.vocab_size == 5 + 15 + 1  # the words, and "." of the last sentences
    again = wikitext2_bert(data_dir=str(small_root), min_freq=1)
    for split in ("train", "test"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(data, split), getattr(again, split),
                                                     strict=True))
    other = wikitext2_bert(data_dir=str(small_root), min_freq=1, data_seed=1)
    assert not torch.equal(other.test[4], data.test[4])
    assert (data.train[3] == -100).all()  # masked per batch, not stored
    assert (data.test[3] != -100).any()
    # --val-size holds out training pairs and masks them once.
    held = load_data("wikitext-2-bert", batch_size=8, data_dir=str(small_root), val_size=16,
                     min_freq=1)
    assert len(held.val[0]) == 16 and len(held.train[0]) == 64
    for batch in held.val_dataloader():
        check_batch(batch, held.tokenizer, 64)


def test_small_files_with_train_txt_give_three_splits(small_root):
    _write(small_root / "wikitext-2", "train.txt", [["zebra zebra zebra", "yak yak"]] * 30)
    data = wikitext2_bert(data_dir=str(small_root), min_freq=1)
    assert (len(data.train[0]), len(data.val[0]), len(data.test[0])) == (30, 80, 40)
    tok = data.tokenizer
    assert tok.to_tokens(range(5, tok.vocab_size)) == ["zebra", "yak", "."]
    assert (data.val[3] != -100).any() and (data.train[3] == -100).all()


def test_static_masking_stores_the_training_masks(small_root):
    data = load_data("wikitext-2-bert", batch_size=8, data_dir=str(small_root), min_freq=1,
                     static_masking=True)
    assert (data.train[3] != -100).sum(1).min() >= 1
    first, second = list(data.train_dataloader()), list(data.train_dataloader())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])
               for a, b in zip(first, second, strict=True))
    for batch in first:
        check_batch(batch, data.tokenizer, 64)


def test_wordpiece_and_saved_tokenizers_and_truncation(small_root, tmp_path):
    data = wikitext2_bert(data_dir=str(small_root), tokenizer="wordpiece", vocab_size=120)
    tok = data.tokenizer
    assert tok.to_tokens(range(5)) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    check_batch(next(iter(data.test_dataloader())), tok, 64)
    (tmp_path / "run").mkdir()
    saved = tok.save(tmp_path / "run")
    assert saved == tmp_path / "run" / "tokenizer.json"
    loaded = wikitext2_bert(data_dir=str(small_root), tokenizer=str(saved.parent))
    assert torch.equal(loaded.test[0], data.test[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = wikitext2_bert(data_dir=str(small_root), min_freq=1, max_len=8)
    assert [str(w.message) for w in caught] == [
        f"wikitext-2-bert, {split} split: {n} of {n} pairs were longer than max_len=8 tokens "
        "and were truncated" for split, n in (("train", 80), ("test", 40))]
    assert short.train[0].shape == (80, 8) and short.truncated == {"train": 80, "test": 40}
    check_batch(next(iter(short.train_dataloader())), short.tokenizer, 8)


def test_bad_options_and_missing_files(small_root, tmp_path):
    with pytest.raises(DataError, match=r"valid\.txt, test\.txt.*wikitext-2-v1\.zip"):
        wikitext2_bert(data_dir=str(tmp_path / "empty"))
    with pytest.raises(DivekitError, match="max_len"):
        wikitext2_bert(data_dir=str(small_root), max_len=4)
    with pytest.raises(DivekitError, match="tokenizer.json"):
        wikitext2_bert(data_dir=str(small_root), tokenizer=str(tmp_path / "nothing"))


@pytest.mark.slow
def test_extra_pretraining_text_comes_only_from_training_sides():
    import json

    from divekit.data.bert import fra_eng_sentences, squad_paragraphs
    from divekit.data.squad import split_articles
    from divekit.data.translation import read_pairs, split_by_source

    root = real_data_dir("squad-v1.1")
    real_data_dir("fra-eng")
    passages = squad_paragraphs(str(root))
    articles = json.loads((root / "squad-v1.1" / "dev-v1.1.json").read_text())["data"]
    _, held_out = split_articles(articles, 0.2, 0)
    held_text = {" ".join(p["context"].lower().split()) for a in held_out
                 for p in a["paragraphs"]}
    assert len(passages) > 1000
    for paragraph in passages[:200] + passages[-200:]:
        joined = "".join(" ".join(paragraph).split())
        assert all(joined != "".join(text.split()) for text in held_text)
    sentences = fra_eng_sentences(str(root))
    splits = split_by_source(read_pairs(root / "fra-eng" / "fra.txt", 10), 0.05, 0.05, 0)
    evaluated = {tuple(english) for split in ("val", "test") for english, _ in splits[split]}
    assert len(sentences) == len(set(map(tuple, sentences))) > 90_000
    assert not evaluated & set(map(tuple, sentences))
    data = load_data("wikitext-2-bert", 64, data_dir=str(root), squad_passages=True,
                     fra_eng=True, tokenizer="wordpiece")
    nsp = data.train[4]
    assert int((nsp == -100).sum()) == len(sentences)  # single sentences: masked LM only
    assert int((nsp != -100).sum()) > 6216 + 7000  # WikiText's pairs and SQuAD's
