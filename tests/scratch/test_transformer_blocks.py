"""The from-scratch Transformer blocks (course 11.7) against nn.TransformerEncoderLayer and
nn.TransformerDecoderLayer with copied weights: values and gradients in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from divekit.scratch.transformer import (
    AddNorm,
    PositionWiseFFN,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)
from tests.oracle import assert_same, f64, randn
from tests.scratch.test_attention import (
    assert_same_module,
    mha_to_torch,
    outputs_and_grads,
    randomize,
)

D, HEADS, FFN = 8, 2, 12
SRC, TGT = 6, 5
SRC_LENS = torch.tensor([6, 2, 4])
RENAMED = {"ffn.dense1": "linear1", "ffn.dense2": "linear2", "addnorm1.ln": "norm1",
           "addnorm2.ln": "norm2", "addnorm3.ln": "norm3"}


def block_to_torch(named):
    """Our block's parameters (or gradients) under the PyTorch layer's names."""
    out = {}
    for ours, theirs in (("attention.", "self_attn."), ("attention1.", "self_attn."),
                         ("attention2.", "multihead_attn.")):
        if f"{ours}W_q.weight" in named:
            out |= {theirs + name: v for name, v in mha_to_torch(named, ours).items()}
    for name, value in named.items():
        module, _, leaf = name.rpartition(".")
        if module in RENAMED:
            out[f"{RENAMED[module]}.{leaf}"] = value
    return out


def padding_mask(lens, length):
    """nn.Transformer*Layer's key_padding_mask: True at padding."""
    return torch.arange(length) >= lens[:, None]


def test_position_wise_ffn_and_add_norm():
    ffn = PositionWiseFFN(D, FFN).double()
    X = randn(2, 3, D)
    expected = F.linear(F.relu(F.linear(X, ffn.dense1.weight, ffn.dense1.bias)),
                        ffn.dense2.weight, ffn.dense2.bias)
    torch.testing.assert_close(ffn(X), expected)
    post, pre = AddNorm(D).double(), AddNorm(D, norm_first=True).double()
    assert_same(post, lambda X, Y: F.layer_norm(X + Y, (D,)), X, randn(2, 3, D, seed=5))
    assert_same(pre, lambda X, Y: X + Y, X, randn(2, 3, D, seed=5))
    torch.testing.assert_close(pre.sublayer_input(X), F.layer_norm(X, (D,)))
    assert post.sublayer_input(X) is X


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_encoder_block_matches_torch(norm_first):
    ours = TransformerEncoderBlock(D, FFN, HEADS, dropout=0.0, use_bias=True,
                                   norm_first=norm_first).double()
    randomize(ours)
    ref = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, activation="relu",
                                     batch_first=True, norm_first=norm_first).double()
    ref.load_state_dict(block_to_torch(dict(ours.named_parameters())))
    assert_same_module(
        ours, ref, block_to_torch,
        lambda m, X: m(X, SRC_LENS),
        lambda m, X: m(X, src_key_padding_mask=padding_mask(SRC_LENS, SRC)),
        [randn(3, SRC, D, seed=2)])


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_decoder_block_matches_torch(norm_first):
    ours = TransformerDecoderBlock(D, FFN, HEADS, dropout=0.0, use_bias=True,
                                   norm_first=norm_first).double()
    randomize(ours)
    ref = nn.TransformerDecoderLayer(D, HEADS, FFN, dropout=0.0, activation="relu",
                                     batch_first=True, norm_first=norm_first).double()
    ref.load_state_dict(block_to_torch(dict(ours.named_parameters())))
    causal = torch.ones(TGT, TGT, dtype=torch.bool).triu(1)  # True = may not attend
    assert_same_module(
        ours, ref, block_to_torch,
        lambda m, X, memory: m(X, memory, SRC_LENS)[0],
        lambda m, X, memory: m(X, memory, tgt_mask=causal,
                               memory_key_padding_mask=padding_mask(SRC_LENS, SRC)),
        [randn(3, TGT, D, seed=2), randn(3, SRC, D, seed=3)])


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_decoder_block_step_by_step_equals_the_whole_sequence(norm_first):
    block = TransformerDecoderBlock(D, FFN, HEADS, norm_first=norm_first).double()
    randomize(block)
    X, memory = randn(3, TGT, D, seed=2), randn(3, SRC, D, seed=3)
    whole, key_values = block(X, memory, SRC_LENS)
    past, steps = None, []
    for t in range(TGT):
        out, past = block(X[:, t:t + 1], memory, SRC_LENS, past)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), whole)
    torch.testing.assert_close(past, key_values)
    # The causal mask is real: changing a later input leaves earlier outputs alone only.
    changed = X.clone()
    changed[:, 3] += 1.0
    other, _ = block(changed, memory, SRC_LENS)
    torch.testing.assert_close(other[:, :3], whole[:, :3])
    assert not torch.allclose(other[:, 3:], whole[:, 3:])


def test_encoder_block_ignores_padding_content():
    block = TransformerEncoderBlock(D, FFN, HEADS).double()
    X = randn(3, SRC, D)
    noisy = X.clone()
    for b, n in enumerate(SRC_LENS.tolist()):
        noisy[b, n:] = 100.0
    _, grads, _ = outputs_and_grads(block, lambda m, X: m(X, SRC_LENS)[:, :2], [X])
    torch.testing.assert_close(block(noisy, SRC_LENS)[:, :2], block(X, SRC_LENS)[:, :2])
    assert (grads[0][1, 2:] == 0).all() and grads[0].dtype == f64
