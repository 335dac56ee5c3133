import os
from pathlib import Path

import pytest
import torch

import divekit as dk
from divekit.data.buckets import BucketLoader
from divekit.data.translation import encode_pairs, read_pairs, split_by_source
from divekit.text.tokenize import preprocess_nmt
from divekit.text.vocab import Vocab

DATA = os.environ.get("DIVEKIT_DATA")
needs_data = pytest.mark.skipif(
    not (DATA and (Path(DATA) / "fra-eng" / "fra.txt").is_file()),
    reason="needs fra-eng/fra.txt under DIVEKIT_DATA")

LINES = [
    "Go.\tVa !", "Go.\tMarche.", "Hi.\tSalut !", "Run!\tCours\u202f!", "Run!\tCourez\u202f!",
    "Who?\tQui ?", "I lost.\tJ'ai perdu.", "He's calm.\tIl est calme.",
    "I'm home.\tJe suis chez moi.", "Wait...\tAttends\xa0!", "We try hard every day.\tNous "
    "essayons fort chaque jour.", "A very long sentence with far more than ten English words "
    "in it.\tUne phrase.",
]


def write_fra(tmp_path, lines=LINES):
    folder = tmp_path / "fra-eng"
    folder.mkdir()
    (folder / "fra.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_preprocessing_is_the_courses():
    assert preprocess_nmt("Go.\tVa\u202f!") == "go .\tva !"
    assert preprocess_nmt("Wait...") == "wait . . ."
    assert preprocess_nmt("Hi, Tom!") == "hi , tom !"
    assert preprocess_nmt("Qui ?") == "qui ?"  # already spaced: unchanged
    assert preprocess_nmt("J'ai\xa0faim.") == "j'ai faim ."


def test_read_pairs_tokenizes_and_filters_by_english_words(tmp_path):
    path = write_fra(tmp_path) / "fra-eng" / "fra.txt"
    pairs = read_pairs(path)
    assert pairs[0] == (["go", "."], ["va", "!"])
    assert pairs[3] == (["run", "!"], ["cours", "!"])
    assert len(read_pairs(path, max_words=10)) == len(LINES) - 1
    assert len(read_pairs(path, max_words=1)) == 7  # go. go. hi. run! run! who? wait...


def test_a_line_without_a_tab_is_a_clear_error(tmp_path):
    path = write_fra(tmp_path, ["Go.\tVa !", "no tab here"]) / "fra-eng" / "fra.txt"
    with pytest.raises(dk.DivekitError, match=r"line 2: expected 'English<TAB>French'"):
        read_pairs(path)


def test_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVEKIT_OFFLINE", "1")
    with pytest.raises(dk.DivekitError, match=r"fra-eng file missing in .*Downloads are off"):
        dk.load_data("fra-eng", data_dir=str(tmp_path))


def _many_pairs(n_sentences=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for s in range(n_sentences):
        for t in range(int(torch.randint(1, 4, (1,), generator=g))):
            pairs.append(([f"e{s}", "."], [f"f{s}", f"v{t}", "."]))
    return pairs


def test_split_by_source_keeps_each_sentence_on_one_side():
    pairs = _many_pairs()
    splits = split_by_source(pairs, 0.1, 0.2, seed=3)
    sides = {name: {" ".join(e) for e, _ in split} for name, split in splits.items()}
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["val"]
    assert not sides["val"] & sides["test"]
    assert sum(len(split) for split in splits.values()) == len(pairs)
    assert len(sides["test"]) == 12 and len(sides["val"]) == 6  # of 60 distinct sentences
    assert split_by_source(pairs, 0.1, 0.2, seed=3) == splits
    assert split_by_source(pairs, 0.1, 0.2, seed=4) != splits


def test_encoding_pads_truncates_and_collects_every_reference():
    pairs = [(["he", "is", "calm", "."], ["il", "est", "calme", "."]),
             (["he", "is", "calm", "."], ["il", "est", "tranquille", "."]),
             (["go", "."], ["va", "!"])]
    vocab_src = Vocab([e for e, _ in pairs], reserved_tokens=("<pad>", "<bos>", "<eos>"))
    vocab_tgt = Vocab([f for _, f in pairs], reserved_tokens=("<pad>", "<bos>", "<eos>"))
    (src, src_len, tgt_in, tgt_out, ref_id), refs, sources = encode_pairs(
        pairs, vocab_src, vocab_tgt, num_steps=0, references=True)
    assert vocab_tgt.to_tokens(tgt_in[2]) == ["<bos>", "va", "!", "<pad>", "<pad>"]
    assert vocab_tgt.to_tokens(tgt_out[2]) == ["va", "!", "<eos>", "<pad>", "<pad>"]
    assert vocab_src.to_tokens(src[2]) == ["go", ".", "<eos>", "<pad>", "<pad>"]
    assert src_len.tolist() == [5, 5, 3]
    assert ref_id.tolist() == [0, -1, 1]
    assert refs == [["il est calme .", "il est tranquille ."], ["va !"]]
    assert sources == ["he is calm .", "go ."]
    # The book's num_steps cuts both sides (the <eos> of a long sentence is lost, as in d2l).
    (src, src_len, tgt_in, tgt_out, _), _, _ = encode_pairs(pairs, vocab_src, vocab_tgt, 3)
    assert vocab_tgt.to_tokens(tgt_out[0]) == ["il", "est", "calme"]
    assert vocab_tgt.to_tokens(tgt_in[0]) == ["<bos>", "il", "est"]
    assert src_len.tolist() == [3, 3, 3]


def test_the_small_file_loads_with_a_split_by_sentence(tmp_path):
    root = write_fra(tmp_path)
    data = dk.load_data("fra-eng", 4, data_dir=str(root), val_fraction=0.0, test_fraction=0.3,
                        min_freq=1)
    assert data.task == "translation" and data.val is None
    assert data.src_vocab.idx_to_token[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]
    test_sources = set(data.sources["test"])
    assert len(test_sources) == 3  # 30% of 10 distinct English sentences
    train_sources = {" ".join(data.src_vocab.to_tokens(row[: int(n) - 1]))
                     for row, n in zip(data.train[0], data.train[1], strict=True)}
    assert not train_sources & test_sources
    assert data.model_options == {"src_vocab_size": len(data.src_vocab),
                                  "tgt_vocab_size": len(data.tgt_vocab)}
    with pytest.raises(dk.DivekitError, match="splits by source sentence itself"):
        dk.load_data("fra-eng", 4, data_dir=str(root), val_size=0.2, val_fraction=0.0,
                     test_fraction=0.3)


def test_book_setting_takes_the_first_pairs(tmp_path):
    root = write_fra(tmp_path)
    data = dk.load_data("fra-eng", 4, data_dir=str(root), num_train=6, num_val=3, num_steps=4)
    assert len(data.train[0]) == 6 and len(data.test[0]) == 3 and data.val is None
    assert data.sources["test"] == ["i lost .", "he's calm .", "i'm home ."]
    assert data.train[0].shape[1] == 4 and data.max_target_len == 4
    with pytest.raises(dk.DivekitError, match="num_val needs num_train"):
        dk.load_data("fra-eng", data_dir=str(root), num_val=3)


def _loader(n=500, batch_size=16, shuffle=True, seed=0):
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 20, (n,), generator=g)
    seqs = torch.arange(n)[:, None].expand(n, 20).clone()
    seqs[torch.arange(20) >= lengths[:, None]] = -1  # padding
    return BucketLoader((seqs, lengths), sort_key=lengths, trim=(lengths, None),
                        batch_size=batch_size, shuffle=shuffle, seed=seed), lengths


def test_buckets_serve_every_example_once_trimmed_and_with_less_padding():
    loader, lengths = _loader()
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen = torch.cat([seqs[:, 0] for seqs, _ in batches])
        assert sorted(seen.tolist()) == list(range(500))
        for seqs, lens in batches:
            assert seqs.shape[1] == lens.max()  # trimmed to the longest of the batch
            assert (seqs[:, 0] == seqs[torch.arange(len(seqs)), lens - 1]).all()
    # Random batches of the same lengths would pad about half of every batch.
    random_padding = 1 - lengths.sum() / (len(lengths) * lengths.max())
    assert loader.padding_fraction() < 0.1 < random_padding


def test_buckets_shuffle_by_seed_and_epoch_and_resume_mid_epoch():
    loader, _ = _loader()
    first = [seqs[:, 0].tolist() for seqs, _ in loader]
    again = [seqs[:, 0].tolist() for seqs, _ in _loader()[0]]
    assert first == again
    loader.set_epoch(1)
    assert [seqs[:, 0].tolist() for seqs, _ in loader] != first
    loader.set_epoch(0)
    loader.skip_batches(5)
    assert [seqs[:, 0].tolist() for seqs, _ in loader] == first[5:]


def test_buckets_shard_into_disjoint_equal_parts():
    shards = [_loader()[0].shard(rank, 2) for rank in (0, 1)]
    seen = [torch.cat([seqs[:, 0] for seqs, _ in shard]) for shard in shards]
    assert len(shards[0]) == len(shards[1])
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert len(seen[0]) == len(seen[1]) == 250


def test_evaluation_batches_are_sorted_and_complete():
    loader, lengths = _loader(shuffle=False)
    batches = list(loader)
    served = torch.cat([lens for _, lens in batches])
    assert served.tolist() == sorted(lengths.tolist())


@needs_data
def test_fra_eng_real_file_split_and_book_setting():
    data = dk.load_data("fra-eng", 128, data_dir=DATA)
    sizes = {name: len(split[0]) for name, split in
             (("train", data.train), ("val", data.val), ("test", data.test))}
    assert sum(sizes.values()) == 157_920  # pairs of at most 10 English words
    assert len(data.references["test"]) == (data.test[4] >= 0).sum()
    assert sum(map(len, data.references["test"])) == sizes["test"]
    test_sources = set(data.sources["test"])
    train_sources = {" ".join(data.src_vocab.to_tokens(row[: int(n) - 1]))
                     for row, n in zip(data.train[0], data.train[1], strict=True)}
    # Unknown words print as <unk>; no test sentence may be a training sentence.
    assert not {s for s in train_sources if "<unk>" not in s} & test_sources
    assert data.train_dataloader().padding_fraction() < 0.15
    book = dk.load_data("fra-eng", 128, data_dir=DATA, num_train=512, num_val=128, num_steps=9)
    # d2l 1.0 prints vocabularies of 194 / 214 for the same 640 pairs (it counts <pad> as a
    # word and has no separate <unk> check); ours differ by one either way.
    assert abs(len(book.src_vocab) - 194) <= 1 and abs(len(book.tgt_vocab) - 214) <= 1
    assert book.sources["test"][:1] and book.train[0].shape == (512, 9)
