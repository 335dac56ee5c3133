"""Language-model datasets and the random / sequential minibatch samplers (9.2-9.3)."""

import collections
import re
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import divekit.data.text as text_data
from divekit.data.registry import load_data
from divekit.data.text import TextDataModule, random_batches, sequential_batches
from divekit.errors import DataError, DivekitError
from tests.conftest import real_data_dir


def check_windows(data: TextDataModule, num_steps: int) -> None:
    """Each split is consecutive windows of one stream; the targets are the inputs shifted."""
    for X, Y in [data.train, data.test] + ([data.val] if data.val is not None else []):
        assert X.dtype == Y.dtype == torch.int64
        assert X.ndim == 2 and X.shape == Y.shape and X.shape[1] == num_steps
        stream_x, stream_y = X.reshape(-1), Y.reshape(-1)
        assert torch.equal(stream_x[1:], stream_y[:-1])
        assert int(X.min()) >= 0 and int(Y.max()) < len(data.vocab)
    n = len(data.train[0]) * num_steps
    assert torch.equal(data.train[0].reshape(-1), data.corpus[:n])
    assert torch.equal(data.train[1].reshape(-1), data.corpus[1:n + 1])
    assert len(data.corpus) - 1 - n < num_steps  # only the tail shorter than a window is unused
    assert data.class_names == data.vocab.idx_to_token
    assert data.num_classes == len(data.vocab) and data.task == "language-model"


# --- The Time Machine ------------------------------------------------------------------------

def timemachine_text() -> str:
    return (real_data_dir("timemachine") / "timemachine" / "timemachine.txt").read_text()


def load_real(name, **options):
    return load_data(name, data_dir=str(real_data_dir(name)), **options)


def test_timemachine_char_level_matches_the_course():
    chars = re.sub("[^A-Za-z]+", " ", timemachine_text()).lower()
    # d2l 1.0, 9.2.3: len(corpus), len(vocab) == (173428, 28) after the same preprocessing.
    assert len(chars) == 173428
    data = load_real("timemachine", batch_size=32)
    assert isinstance(data, TextDataModule) and data.val is None
    assert len(data.vocab) == 28
    assert set(data.vocab.idx_to_token) == set("abcdefghijklmnopqrstuvwxyz ") | {"<unk>"}
    train_length = len(chars) - round(0.1 * len(chars))
    assert len(data.corpus) == train_length
    assert "".join(data.vocab.to_tokens(data.corpus)) == chars[:train_length]
    assert len(data.test[0]) == (len(chars) - train_length - 1) // 35
    assert "".join(data.vocab.to_tokens(data.test[0][0])) == chars[train_length:train_length + 35]
    check_windows(data, 35)
    X, Y = next(iter(data.train_dataloader()))
    assert X.shape == Y.shape == (32, 35)


def test_timemachine_word_level_and_options():
    data = load_real("timemachine", level="word", num_steps=10, val_fraction=0.2)
    assert data.vocab.idx_to_token[1:6] == ["the", "i", "and", "of", "a"]
    words = re.sub("[^A-Za-z]+", " ", timemachine_text()).lower().split()
    assert data.vocab.to_tokens(data.corpus[:8]) == words[:8]
    assert len(data.corpus) == len(words) - round(0.2 * len(words))
    check_windows(data, 10)
    small = load_real("timemachine", max_tokens=1000, num_steps=5)
    assert len(small.corpus) == 900 and small.train[0].shape == (179, 5)


@pytest.mark.parametrize("options, message", [
    ({"level": "sentence"}, "token level"), ({"num_steps": 0}, "num_steps"),
    ({"val_fraction": 1.0}, "val_fraction"), ({"max_tokens": -1}, "max_tokens"),
    ({"stride": 0}, "stride"), ({"stride": 1.5}, "stride"),
    ({"num_train": 10}, "no option num_train"),
])
def test_bad_options_are_divekit_errors(options, message):
    with pytest.raises(DivekitError, match=message):
        load_data("embedded-text", **options)


def windows_by_loop(stream, num_steps, stride):
    """The d2l 1.0 construction: a (num_steps + 1)-token slice at every stride-th position."""
    chunks = [stream[i : i + num_steps + 1] for i in range(0, len(stream) - num_steps, stride)]
    array = torch.stack(chunks)
    return array[:, :-1], array[:, 1:]


@pytest.mark.parametrize("length, num_steps, stride", [
    (103, 5, 5), (103, 5, 1), (103, 5, 2), (103, 5, 7), (100, 5, 5), (6, 5, 1), (6, 5, 3),
    (40, 1, 1), (40, 3, None),
])
def test_windows_equal_the_slicing_loop(length, num_steps, stride):
    stream = torch.randint(0, 50, (length,), generator=torch.Generator().manual_seed(length))
    X, Y = text_data.windows(stream, num_steps, stride)
    expected_X, expected_Y = windows_by_loop(stream, num_steps, stride or num_steps)
    assert torch.equal(X, expected_X) and torch.equal(Y, expected_Y)
    assert len(X) == (length - num_steps - 1) // (stride or num_steps) + 1


def test_windows_refuse_bad_arguments():
    with pytest.raises(DivekitError, match="too short"):
        text_data.windows(torch.arange(5), 5)
    with pytest.raises(DivekitError, match="stride"):
        text_data.windows(torch.arange(50), 5, 0)


def test_timemachine_book_windows_match_d2l():
    """d2l 1.0's TimeMachine(num_steps=32): every window; 10,000 train, the next 5,000 validate."""
    chars = re.sub("[^A-Za-z]+", " ", timemachine_text()).lower()
    data = load_real("timemachine", num_steps=32, stride=1, num_train=10000, num_val=5000)
    stream = torch.tensor(data.vocab[list(chars)])
    X, Y = windows_by_loop(stream[:15032], 32, 1)  # the first 15,000 windows
    assert torch.equal(data.train[0], X[:10000]) and torch.equal(data.train[1], Y[:10000])
    assert torch.equal(data.val[0], X[10000:15000]) and torch.equal(data.val[1], Y[10000:15000])
    assert "".join(data.vocab.to_tokens(data.val[0][0])) == chars[10000:10032]
    # The samplers see only the text of the training windows; the test split is unchanged.
    assert torch.equal(data.corpus, stream[:10032])
    default = load_real("timemachine", num_steps=32)
    assert torch.equal(data.test[0], default.test[0]) and default.val is None
    no_val = load_real("timemachine", num_steps=32, stride=4, num_train=100)
    assert no_val.val is None and torch.equal(no_val.train[0][1], stream[4:36])


def test_timemachine_strided_training_windows():
    data = load_real("timemachine", num_steps=10, stride=3)
    assert len(data.train[0]) == (len(data.corpus) - 11) // 3 + 1
    assert torch.equal(data.train[0][:1000], windows_by_loop(data.corpus[:3008], 10, 3)[0])
    assert len(data.test[0]) == len(load_real("timemachine", num_steps=10).test[0])


@pytest.mark.parametrize("options, message", [
    ({"num_val": 5000}, "num_val needs num_train"),
    ({"num_train": -1}, "num_train"),
    ({"num_train": 150000, "num_val": 10000}, r"num_train \+ num_val = 160000 windows"),
])
def test_bad_book_split_options(options, message):
    with pytest.raises(DivekitError, match=message):
        load_real("timemachine", stride=1, **options)


def test_missing_timemachine_offline_names_file_folder_and_remedy(tmp_path):
    with pytest.raises(DataError) as error:
        load_data("timemachine", data_dir=str(tmp_path))
    message = str(error.value)
    assert "timemachine.txt" in message and str(tmp_path / "timemachine") in message
    assert "DIVEKIT_OFFLINE" in message and "DIVEKIT_DATA" in message
    assert text_data.TIMEMACHINE_URL in message


def test_corrupt_timemachine_is_reported(tmp_path):
    folder = tmp_path / "timemachine"
    folder.mkdir()
    (folder / "timemachine.txt").write_text("The Time Machine, abridged.")
    with pytest.raises(DataError, match="timemachine.txt has sha1 .* expected 090b5e7e"):
        load_data("timemachine", data_dir=str(tmp_path))


def serve(folder):
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_timemachine_is_downloaded_and_verified(tmp_path, monkeypatch):
    original = real_data_dir("timemachine") / "timemachine" / "timemachine.txt"
    served = tmp_path / "server"
    served.mkdir()
    shutil.copy(original, served / "timemachine.txt")
    (served / "damaged.txt").write_bytes(original.read_bytes()[:-1] + b"!")
    server = serve(served)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setenv("DIVEKIT_OFFLINE", "0")
    try:
        monkeypatch.setattr(text_data, "TIMEMACHINE_URL", base + "damaged.txt")
        with pytest.raises(DataError, match="Downloading it failed: checksum mismatch"):
            load_data("timemachine", data_dir=str(tmp_path / "bad"))
        assert list((tmp_path / "bad" / "timemachine").iterdir()) == []
        monkeypatch.setattr(text_data, "TIMEMACHINE_URL", base + "timemachine.txt")
        data = load_data("timemachine", data_dir=str(tmp_path / "cache"))
    finally:
        server.shutdown()
    assert (tmp_path / "cache" / "timemachine" / "timemachine.txt").read_bytes() == \
        original.read_bytes()
    assert len(data.vocab) == 28


# --- WikiText-2 ------------------------------------------------------------------------------

def test_wikitext2_validation_and_test_token_counts():
    root = real_data_dir("wikitext-2") / "wikitext-2"
    data = load_real("wikitext-2", num_steps=35)
    # The WikiText paper (Merity et al. 2016, table 1): valid 217,646 and test 245,569 tokens.
    assert len(data.corpus) == 217646
    assert len(data.test[0]) == (245569 - 1) // 35
    lines = (root / "valid.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == 3760
    words = [word for line in lines for word in line.split() + ["<eos>"]]
    assert data.vocab.to_tokens(data.corpus[:50]) == words[:50]
    assert data.vocab.idx_to_token[:2] == ["<unk>", "<eos>"]
    # The text's own <unk> is the vocabulary's unknown token; every other word is known.
    assert int((data.corpus == 0).sum()) == collections.Counter(words)["<unk>"]
    assert len(data.vocab) == len(set(words))
    check_windows(data, 35)


def test_wikitext2_uses_the_train_file_when_present(tmp_path):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "train.txt").write_text(" \n = A = \n the cat sat on the mat . \n" * 5)
    (folder / "valid.txt").write_text(" the dog sat . \n" * 4)
    (folder / "test.txt").write_text(" a cat ran . \n" * 4)
    data = load_data("wikitext-2", data_dir=str(tmp_path), num_steps=4)
    assert data.val is not None
    assert len(data.corpus) == 5 * (1 + 4 + 8)  # words plus one <eos> per line
    assert "dog" not in data.vocab and "cat" in data.vocab
    assert data.vocab.to_tokens(data.val[0][0]) == ["the", "<unk>", "sat", "."]
    check_windows(data, 4)


def test_missing_wikitext2_names_the_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_data("wikitext-2", data_dir=str(tmp_path))
    message = str(error.value)
    assert "valid.txt" in message and "test.txt" in message
    assert str(tmp_path / "wikitext-2") in message and "wiki.valid.tokens" in message


# --- Your own file and the embedded corpus ---------------------------------------------------

def test_text_file(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("The cat sat. The cat ran!\nA dog sat, too.\n" * 30, encoding="utf-8")
    words = re.sub("[^A-Za-z]+", " ", path.read_text()).lower().split()
    data = load_data("text-file", path=str(path), level="word", num_steps=6)
    assert data.vocab.to_tokens(data.corpus) == words[:len(words) - round(0.1 * len(words))]
    check_windows(data, 6)
    raw = load_data("text-file", path=str(path), preprocess=False, num_steps=6)
    assert {"T", ".", "\n", "!"} <= set(raw.vocab.idx_to_token)
    with pytest.raises(DivekitError, match="needs the option path"):
        load_data("text-file")
    with pytest.raises(DataError, match="does not exist"):
        load_data("text-file", path=str(tmp_path / "absent.txt"))
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(DataError, match="too few"):
        load_data("text-file", path=str(tmp_path / "short.txt"))


def test_embedded_text_loads_offline_and_is_deterministic():
    assert len(text_data.python_reference_text()) >= 100_000
    first = load_data("embedded-text")
    second = load_data("embedded-text")
    assert first.vocab.idx_to_token == second.vocab.idx_to_token
    assert torch.equal(first.corpus, second.corpus)
    assert torch.equal(first.test[0], second.test[0])
    assert len(first.vocab) == 28 and len(first.corpus) > 100_000
    check_windows(first, 35)


# --- Minibatch samplers ----------------------------------------------------------------------

def position_and_value_batches(sampler, corpus, batch_size, num_steps, seed):
    """The same sampler run on token positions and on the tokens, with the same random draws."""
    positions = torch.arange(len(corpus))
    at = sampler(positions, batch_size, num_steps, torch.Generator().manual_seed(seed))
    values = sampler(corpus, batch_size, num_steps, torch.Generator().manual_seed(seed))
    return list(at), list(values)


@pytest.mark.parametrize("sampler", [random_batches, sequential_batches])
@pytest.mark.parametrize("batch_size, num_steps", [(2, 5), (3, 7), (1, 1), (4, 3)])
def test_batches_are_corpus_slices_with_shifted_targets(sampler, batch_size, num_steps):
    corpus = torch.randint(0, 50, (103,), generator=torch.Generator().manual_seed(0))
    for seed in range(10):
        at, values = position_and_value_batches(sampler, corpus, batch_size, num_steps, seed)
        assert len(at) >= 1
        for (P, Q), (X, Y) in zip(at, values, strict=True):
            assert X.shape == Y.shape == P.shape == (batch_size, num_steps)
            assert X.dtype == corpus.dtype
            # Each row is a contiguous run of the corpus; Y is the run one token later.
            assert torch.equal(P[:, 1:], P[:, :-1] + 1) and torch.equal(Q, P + 1)
            assert torch.equal(X, corpus[P]) and torch.equal(Y, corpus[Q])


def test_random_batches_cover_distinct_positions():
    corpus_length, batch_size, num_steps = 1000, 4, 7
    offsets = set()
    for seed in range(40):
        batches = list(random_batches(torch.arange(corpus_length), batch_size, num_steps,
                                      torch.Generator().manual_seed(seed)))
        starts = torch.cat([X[:, 0] for X, _ in batches])
        offset = int(starts.min()) % num_steps
        offsets.add(offset)
        available = (corpus_length - offset - 1) // num_steps
        assert len(batches) == available // batch_size
        # Distinct, non-overlapping subsequences on the offset's grid ...
        assert len(set(starts.tolist())) == len(starts)
        assert bool((starts % num_steps == offset).all())
        # ... all of them but the leftover that does not fill a minibatch ...
        assert len(starts) == available - available % batch_size
        # ... in shuffled order (sorted order would be sequential, not random, sampling).
        assert not torch.equal(starts, starts.sort().values)
    assert offsets == set(range(num_steps))  # 40 seeds: every offset is drawn


def test_random_batches_depend_on_the_generator():
    corpus = torch.arange(500)
    first = [X for X, _ in random_batches(corpus, 4, 5, torch.Generator().manual_seed(0))]
    again = [X for X, _ in random_batches(corpus, 4, 5, torch.Generator().manual_seed(0))]
    other = [X for X, _ in random_batches(corpus, 4, 5, torch.Generator().manual_seed(1))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_sequential_batches_continue_each_other():
    corpus_length, batch_size, num_steps = 1000, 4, 7
    for seed in range(20):
        batches = list(sequential_batches(torch.arange(corpus_length), batch_size, num_steps,
                                          torch.Generator().manual_seed(seed)))
        offset = int(batches[0][0][0, 0])
        assert 0 <= offset < num_steps
        length = (corpus_length - offset - 1) // batch_size
        assert len(batches) == length // num_steps
        first = batches[0][0]
        # Row i is stream i: it starts length tokens after row i - 1.
        assert torch.equal(first[:, 0], offset + length * torch.arange(batch_size))
        for (X, _), (X_next, _) in zip(batches, batches[1:], strict=False):
            # Row i of the next minibatch starts right where row i of this one ended.
            assert torch.equal(X_next[:, 0], X[:, -1] + 1)


def test_sampler_argument_errors():
    for sampler in (random_batches, sequential_batches):
        with pytest.raises(DivekitError, match="too short"):
            sampler(torch.arange(19), 3, 5)
        with pytest.raises(DivekitError, match="1-D"):
            sampler(torch.zeros(10, 10, dtype=torch.long), 2, 2)
        with pytest.raises(DivekitError, match="batch_size"):
            sampler(torch.arange(100), 0, 5)
        # (batch_size + 1) * num_steps tokens always give at least one minibatch.
        for seed in range(10):
            assert len(list(sampler(torch.arange(20), 3, 5,
                                    torch.Generator().manual_seed(seed)))) >= 1
