"""Attention, positional encodings and Transformer layers against PyTorch's own modules
(float64, copied weights, values and gradients of inputs and parameters)."""

import math

import pytest
import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.layers import (
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    LearnedPositionalEncoding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
)
from tests.oracle import f64, randn

E, H = 12, 3
LENGTHS = torch.tensor([5, 2, 4])  # batch of 3, padded to 5


def padding_mask(lengths, size):
    """nn.MultiheadAttention's convention: True at padding."""
    return torch.arange(size)[None, :] >= lengths[:, None]


def blocked_future(size):
    """nn.MultiheadAttention's causal attn_mask: True where attention is NOT allowed."""
    return torch.ones(size, size, dtype=torch.bool).triu(1)


def randomize(module, seed=0):
    """Random values everywhere (torch's zero biases and unit norms would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator,
                                        dtype=parameter.dtype) * 0.5)
    return module


def outputs_and_grads(fn, module, inputs, seed=7):
    """``fn(*inputs)`` and the gradients of a random projection of it w.r.t. the inputs and
    every named parameter of ``module``."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    module.zero_grad()
    out = fn(*inputs)
    (out * randn(*out.shape, seed=seed)).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return out.detach(), [x.grad for x in inputs], grads


def assert_same_module(ours, theirs, fn_ours, fn_theirs, inputs):
    out, input_grads, grads = outputs_and_grads(fn_ours, ours, inputs)
    expected, expected_input_grads, expected_grads = outputs_and_grads(fn_theirs, theirs, inputs)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(input_grads, expected_input_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
    assert set(grads) <= set(expected_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)


def torch_mha(bias, dropout=0.0):
    module = nn.MultiheadAttention(E, H, dropout=dropout, bias=bias, batch_first=True, dtype=f64)
    return randomize(module)


# ---------------------------------------------------------------- multi-head attention

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", ["self", "padding", "lengths", "causal", "causal+padding",
                                  "cross", "attn_mask"])
def test_attention_equals_torch_multihead_attention(bias, case):
    theirs = torch_mha(bias)
    ours = MultiHeadAttention.from_torch(theirs)
    x, memory, values = randn(3, 5, E, seed=1), randn(3, 4, E, seed=2), randn(3, 4, E, seed=3)
    keep = randn(5, 5, seed=4) > 0
    keep.fill_diagonal_(True)  # every query keeps a key
    ours_kwargs, theirs_kwargs, inputs = {}, {}, [x]
    if case in ("padding", "causal+padding"):
        ours_kwargs["key_padding_mask"] = theirs_kwargs["key_padding_mask"] = \
            padding_mask(LENGTHS, 5)
    if case == "lengths":
        ours_kwargs["key_lengths"] = LENGTHS
        theirs_kwargs["key_padding_mask"] = padding_mask(LENGTHS, 5)
    if case.startswith("causal"):
        ours_kwargs["is_causal"] = True
        theirs_kwargs |= {"attn_mask": blocked_future(5), "is_causal": True}
    if case == "attn_mask":
        ours_kwargs["attn_mask"] = keep  # ours: True = may attend; torch's: True = blocked
        theirs_kwargs["attn_mask"] = ~keep
    if case == "cross":
        inputs = [x, memory, values]
        ours_kwargs["key_lengths"] = torch.tensor([4, 1, 3])
        theirs_kwargs["key_padding_mask"] = padding_mask(torch.tensor([4, 1, 3]), 4)

    def run_ours(q, k=None, v=None):
        return ours(q, k, v, **ours_kwargs).output

    def run_theirs(q, k=None, v=None):
        k = q if k is None else k
        return theirs(q, k, q if v is None else v, need_weights=False, **theirs_kwargs)[0]

    assert_same_module(ours, theirs, run_ours, run_theirs, inputs)

    # With need_weights the explicit path gives the same output, and torch's weights.
    for average in (True, False):
        out, weights, _ = ours(*inputs, **ours_kwargs, need_weights=True,
                               average_weights=average)
        expected, expected_weights = theirs(
            *inputs, *([inputs[0]] * (3 - len(inputs))), need_weights=True,
            average_attn_weights=average, **theirs_kwargs)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(weights, expected_weights)


def test_attention_loads_a_torch_state_dict_as_it_is():
    theirs = torch_mha(True)
    ours = MultiHeadAttention(E, H).double()
    ours.load_state_dict(theirs.state_dict())  # strict: same names and shapes
    x = randn(2, 4, E)
    torch.testing.assert_close(ours(x).output, theirs(x, x, x)[0])
    with pytest.raises(DivekitError, match="kdim = vdim"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(E, H, kdim=5, vdim=5))


def test_attention_cache_gives_the_causal_self_attention_of_the_whole_sequence():
    # One token at a time with past keys/values equals torch's causal attention over all of it.
    theirs = torch_mha(True)
    ours = MultiHeadAttention.from_torch(theirs)
    x = randn(2, 6, E, seed=5)
    expected = theirs(x, x, x, attn_mask=blocked_future(6), need_weights=False)[0]
    cache, steps = None, []
    for t in range(6):
        result = ours(x[:, t:t + 1], is_causal=True, past_key_value=cache, use_cache=True)
        cache = result.cache
        steps.append(result.output)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected)
    assert cache[0].shape == (2, H, 6, E // H)
    # Two tokens at once after a cache of four: the causal mask aligns them with the end.
    four = ours(x[:, :4], is_causal=True, use_cache=True).cache
    last_two = ours(x[:, 4:], is_causal=True, past_key_value=four, need_weights=True)
    torch.testing.assert_close(last_two.output, expected[:, 4:])
    assert (last_two.weights[:, 0, 5] == 0).all() and (last_two.weights[:, 1, 5] > 0).all()


def test_attention_static_memory_keys_equal_cross_attention():
    theirs = torch_mha(False)
    ours = MultiHeadAttention.from_torch(theirs)
    query, memory = randn(3, 2, E, seed=1), randn(3, 4, E, seed=2)
    lengths = torch.tensor([4, 1, 3])
    expected = theirs(query, memory, memory, key_padding_mask=padding_mask(lengths, 4))[0]
    static = ours.project_key_value(memory)
    got = ours(query, static_key_value=static, key_lengths=lengths).output
    torch.testing.assert_close(got, expected)
    with pytest.raises(DivekitError, match="static_key_value replaces"):
        ours(query, memory, static_key_value=static)


def test_attention_dropout_acts_on_the_weights_in_training_only():
    ours = MultiHeadAttention(E, H, dropout=0.5).double()
    x = randn(2, 5, E)
    ours.eval()
    torch.testing.assert_close(ours(x).output, ours(x).output)
    ours.train()
    torch.manual_seed(0)
    assert not torch.allclose(ours(x).output, ours.eval()(x).output)


def test_attention_rejects_bad_arguments():
    with pytest.raises(DivekitError, match="num_heads=5 must divide embed_dim=12"):
        MultiHeadAttention(12, 5)
    ours = MultiHeadAttention(E, H)
    with pytest.raises(DivekitError, match="attn_mask must be boolean"):
        ours(torch.randn(1, 3, E), attn_mask=torch.zeros(3, 3))
    with pytest.raises(DivekitError, match=r"query must have shape \(batch, length, 12\)"):
        ours(torch.randn(3, E + 1))


# ---------------------------------------------------------------- positional encodings

@pytest.mark.parametrize("d", [6, 7])
def test_sinusoidal_table_is_the_papers_formula(d):
    encoding = SinusoidalPositionalEncoding(d, max_len=9).double()
    expected = torch.zeros(9, d, dtype=f64)
    for i in range(9):
        for j in range(d):
            angle = i / 10000 ** ((j - j % 2) / d)
            expected[i, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    x = randn(2, 4, d)
    torch.testing.assert_close(encoding(x), x + expected[:4].to(f64), atol=1e-6, rtol=0)
    torch.testing.assert_close(encoding(x, offset=5), x + expected[5:9], atol=1e-6, rtol=0)
    assert "table" not in encoding.state_dict()
    with pytest.raises(DivekitError, match=r"positions 6..9 .* max_len=9; build the model"):
        encoding(x, offset=6)


def test_learned_positions_add_the_rows_of_their_positions():
    encoding = LearnedPositionalEncoding(4, max_len=6)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(encoding(x, offset=2), x + encoding.weight[2:5])
    with pytest.raises(DivekitError, match="max_len=6"):
        encoding(x, offset=4)


# ---------------------------------------------------------------- encoder and decoder layers

def torch_layer(kind, norm_first, activation="relu"):
    layer_type = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
    # dropout 0 and train mode: torch's fused inference fast path is off, the oracle is plain.
    return randomize(layer_type(E, H, dim_feedforward=20, dropout=0.0, activation=activation,
                                batch_first=True, norm_first=norm_first, dtype=f64)).train()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_equals_torch(norm_first, activation):
    theirs = torch_layer("encoder", norm_first, activation)
    ours = EncoderLayer(E, H, 20, norm_first=norm_first, activation=activation).double()
    ours.load_state_dict(theirs.state_dict())
    mask = padding_mask(LENGTHS, 5)
    assert_same_module(ours, theirs, lambda x: ours(x, lengths=LENGTHS),
                       lambda x: theirs(x, src_key_padding_mask=mask), [randn(3, 5, E)])
    x = randn(3, 5, E, seed=3)
    torch.testing.assert_close(ours(x, key_padding_mask=mask), ours(x, lengths=LENGTHS))


def test_encoder_layer_without_attention_biases_equals_torch_with_zero_ones():
    # The course's layout: attention projections without biases, FFN and norms with them.
    theirs = torch_layer("encoder", False)
    with torch.no_grad():
        theirs.self_attn.in_proj_bias.zero_()
        theirs.self_attn.out_proj.bias.zero_()
    ours = EncoderLayer(E, H, 20, bias=False).double()
    missing = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert missing.missing_keys == []
    assert sorted(missing.unexpected_keys) == ["self_attn.in_proj_bias",
                                               "self_attn.out_proj.bias"]
    assert_same_module(ours, theirs, ours, theirs, [randn(2, 4, E)])


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_torch(norm_first):
    theirs = torch_layer("decoder", norm_first)
    ours = DecoderLayer(E, H, 20, norm_first=norm_first).double()
    ours.load_state_dict(theirs.state_dict())
    lengths = torch.tensor([4, 1, 3])
    mask = padding_mask(lengths, 4)

    def run_theirs(x, memory):
        return theirs(x, memory, tgt_mask=blocked_future(x.shape[1]), tgt_is_causal=True,
                      memory_key_padding_mask=mask)

    assert_same_module(ours, theirs, lambda x, m: ours(x, m, memory_lengths=lengths).output,
                       run_theirs, [randn(3, 5, E), randn(3, 4, E, seed=2)])

    # Token by token with the cache: the same outputs.
    x, memory = randn(3, 5, E, seed=4), randn(3, 4, E, seed=5)
    cache, steps = ours.init_cache(memory), []
    for t in range(5):
        out = ours(x[:, t:t + 1], memory_key_padding_mask=mask, cache=cache)
        cache = out.cache
        steps.append(out.output)
    torch.testing.assert_close(torch.cat(steps, dim=1), run_theirs(x, memory))


# ---------------------------------------------------------------- stacks

def course_embedding(embedding, tokens, d, offset=0):
    """The oracle of the stacks' input: embedding * sqrt(d) + the sinusoids, by formula."""
    positions = torch.arange(offset, offset + tokens.shape[1], dtype=f64)[:, None]
    columns = torch.arange(d)
    angles = positions / 10000 ** ((columns - columns % 2) / d)
    table = torch.where(columns % 2 == 0, torch.sin(angles), torch.cos(angles))
    return embedding(tokens) * math.sqrt(d) + table


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_stack_equals_torch_layers(norm_first):
    ours = Encoder(11, E, 2, H, 20, norm_first=norm_first).double()
    theirs = [torch_layer("encoder", norm_first) for _ in range(2)]
    for layer, torch_one in zip(ours.layers, theirs, strict=True):
        layer.load_state_dict(torch_one.state_dict())
    tokens = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0))
    x = course_embedding(ours.embedding, tokens, E)
    for torch_one in theirs:
        x = torch_one(x, src_key_padding_mask=padding_mask(LENGTHS, 5))
    if norm_first:
        x = ours.norm(x)
    torch.testing.assert_close(ours(tokens, LENGTHS), x)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_stack_equals_torch_layers_whole_and_cached(norm_first):
    ours = Decoder(11, E, 2, H, 20, norm_first=norm_first).double()
    theirs = [torch_layer("decoder", norm_first) for _ in range(2)]
    for layer, torch_one in zip(ours.layers, theirs, strict=True):
        layer.load_state_dict(torch_one.state_dict())
    tokens = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0))
    memory, lengths = randn(3, 4, E), torch.tensor([4, 1, 3])
    x = course_embedding(ours.embedding, tokens, E)
    for torch_one in theirs:
        x = torch_one(x, memory, tgt_mask=blocked_future(5), tgt_is_causal=True,
                      memory_key_padding_mask=padding_mask(lengths, 4))
    if norm_first:
        x = ours.norm(x)
    whole = ours(tokens, memory, memory_lengths=lengths, need_weights=True)
    torch.testing.assert_close(whole.output, x)
    assert whole.cache is None and whole.cross_weights.shape == (3, 5, 4)

    cache, steps = ours.init_cache(memory), []
    for t in range(5):
        out = ours(tokens[:, t:t + 1], memory_lengths=lengths, cache=cache)
        cache = out.cache
        steps.append(out.output)
    torch.testing.assert_close(torch.cat(steps, dim=1), x)
    assert cache[1]["self"][0].shape == (3, H, 5, E // H)


def test_stacks_reject_bad_tokens_and_positions_past_max_len():
    encoder = Encoder(11, E, 1, H, 20, max_len=4)
    with pytest.raises(DivekitError, match="tokens must be an int64 tensor"):
        encoder(torch.zeros(2, 3))
    with pytest.raises(DivekitError, match="max_len=4"):
        encoder(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(DivekitError, match="positional must be one of"):
        Encoder(11, E, 1, H, 20, positional="rotary")
    with pytest.raises(DivekitError, match="needs the memory"):
        Decoder(11, E, 1, H, 20)(torch.zeros(2, 3, dtype=torch.long))
