"""Layers shared by the models: multi-head attention (d2l 11.5), positional encodings (11.6)
and Transformer encoder/decoder layers and stacks (11.7; Vaswani et al. 2017)."""

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

__all__ = [
    "AttentionOutput", "Decoder", "DecoderLayer", "DecoderLayerOutput", "DecoderOutput",
    "Encoder", "EncoderLayer", "LearnedPositionalEncoding", "MultiHeadAttention",
    "SinusoidalPositionalEncoding", "causal_mask", "keys_allowed",
]
