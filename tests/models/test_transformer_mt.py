"""The Transformer translation model: the decoding interface (cache, reorder), masking,
parameter count by formula, and a copy task it must learn."""

import time

import pytest
import torch
import torch.nn.functional as F

import divekit as dk
from divekit.errors import DivekitError
from divekit.models import MODELS
from divekit.models import transformer as transformer_module  # noqa: F401  (registration)
from divekit.models.transformer import TransformerTranslator

V_SRC, V_TGT = 13, 11
SRC_LEN = torch.tensor([6, 2, 4])  # padded to 6


def dense(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def expected_count(v_src, v_tgt, d, layers, ffn, attention_bias=False, norm_first=False,
                   tie=False):
    """The layout by formula: embeddings; per encoder block one attention (4 d x d
    projections) + FFN + 2 layer norms; per decoder block two attentions + FFN + 3 norms;
    a final norm per stack when pre-norm; the output layer (its weight shared when tied)."""
    attention = 4 * dense(d, d, attention_bias)
    ffn_params = dense(d, ffn) + dense(ffn, d)
    layer_norm = 2 * d
    final = layer_norm if norm_first else 0
    encoder = v_src * d + layers * (attention + ffn_params + 2 * layer_norm) + final
    decoder = v_tgt * d + layers * (2 * attention + ffn_params + 3 * layer_norm) + final
    output = v_tgt + (0 if tie else d * v_tgt)
    return encoder + decoder + output


def test_registered_count_is_the_formula_at_the_book_defaults():
    info = MODELS["transformer-mt"]
    assert (info.family, info.task) == ("transformer", "translation")
    # The course's sizes: 256 hidden, 2 blocks, FFN 64; vocabularies of 1000 by default.
    assert info.params == expected_count(1000, 1000, 256, 2, 64) == 2_479_336
    assert dk.count_parameters(dk.create_model("transformer-mt")) == info.params


@pytest.mark.parametrize("options", [
    {"attention_bias": True, "norm_first": True},
    {"tie_embeddings": True},
])
def test_count_with_options_is_the_formula(options):
    model = dk.create_model("transformer-mt", src_vocab_size=V_SRC, tgt_vocab_size=V_TGT,
                            num_hiddens=16, num_layers=3, ffn_num_hiddens=24, **options)
    expected = expected_count(V_SRC, V_TGT, 16, 3, 24, options.get("attention_bias", False),
                              options.get("norm_first", False),
                              options.get("tie_embeddings", False))
    assert dk.count_parameters(model) == expected


def small_model(seed=0, **options):
    torch.manual_seed(seed)
    model = TransformerTranslator(V_SRC, V_TGT, num_hiddens=16, num_layers=2, num_heads=4,
                                  ffn_num_hiddens=24, dropout=0.0, **options)
    return model.double().eval()


def batch(seed=0, steps=5):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V_SRC, (3, 6), generator=generator)
    tgt_in = torch.randint(4, V_TGT, (3, steps), generator=generator)
    tgt_in[:, 0] = 2  # <bos>
    return src, tgt_in


def decode_with_steps(model, src, src_len, tgt_in):
    """Logits and attention of encode + one step per target position."""
    state, logits, attention = model.encode(src, src_len), [], []
    for t in range(tgt_in.shape[1]):
        step_logits, state = model.step(tgt_in[:, t], state)
        logits.append(step_logits)
        attention.append(state["attention"])
    return torch.stack(logits, 1), torch.stack(attention, 1)


OPTIONS = [{}, {"norm_first": True, "attention_bias": True}, {"tie_embeddings": True}]


@pytest.mark.parametrize("options", OPTIONS)
def test_incremental_decoding_equals_forward_at_every_position(options):
    model = small_model(**options)
    src, tgt_in = batch()
    expected = model(src, SRC_LEN, tgt_in)
    logits, attention = decode_with_steps(model, src, SRC_LEN, tgt_in)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    # The attention over the source: a distribution over the real positions only.
    assert attention.shape == (3, 5, 6)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    padding = torch.arange(6) >= SRC_LEN[:, None]
    assert (attention[padding[:, None].expand_as(attention)] == 0).all()


def test_reorder_follows_repeated_rows_before_and_during_decoding():
    model = small_model()
    src, tgt_in = batch(seed=1)
    index = torch.tensor([2, 0, 0, 1, 2])
    expected = model(src[index], SRC_LEN[index], tgt_in[index])

    state = model.reorder(model.encode(src, SRC_LEN), index)  # expand sources into beams
    logits = []
    for t in range(tgt_in.shape[1]):
        step_logits, state = model.step(tgt_in[index, t], state)
        logits.append(step_logits)
    torch.testing.assert_close(torch.stack(logits, 1), expected, rtol=1e-10, atol=1e-10)

    # Reordering midway (beams swap and repeat): the cache rows follow.
    state, logits = model.encode(src, SRC_LEN), []
    for t in range(2):
        step_logits, state = model.step(tgt_in[:, t], state)
        logits.append(step_logits)
    state = model.reorder(state, index)
    logits = [row[index] for row in logits]
    for t in range(2, tgt_in.shape[1]):
        step_logits, state = model.step(tgt_in[index, t], state)
        logits.append(step_logits)
    torch.testing.assert_close(torch.stack(logits, 1), expected, rtol=1e-10, atol=1e-10)


def test_source_padding_content_and_width_do_not_change_the_logits():
    model = small_model()
    src, tgt_in = batch(seed=2)
    expected = model(src, SRC_LEN, tgt_in)
    generator = torch.Generator().manual_seed(9)
    garbage = torch.randint(0, V_SRC, (3, 9), generator=generator)
    padded = torch.where(torch.arange(9) < SRC_LEN[:, None], F.pad(src, (0, 3)), garbage)
    assert not torch.equal(padded[:, :6], src)
    torch.testing.assert_close(model(padded, SRC_LEN, tgt_in), expected, rtol=1e-10, atol=1e-10)


def test_target_tokens_after_a_position_do_not_change_its_logits():
    model = small_model()
    src, tgt_in = batch(seed=3, steps=6)
    expected = model(src, SRC_LEN, tgt_in)
    for t in range(5):
        changed = tgt_in.clone()
        changed[:, t + 1:] = (tgt_in[:, t + 1:] + 1 + t) % V_TGT
        logits = model(src, SRC_LEN, changed)
        torch.testing.assert_close(logits[:, :t + 1], expected[:, :t + 1], rtol=1e-10,
                                   atol=1e-10)
        assert not torch.allclose(logits[:, t + 1:], expected[:, t + 1:])


@pytest.mark.parametrize("options", OPTIONS)
def test_every_parameter_gets_a_gradient(options):
    model = small_model(**options).train()
    src, tgt_in = batch(seed=4)
    loss = F.cross_entropy(model(src, SRC_LEN, tgt_in).flatten(0, 1), tgt_in.flatten())
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    if options.get("tie_embeddings"):
        assert model.output.weight is model.decoder.embedding.weight


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = dk.create_model("transformer-mt", src_vocab_size=V_SRC, tgt_vocab_size=V_TGT,
                            num_hiddens=16, ffn_num_hiddens=24)  # the default dropout 0.2
    src, tgt_in = batch()
    model.eval()
    torch.testing.assert_close(model(src, SRC_LEN, tgt_in), model(src, SRC_LEN, tgt_in))
    assert not torch.allclose(model.train()(src, SRC_LEN, tgt_in), model.eval()(src, SRC_LEN,
                                                                                  tgt_in))


def test_bad_inputs_name_the_problem():
    model = small_model()
    src, tgt_in = batch()
    with pytest.raises(DivekitError, match=r"src_len must have shape \(3,\)"):
        model(src, SRC_LEN[:2], tgt_in)
    with pytest.raises(DivekitError, match="src must be an int64 tensor"):
        model(src.float(), SRC_LEN, tgt_in)
    with pytest.raises(DivekitError, match=r"tgt_in must have shape \(3, steps\)"):
        model(src, SRC_LEN, tgt_in[:2])
    short = TransformerTranslator(V_SRC, V_TGT, 16, 1, 4, 24, max_len=4)
    with pytest.raises(DivekitError, match="max_len=4"):
        short(src, SRC_LEN, tgt_in[:, :3])
    with pytest.raises(DivekitError, match="num_heads=3 must divide embed_dim=16"):
        TransformerTranslator(V_SRC, V_TGT, 16, 1, 3, 24)


def test_copy_task_is_learned(one_thread):
    # Sources of 3-8 random tokens; the target is the same sequence then <eos>. A small model
    # trained for 300 Adam steps copies >90% of tokens on new sources, teacher-forced and
    # decoded greedily with the cache (>99% for 5 seeds). Training takes ~1.6 s on one thread
    # here, the test ~2.5 s (bound: 10 s).
    vocab, pad, bos, eos = 14, 1, 2, 3
    generator = torch.Generator().manual_seed(0)

    def sample(size):
        lengths = torch.randint(3, 9, (size,), generator=generator)
        tokens = torch.randint(4, vocab, (size, 8), generator=generator)
        real = torch.arange(8) < lengths[:, None]
        src = torch.where(real, tokens, pad)
        tgt_out = torch.cat([src, torch.full((size, 1), pad)], dim=1)
        tgt_out[torch.arange(size), lengths] = eos
        tgt_in = torch.cat([torch.full((size, 1), bos), tgt_out[:, :-1]], dim=1)
        tgt_in[tgt_in == eos] = pad
        return src, lengths, tgt_in, tgt_out

    torch.manual_seed(0)
    model = TransformerTranslator(vocab, vocab, num_hiddens=32, num_layers=1, num_heads=4,
                                  ffn_num_hiddens=64, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in range(300):
        src, lengths, tgt_in, tgt_out = sample(64)
        loss = F.cross_entropy(model(src, lengths, tgt_in).flatten(0, 1), tgt_out.flatten(),
                               ignore_index=pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start

    model.eval()
    src, lengths, tgt_in, tgt_out = sample(256)
    with torch.no_grad():
        predictions = model(src, lengths, tgt_in).argmax(-1)
    real = tgt_out != pad
    accuracy = (predictions == tgt_out)[real].float().mean().item()
    assert accuracy > 0.9, (accuracy, elapsed)

    # Greedy decoding through encode/step: the cached path on a trained float32 model.
    with torch.no_grad():
        state, token, decoded = model.encode(src, lengths), torch.full((256,), bos), []
        for _ in range(9):
            logits, state = model.step(token, state)
            token = logits.argmax(-1)
            decoded.append(token)
    greedy = (torch.stack(decoded, 1) == tgt_out)[real].float().mean().item()
    assert greedy > 0.9, greedy
