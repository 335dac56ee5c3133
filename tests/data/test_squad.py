"""SQuAD v1.1 windows for fine-tuning BERT on extractive question answering."""

import json
import re
import string

import pytest
import torch

import divekit as dk
from divekit.data.squad import (
    read_squad,
    split_articles,
    squad,  # noqa: F401  (registers the dataset)
    squad_examples,
)
from tests.conftest import real_data_dir

WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "of", "in", "is", "was", "what",
    "who", "where", "when", "did", "river", "city", "paris", "france", "capital", "seine",
    "flows", "through", "north", "##ern", "##s", "##ed", "built", "tower", "eiffel", "1889",
    "by", "gustave", "engineer", ".", ",", "?", "it", "large", "old", "bridge", "many",
    "people", "visit"
]

CONTEXT = ("Paris is the capital of France. The Seine flows through Paris, north of the old "
           "city. The Eiffel Tower was built in 1889 by Gustave Eiffel, an engineer. Many people "
           "visit the tower. The tower is large. The river is old.")


def qa(qid, question, answer, context=CONTEXT, occurrence=0):
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return {"id": qid, "question": question,
            "answers": [{"text": answer, "answer_start": start},
                        {"text": answer.lower(), "answer_start": start}]}


def squad_json(titles=("Paris", "Eiffel", "Seine", "Rivers", "Towers")):
    articles = []
    for n, title in enumerate(titles):
        articles.append({"title": title, "paragraphs": [{"context": CONTEXT, "qas": [
            qa(f"{n}a", "What is the capital of France?", "Paris"),
            qa(f"{n}b", "When was the Eiffel Tower built?", "1889"),
            qa(f"{n}c", "Who built the tower?", "Gustave Eiffel"),
            qa(f"{n}d", "What is old?", "The river is old")]}]})
    return {"data": articles, "version": "1.1"}


def write_squad(tmp_path, document=None, name="dev-v1.1.json"):
    folder = tmp_path / "data" / "squad-v1.1"
    folder.mkdir(parents=True, exist_ok=True)
    text = document if isinstance(document, str) else json.dumps(document or squad_json())
    (folder / name).write_text(text, encoding="utf-8")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return tmp_path / "data", vocab


@pytest.mark.parametrize("text, message", [
    ('{"data": [', r"is not valid JSON"),
    ('{"version": "1.1"}', r"expected an object with a non-empty 'data' list"),
    ('{"data": [{"title": "x"}]}', r"data\[0\]: needs 'paragraphs' as a list"),
    ('{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "1", '
     '"question": "q", "answers": [], "is_impossible": true}]}]}]}',
     r"without an answer \(SQuAD 2.0\?\)"),
    ('{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "1", '
     '"question": "q", "answers": [{"text": "c", "answer_start": "0"}]}]}]}]}',
     r"answers\[0\]: needs 'answer_start' as a int"),
])
def test_bad_json_is_a_data_error_naming_the_file(tmp_path, text, message):
    data_dir, _ = write_squad(tmp_path, text)
    path = data_dir / "squad-v1.1" / "dev-v1.1.json"
    with pytest.raises(dk.DataError, match=message) as error:
        read_squad(path)
    assert str(path) in str(error.value)


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(dk.DataError, match=r"squad file missing in .*dev-v1.1.json\. Put the"):
        dk.load_data("squad", data_dir=str(tmp_path))


def test_articles_are_split_by_title_with_a_seed():
    articles = squad_json([f"t{i}" for i in range(48)])["data"]
    train, held = split_articles(articles, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 38  # round(0.2 * 48)
    assert not {a["title"] for a in train} & {a["title"] for a in held}
    assert split_articles(articles, 0.2, seed=0) == (train, held)
    assert split_articles(articles, 0.2, seed=1)[1] != held
    assert len(split_articles(articles, 3, seed=0)[1]) == 3
    with pytest.raises(dk.DivekitError, match=r"test_articles must be a fraction in \(0, 1\)"):
        split_articles(articles, 1.5, seed=0)


def hf_windows(vocab, question, context, max_len, stride):
    """The windows transformers makes (run_qa.py's way): the oracle."""
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    return hf(question, context, truncation="only_second", max_length=max_len, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)


def hf_positions(encoded, window, char_start, char_end):
    """run_qa.py's labels: the answer's tokens when the window holds it all, else (0, 0)."""
    sequence_ids, offsets = encoded.sequence_ids(window), encoded["offset_mapping"][window]
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    if offsets[first][0] > char_start or offsets[last][1] < char_end:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= char_start:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= char_end:
        end -= 1
    return start - 1, end + 1


def test_windows_and_answer_positions_match_transformers(tmp_path):
    data_dir, vocab = write_squad(tmp_path)
    max_len, stride = 24, 6
    data = dk.load_data("squad", batch_size=4, data_dir=str(data_dir), tokenizer=str(vocab),
                        max_len=max_len, max_query_len=12, doc_stride=stride, test_articles=2)
    assert data.task == "question-answering"
    assert data.model_options == {"vocab_size": len(WORDS)}
    tokens, segments, valid_len, start, end, feature_id = data.train
    assert feature_id.tolist() == list(range(len(tokens)))
    positions = 0
    for example_index, example in enumerate(data.examples["train"]):
        encoded = hf_windows(vocab, example["question"], example["context"], max_len, stride)
        rows = [f for f, (e, _) in enumerate(data.features["train"]) if e == example_index]
        assert len(rows) == len(encoded["input_ids"]) > 1
        char_start = example["answer_starts"][0]
        char_end = char_start + len(example["answers"][0])
        for window, row in enumerate(rows):
            n = int(valid_len[row])
            assert tokens[row, :n].tolist() == encoded["input_ids"][window]
            assert segments[row, :n].tolist() == encoded["token_type_ids"][window]
            expected = hf_positions(encoded, window, char_start, char_end)
            assert (int(start[row]), int(end[row])) == expected
            positions += expected != (0, 0)
            offsets = data.features["train"][row][1]
            assert len(offsets) == max_len
            hf_offsets = encoded["offset_mapping"][window]
            sequence_ids = encoded.sequence_ids(window)
            assert offsets[:n] == [tuple(o) if s == 1 else None
                                   for o, s in zip(hf_offsets, sequence_ids, strict=True)]
            assert offsets[n:] == [None] * (max_len - n)
    assert positions >= len(data.examples["train"])  # every answer is in some window


def test_examples_keep_all_answers_and_batches_are_trimmed(tmp_path):
    data_dir, vocab = write_squad(tmp_path)
    data = dk.load_data("squad", batch_size=3, data_dir=str(data_dir), tokenizer=str(vocab),
                        max_len=32, max_query_len=8, doc_stride=4, test_articles=0.4, seed=5)
    articles = squad_json()["data"]
    assert len(set(data.titles["test"])) == 2 and len(set(data.titles["train"])) == 3
    assert not set(data.titles["train"]) & set(data.titles["test"])
    for split in ("train", "test"):
        expected = [e for a in articles if a["title"] in set(data.titles[split])
                    for e in squad_examples([a])[0]]
        assert data.examples[split] == expected
        assert set(data.examples[split][0]) >= {"id", "question", "context", "answers"}
        assert data.examples[split][2]["answers"] == ["Gustave Eiffel", "gustave eiffel"]
    served = []
    for tokens, segments, valid_len, start, end, feature_id in data.train_dataloader():
        assert tokens.shape == segments.shape and tokens.shape[1] == valid_len.max()
        assert (start <= end).all() and (end < valid_len).all()
        served += feature_id.tolist()
    assert sorted(served) == list(range(len(data.features["train"])))


def test_hold_out_moves_whole_articles(tmp_path):
    data_dir, vocab = write_squad(tmp_path)
    data = dk.load_data("squad", data_dir=str(data_dir), tokenizer=str(vocab), max_len=32,
                        max_query_len=8, doc_stride=4, test_articles=1, val_size=1)
    assert len(set(data.titles["val"])) == 1 and len(set(data.titles["train"])) == 3
    assert not set(data.titles["train"]) & set(data.titles["val"])
    for split in ("train", "val"):
        tokens, _, valid_len, start, end, feature_id = getattr(data, split)
        assert feature_id.tolist() == list(range(len(data.features[split])))
        assert max(e for e, _ in data.features[split]) == len(data.examples[split]) - 1
        for row, (example_index, offsets) in enumerate(data.features[split]):
            example = data.examples[split][example_index]
            if start[row] > 0:  # the window's answer span is the example's first answer
                span = example["context"][offsets[start[row]][0]:offsets[end[row]][1]]
                assert span == example["answers"][0]


def test_a_training_file_makes_the_dev_file_the_test_split(tmp_path):
    data_dir, vocab = write_squad(tmp_path, squad_json(("Paris", "Eiffel")),
                                  name="train-v1.1.json")
    write_squad(tmp_path, squad_json(("Seine",)))
    # "When was the Eiffel Tower built?" has 7 tokens: cut to 3, with a warning.
    with pytest.warns(UserWarning, match=r"8 of 8 train questions were longer than "
                                         r"max_query_len=3"):
        data = dk.load_data("squad", data_dir=str(data_dir), tokenizer=str(vocab), max_len=32,
                            max_query_len=3, doc_stride=4)
    assert data.titles["train"] == ["Paris"] * 4 + ["Eiffel"] * 4
    assert data.titles["test"] == ["Seine"] * 4 and data.val is None
    assert data.questions_cut == {"train": 8, "test": 4}
    tokens, segments, *_ = data.train
    assert (tokens[:, 4] == data.tokenizer.sep_id).all()  # [CLS] 3 question tokens [SEP]
    assert not segments[:, :5].any() and segments[:, 5].all()


def test_window_room_must_exceed_the_stride(tmp_path):
    data_dir, vocab = write_squad(tmp_path)
    with pytest.raises(dk.DivekitError, match=r"max_len=40 leaves 13 context tokens"):
        dk.load_data("squad", data_dir=str(data_dir), max_len=40, max_query_len=24,
                     doc_stride=16)


def normalize(text):
    """SQuAD v1.1's answer normalisation, written out here as the official script has it."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@pytest.fixture(scope="module")
def real_squad():
    return dk.load_data("squad", batch_size=64, data_dir=str(real_data_dir("squad-v1.1")))


def test_real_dev_split_by_article(real_squad):
    data = real_squad
    assert len(set(data.titles["train"])) == 38 and len(set(data.titles["test"])) == 10
    assert not set(data.titles["train"]) & set(data.titles["test"])
    assert len(data.examples["train"]) + len(data.examples["test"]) == 10_570
    assert data.questions_cut == {"train": 0, "test": 0}  # no question has 64 tokens


def test_real_answer_spans_match_the_answer_text(real_squad):
    data = real_squad
    tokens, _, valid_len, start, end, _ = data.train
    answered = torch.nonzero(start > 0).flatten().tolist()
    assert len(answered) >= len(data.examples["train"])  # some answers are in two windows
    exact = 0
    for row in answered:
        example_index, offsets = data.features["train"][row]
        example = data.examples["train"][example_index]
        assert 0 < start[row] <= end[row] < valid_len[row]
        span = example["context"][offsets[start[row]][0]:offsets[end[row]][1]]
        assert normalize(example["answers"][0]) in normalize(span)
        exact += normalize(span) == normalize(example["answers"][0])
    # Spans cover whole tokens: an answer inside a word ("1990" of "1990s") is not exact.
    assert exact / len(answered) > 0.98


def test_real_windows_cover_every_context_token(real_squad):
    data = real_squad
    covered: dict[int, set] = {}
    for example_index, offsets in data.features["test"]:
        covered.setdefault(example_index, set()).update(o for o in offsets if o is not None)
    assert len(covered) == len(data.examples["test"])
    contexts = {}
    for example_index, example in enumerate(data.examples["test"]):
        if example["context"] not in contexts:
            encoded = data.tokenizer.encode(example["context"], max_len=100_000)
            pairs = zip(encoded.offsets, encoded.sequence_ids, strict=True)
            contexts[example["context"]] = {tuple(o) for o, s in pairs if s == 0}
        assert covered[example_index] == contexts[example["context"]]
