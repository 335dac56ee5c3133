import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.models.seq2seq import AdditiveAttention, select_rows
from divekit.tasks.translation import Translation
from tests.oracle import f64

SMALL = {"src_vocab_size": 11, "tgt_vocab_size": 13, "embed_size": 8, "num_hiddens": 6,
         "num_layers": 2, "dropout": 0.0}
MODELS = ["seq2seq-gru", "bahdanau-gru"]


def _model(name, bidirectional=False, seed=0):
    torch.manual_seed(seed)
    return dk.create_model(name, **SMALL, bidirectional=bidirectional).to(f64).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 11, (3, 7), generator=g)
    return src, torch.tensor([7, 3, 1]), torch.randint(1, 13, (3, 5), generator=g)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_step_by_step_decoding_equals_teacher_forcing(name, bidirectional):
    model = _model(name, bidirectional)
    src, src_len, tgt = _batch()
    full = model(src, src_len, tgt)
    state, steps = model.encode(src, src_len), []
    for t in range(tgt.shape[1]):
        logits, state = model.step(tgt[:, t], state)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full)
    if name == "bahdanau-gru":  # weights over the real source positions only
        weights = state["attention"]
        torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=f64))
        assert (weights[1, 3:] == 0).all() and (weights[2, 1:] == 0).all()


@pytest.mark.parametrize("name", MODELS)
def test_source_padding_and_later_target_tokens_change_nothing(name):
    model = _model(name, bidirectional=True)
    src, src_len, tgt = _batch()
    full = model(src, src_len, tgt)
    garbage = src.clone()
    garbage[1, 3:], garbage[2, 1:] = 5, 9
    torch.testing.assert_close(model(garbage, src_len, tgt), full)
    later = tgt.clone()
    later[:, 3:] = 1
    torch.testing.assert_close(model(src, src_len, later)[:, :3], full[:, :3])


@pytest.mark.parametrize("name", MODELS)
def test_reorder_follows_the_rows(name):
    model = _model(name)
    src, src_len, tgt = _batch()
    state = model.encode(src, src_len)
    index = torch.tensor([2, 0, 0])
    logits, _ = model.step(tgt[index, 0], model.reorder(state, index))
    expected, _ = model.step(tgt[:, 0], state)
    torch.testing.assert_close(logits, expected[index])


def test_a_bidirectional_encoder_reads_the_sentence_backwards_too():
    model = _model("seq2seq-gru", bidirectional=True)
    src, src_len, tgt = _batch()
    changed = src.clone()
    changed[0, 6] = 4 if src[0, 6] != 4 else 5  # the last word of a full-length sentence
    # The backward direction's state at the start of the sentence sees the last word.
    outputs, _ = model.encoder(src, src_len)
    outputs_changed, _ = model.encoder(changed, src_len)
    assert not torch.allclose(outputs[0, 0], outputs_changed[0, 0])
    assert model.encoder.rnn.hidden_size == SMALL["num_hiddens"] // 2
    with pytest.raises(dk.DivekitError, match="must be even"):
        dk.create_model("seq2seq-gru", num_hiddens=7, bidirectional=True)


def test_additive_attention_is_the_courses_formula():
    torch.manual_seed(0)
    attention = AdditiveAttention(3, 4, 5).to(f64)
    query, keys, values = torch.randn(2, 3, dtype=f64), torch.randn(2, 6, 4, dtype=f64), \
        torch.randn(2, 6, 2, dtype=f64)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    context, weights = attention(query, attention.project_keys(keys), values, mask)
    W_q, W_k, w_v = attention.W_q.weight, attention.W_k.weight, attention.w_v.weight
    for b in range(2):  # a naive loop over the keys
        n = int(mask[b].sum())
        scores = torch.stack([w_v[0] @ torch.tanh(W_q @ query[b] + W_k @ keys[b, j])
                              for j in range(n)])
        expected = torch.softmax(scores, 0)
        torch.testing.assert_close(weights[b, :n], expected)
        torch.testing.assert_close(context[b], expected @ values[b, :n])


def test_seq2seq_parameter_counts_follow_the_layers():
    def gru(inputs, hidden, layers):
        return sum(3 * hidden * ((inputs if i == 0 else hidden) + hidden + 2)
                   for i in range(layers))
    V, E, H = 1000, 256, 256
    encoder = V * E + gru(E, H, 2)
    decoder = V * E + gru(E + H, H, 2) + H * V + V
    assert dk.model_info("seq2seq-gru").params == encoder + decoder
    assert dk.model_info("bahdanau-gru").params == encoder + decoder + 2 * H * H + H


def test_select_rows_reaches_nested_tensors():
    state = {"a": torch.arange(3), "b": [torch.arange(6).reshape(3, 2)], "n": 4}
    picked = select_rows(state, torch.tensor([2, 2]))
    assert picked["a"].tolist() == [2, 2] and picked["b"][0].tolist() == [[4, 5], [4, 5]]
    assert picked["n"] == 4


def test_the_loss_averages_real_tokens_and_ignores_padding():
    task = Translation(bleu=False)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=g)
    targets = torch.tensor([[5, 6, 3, 1], [4, 3, 1, 1]])  # <eos> = 3, <pad> = 1
    loss = task.loss(logits, targets)
    real = targets != 1
    expected = F.cross_entropy(logits[real], targets[real])
    torch.testing.assert_close(loss, expected)
    # More padding columns (any logits there) leave the loss as it was.
    wider = torch.cat([logits, torch.randn(2, 3, 7, generator=g)], dim=1)
    padded = torch.cat([targets, torch.ones(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(task.loss(wider, padded), loss)
    assert int(task.count((None, None, None, padded, None))) == 5
