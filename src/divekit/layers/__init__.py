"""Layers shared by the models: multi-head attention (d2l 11.5), positional encodings (11.6),
Transformer encoder/decoder layers and stacks (11.7; Vaswani et al. 2017) and bilinear-initialised
transposed convolutions (14.10-14.11)."""

from divekit.layers.attention import (
    AttentionOutput,
    MultiHeadAttention,
    causal_mask,
    keys_allowed,
)
from divekit.layers.positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding
from divekit.layers.transformer import (
    Decoder,
    DecoderLayer,
    DecoderLayerOutput,
    DecoderOutput,
    Encoder,
    EncoderLayer,
)
from divekit.layers.upsampling import bilinear_kernel, bilinear_upsampling

__all__ = [
    "AttentionOutput", "Decoder", "DecoderLayer", "DecoderLayerOutput", "DecoderOutput",
    "Encoder", "EncoderLayer", "LearnedPositionalEncoding", "MultiHeadAttention",
    "SinusoidalPositionalEncoding", "bilinear_kernel", "bilinear_upsampling", "causal_mask",
    "keys_allowed",
]
