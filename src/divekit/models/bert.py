"""15.8 Bidirectional Encoder Representations from Transformers (d2l 15.8; Devlin et al. 2019,
"BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding").

BERT is a Transformer encoder over one text or a pair of texts (``<cls> A <sep> B <sep>``):
each token's input is the sum of a token embedding, a learned position embedding and a segment
(token type) embedding, layer-normalised. Its layers are the post-norm encoder layers of 11.7
with GELU. Pretraining puts two heads on top: masked language modelling (MLM, predict the
original tokens at masked positions from the per-token features) and next sentence prediction
(NSP, from the pooled output: ``tanh(dense(features of <cls>))``). Fine-tuning replaces them with
a classifier on the pooled output (sentence or sentence-pair classification), a classifier per
token (tagging) or start/end logits per token (extractive question answering).

The layout is the paper's (and Google's and Hugging Face's code), where the course's d2l code
simplifies: the embeddings are layer-normalised, the MLM head's hidden layer uses GELU and its
output layer shares the token embedding's weight (with a bias of its own).

Module names follow Hugging Face's ``BertModel`` (``embeddings``, ``encoder.layer``, ``pooler``,
``cls.predictions``, ``classifier``, ``qa_outputs``); only each layer's attention and FFN are
divekit's :class:`~divekit.layers.transformer.EncoderLayer` (``nn.TransformerEncoderLayer``'s
names), so :func:`convert_hf_state_dict` maps ``transformers`` checkpoints such as
``bert-base-uncased`` key by key.

Masks: ``valid_len`` ``(B,)`` counts the real tokens of each sequence (the course's
``valid_lens``; Hugging Face's ``attention_mask`` is ``arange(L) < valid_len``); no position
attends to the padding after them. Padding positions still get features: ignore them.

Initialisation as BERT's: weights of linear layers and embeddings normal with standard deviation
0.02 (the attention's packed ``in_proj_weight`` too), zero biases, unit layer-norm scales.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from divekit.errors import DivekitError
from divekit.layers.attention import MultiHeadAttention, keys_allowed
from divekit.layers.transformer import EncoderLayer
from divekit.models.registry import register_model

State = dict[str, torch.Tensor]
LAYER_NORM_EPS = 1e-12  # BERT's (TensorFlow's original code), not PyTorch's 1e-5
INIT_STD = 0.02  # BERT's (Devlin et al.), for widths of 768 and more
UNCASED_VOCAB = 30522  # bert-base-uncased's WordPiece vocabulary


class BertSize(NamedTuple):
    """The sizes of one BERT configuration."""

    num_layers: int
    num_hiddens: int
    num_heads: int
    ffn_num_hiddens: int
    dropout: float


BERT_SIZES = {
    "small": BertSize(2, 128, 2, 256, 0.2),  # the course's
    "base": BertSize(12, 768, 12, 3072, 0.1),  # BERT_BASE, 110M parameters
    "large": BertSize(24, 1024, 16, 4096, 0.1),  # BERT_LARGE, 340M parameters
}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DivekitError(f"{name} must be a positive integer, got {value!r}")


def _check_dropout(dropout: float) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise DivekitError(f"dropout must be a number in [0, 1), got {dropout!r}")


def init_std(num_hiddens: int) -> float:
    """The initial weights' standard deviation: BERT's 0.02 at width 768 and above, growing as
    ``width ** -0.5`` below it. A fixed 0.02 starves narrow models: at the book's width 128 and
    below, what attention adds to a token's own embedding starts so small that every ``<cls>``
    vector is nearly the same and fine-tuning stalls on plateaus (measured on a 32-wide model:
    three sentence pairs it could not tell apart in 240 steps)."""
    return INIT_STD * math.sqrt(max(1.0, 768 / num_hiddens))


def init_bert_weights(module: nn.Module, std: float = INIT_STD) -> None:
    """BERT's initialisation of one module: normal weights of standard deviation ``std``, zero
    biases, unit layer norms (use with ``model.apply(partial(init_bert_weights, std=...))``)."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, MultiHeadAttention):  # its out_proj is an nn.Linear
        nn.init.normal_(module.in_proj_weight, std=std)
        if module.in_proj_bias is not None:
            nn.init.zeros_(module.in_proj_bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertEmbeddings(nn.Module):
    """Token + learned position + segment embeddings, layer norm, dropout.

    Args:
        vocab_size: tokens in the vocabulary.
        num_hiddens: model width ``H``.
        max_position: longest sequence (positions ``0 .. max_position - 1``).
        num_segments: segment (token type) ids, 2 for sentence pairs.
        dropout: after the layer norm.

    Shape:
        tokens, segments ``(B, L)`` int64 -> ``(B, L, H)``.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, max_position: int = 512,
                 num_segments: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        _check_positive(vocab_size=vocab_size, num_hiddens=num_hiddens,
                        max_position=max_position, num_segments=num_segments)
        self.word_embeddings = nn.Embedding(vocab_size, num_hiddens)
        self.position_embeddings = nn.Embedding(max_position, num_hiddens)
        self.token_type_embeddings = nn.Embedding(num_segments, num_hiddens)
        self.LayerNorm = nn.LayerNorm(num_hiddens, eps=LAYER_NORM_EPS)  # noqa: N815 (HF's name)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = (self.word_embeddings(tokens) + self.position_embeddings(positions)
             + self.token_type_embeddings(segments))
        return self.dropout(self.LayerNorm(x))


class BertEncoder(nn.Module):
    """``num_layers`` post-norm GELU encoder layers in ``layer`` (Hugging Face's name).

    Shape:
        x ``(B, L, H)``, allowed ``(B, 1, 1, L)`` boolean (True = may attend) -> ``(B, L, H)``.
    """

    def __init__(self, num_layers: int, num_hiddens: int, num_heads: int, ffn_num_hiddens: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        _check_positive(num_layers=num_layers)
        # BERT has no dropout inside the FFN, only on each sub-layer's output.
        self.layer = nn.ModuleList(
            EncoderLayer(num_hiddens, num_heads, ffn_num_hiddens, dropout, activation="gelu",
                         ffn_dropout=0.0, layer_norm_eps=LAYER_NORM_EPS, bias=True)
            for _ in range(num_layers))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, attn_mask=allowed)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: the features of the first token (``<cls>``), transformed.

    Shape:
        ``(B, L, H)`` -> ``(B, H)``.
    """

    def __init__(self, num_hiddens: int) -> None:
        super().__init__()
        self.dense = nn.Linear(num_hiddens, num_hiddens)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(sequence[:, 0]))


class BertModelOutput(NamedTuple):
    """``sequence`` ``(B, L, H)`` per-token features; ``pooled`` ``(B, H)`` (``None`` for a
    model built without the pooler)."""

    sequence: torch.Tensor
    pooled: torch.Tensor | None


class BertModel(nn.Module):
    """The BERT encoder: embeddings, ``num_layers`` encoder layers and the pooler.

    Args:
        vocab_size: tokens in the vocabulary.
        num_layers: encoder layers.
        num_hiddens: model width ``H``.
        num_heads: attention heads (divides ``H``).
        ffn_num_hiddens: hidden units of each layer's FFN.
        dropout: on the embeddings, the attention weights and each sub-layer's output.
        max_position: longest sequence.
        add_pooling_layer: build the pooler (Hugging Face's token-classification and
            question-answering models have none).

    Shape:
        tokens, segments ``(B, L)`` int64, valid_len ``(B,)`` -> sequence ``(B, L, H)``,
        pooled ``(B, H)``.
    """

    def __init__(self, vocab_size: int, num_layers: int, num_hiddens: int, num_heads: int,
                 ffn_num_hiddens: int, dropout: float = 0.1, max_position: int = 512, *,
                 add_pooling_layer: bool = True) -> None:
        super().__init__()
        _check_dropout(dropout)
        self.num_hiddens, self.max_position = num_hiddens, max_position
        self.embeddings = BertEmbeddings(vocab_size, num_hiddens, max_position, dropout=dropout)
        self.encoder = BertEncoder(num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout)
        self.pooler = BertPooler(num_hiddens) if add_pooling_layer else None
        self.apply(functools.partial(init_bert_weights, std=init_std(num_hiddens)))

    def _inputs(self, tokens: torch.Tensor, segments: torch.Tensor | None,
                valid_len: torch.Tensor | None) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise DivekitError(f"tokens must be an int64 tensor of shape (batch, length), got "
                               f"{tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_position:
            raise DivekitError(f"sequences of {tokens.shape[1]} tokens are longer than "
                               f"max_position={self.max_position}; truncate them or build the "
                               f"model with a larger max_position")
        if segments is not None and segments.shape != tokens.shape:
            raise DivekitError(f"segments must have the shape of tokens {tuple(tokens.shape)}, "
                               f"got {tuple(segments.shape)}")
        if valid_len is not None and valid_len.shape != tokens.shape[:1]:
            raise DivekitError(f"valid_len must have shape ({tokens.shape[0]},), one length "
                               f"per sequence, got {tuple(valid_len.shape)}")
        return torch.zeros_like(tokens) if segments is None else segments

    def encode(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
               valid_len: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token features ``(B, L, H)``.

        Args:
            tokens: ``(B, L)`` token ids.
            segments: ``(B, L)`` segment ids (0 for the first text, 1 for the second);
                default all 0.
            valid_len: ``(B,)`` real tokens per sequence, at least 1 (a sequence allowed no
                key gets NaN features); default: no padding.
        """
        segments = self._inputs(tokens, segments, valid_len)
        allowed = keys_allowed(tokens.shape[1], valid_len)  # built once for every layer
        return self.encoder(self.embeddings(tokens, segments), allowed)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
                valid_len: torch.Tensor | None = None) -> BertModelOutput:
        """Per-token features and the pooled output (arguments as :meth:`encode`)."""
        sequence = self.encode(tokens, segments, valid_len)
        return BertModelOutput(sequence, None if self.pooler is None else self.pooler(sequence))

    def adapt_state_dict(self, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``state`` converted when it is a Hugging Face checkpoint (:func:`convert_hf_state_dict`,
        without the ``bert.`` prefix of the task models), else unchanged."""
        if not looks_like_hf(state):
            return state
        return {key.removeprefix("bert."): value
                for key, value in convert_hf_state_dict(state).items()}


class _BertTask(nn.Module):
    """What every task model shares: ``self.bert``, :meth:`encode`, :meth:`adapt_state_dict`."""

    bert: BertModel
    # Task heads: loaded from a weights file only where file and model agree on them, so a
    # pretraining run (``cls.*``) or a Hugging Face checkpoint starts any fine-tuning model.
    head_patterns = ("cls.*", "bert.pooler.*", "classifier.*", "qa_outputs.*")

    def _init_heads(self, *heads: nn.Module) -> None:
        for head in heads:
            head.apply(functools.partial(init_bert_weights, std=init_std(self.bert.num_hiddens)))

    def encode(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
               valid_len: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token features ``(B, L, H)`` (see :meth:`BertModel.encode`)."""
        return self.bert.encode(tokens, segments, valid_len)

    def adapt_state_dict(self, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``state`` converted when it is a Hugging Face checkpoint, else unchanged; keys of
        heads this model lacks (``cls.*`` in a classifier) stay, for the loader to skip."""
        return convert_hf_state_dict(state) if looks_like_hf(state) else state


class BertPredictionHeadTransform(nn.Module):
    """``LayerNorm(gelu(dense(x)))``: the MLM head's hidden layer."""

    def __init__(self, num_hiddens: int) -> None:
        super().__init__()
        self.dense = nn.Linear(num_hiddens, num_hiddens)
        self.LayerNorm = nn.LayerNorm(num_hiddens, eps=LAYER_NORM_EPS)  # noqa: N815 (HF's name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """The masked-language-model head (the course's ``MaskLM``): transform, then vocabulary
    logits by a decoder whose weight is the input token embedding (tied) with its own bias.

    Shape:
        ``(..., H)`` -> ``(..., V)``.
    """

    def __init__(self, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        vocab_size, num_hiddens = word_embeddings.weight.shape
        self.transform = BertPredictionHeadTransform(num_hiddens)
        # Built on the meta device: its weight becomes the embedding's, so a V x H matrix of
        # its own would only be allocated and initialised to be thrown away.
        self.decoder = nn.Linear(num_hiddens, vocab_size, device="meta")
        self.decoder.weight = word_embeddings.weight
        self.decoder.bias = nn.Parameter(word_embeddings.weight.new_zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertPreTrainingHeads(nn.Module):
    """``predictions`` (MLM) and ``seq_relationship`` (NSP, the course's
    ``NextSentencePred``)."""

    def __init__(self, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(word_embeddings)
        self.seq_relationship = nn.Linear(word_embeddings.weight.shape[1], 2)


class PretrainingOutput(NamedTuple):
    """``mlm_logits`` ``(M, V)`` at the ``M`` masked positions (``(B, L, V)`` without a mask);
    ``nsp_logits`` ``(B, 2)``: class 1 = the second text follows the first."""

    mlm_logits: torch.Tensor
    nsp_logits: torch.Tensor


class BertForPreTraining(_BertTask):
    """BERT with the masked-language-model and next-sentence-prediction heads.

    Args:
        vocab_size, num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout,
            max_position: see :class:`BertModel`.
    """

    def __init__(self, vocab_size: int, num_layers: int, num_hiddens: int, num_heads: int,
                 ffn_num_hiddens: int, dropout: float = 0.1, max_position: int = 512) -> None:
        super().__init__()
        self.bert = BertModel(vocab_size, num_layers, num_hiddens, num_heads, ffn_num_hiddens,
                              dropout, max_position)
        self.cls = BertPreTrainingHeads(self.bert.embeddings.word_embeddings)
        self._init_heads(self.cls.predictions.transform, self.cls.seq_relationship)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
                valid_len: torch.Tensor | None = None,
                mlm_mask: torch.Tensor | None = None) -> PretrainingOutput:
        """MLM and NSP logits.

        Args:
            tokens, segments, valid_len: see :meth:`BertModel.encode`.
            mlm_mask: ``(B, L)`` boolean, True at the positions to predict; the MLM head then
                runs only there (over every position it would cost ``L x V`` per sequence),
                in ``features[mlm_mask]`` order (row by row). ``None``: every position.

        Returns:
            :class:`PretrainingOutput` ``(mlm_logits (M, V) or (B, L, V), nsp_logits (B, 2))``.
        """
        if mlm_mask is not None and (mlm_mask.dtype != torch.bool
                                     or mlm_mask.shape != tokens.shape):
            raise DivekitError(f"mlm_mask must be boolean of the shape of tokens "
                               f"{tuple(tokens.shape)} (True = predict), got {mlm_mask.dtype} "
                               f"{tuple(mlm_mask.shape)}")
        sequence, pooled = self.bert(tokens, segments, valid_len)
        if mlm_mask is not None:
            sequence = sequence[mlm_mask]
        return PretrainingOutput(self.cls.predictions(sequence), self.cls.seq_relationship(pooled))


class BertClassifier(_BertTask):
    """BERT for (pair) classification: dropout and a linear layer on the pooled output.

    Args:
        num_classes: classes ``C``.
        vocab_size, num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout,
            max_position: see :class:`BertModel`; ``dropout`` also precedes the classifier.

    Shape:
        tokens, segments ``(B, L)``, valid_len ``(B,)`` -> logits ``(B, C)``.
    """

    def __init__(self, num_classes: int, vocab_size: int, num_layers: int, num_hiddens: int,
                 num_heads: int, ffn_num_hiddens: int, dropout: float = 0.1,
                 max_position: int = 512) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes)
        self.bert = BertModel(vocab_size, num_layers, num_hiddens, num_heads, ffn_num_hiddens,
                              dropout, max_position)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_hiddens, num_classes)
        self._init_heads(self.classifier)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
                valid_len: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(self.bert(tokens, segments, valid_len).pooled))


class BertTagger(_BertTask):
    """BERT for token classification (tagging): dropout and a linear layer per token.

    No pooler, as Hugging Face's ``BertForTokenClassification``: it would get no gradient.

    Args: as :class:`BertClassifier`.

    Shape:
        tokens, segments ``(B, L)``, valid_len ``(B,)`` -> logits ``(B, L, C)``.
    """

    def __init__(self, num_classes: int, vocab_size: int, num_layers: int, num_hiddens: int,
                 num_heads: int, ffn_num_hiddens: int, dropout: float = 0.1,
                 max_position: int = 512) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes)
        self.bert = BertModel(vocab_size, num_layers, num_hiddens, num_heads, ffn_num_hiddens,
                              dropout, max_position, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_hiddens, num_classes)
        self._init_heads(self.classifier)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
                valid_len: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(self.encode(tokens, segments, valid_len)))


class BertQA(_BertTask):
    """BERT for extractive question answering: start and end logits per token.

    No pooler, as Hugging Face's ``BertForQuestionAnswering``.

    Args: as :class:`BertModel`.

    Shape:
        tokens, segments ``(B, L)``, valid_len ``(B,)`` -> logits ``(B, L, 2)`` (``[..., 0]``
        start, ``[..., 1]`` end).
    """

    def __init__(self, vocab_size: int, num_layers: int, num_hiddens: int, num_heads: int,
                 ffn_num_hiddens: int, dropout: float = 0.1, max_position: int = 512) -> None:
        super().__init__()
        self.bert = BertModel(vocab_size, num_layers, num_hiddens, num_heads, ffn_num_hiddens,
                              dropout, max_position, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(num_hiddens, 2)
        self._init_heads(self.qa_outputs)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor | None = None,
                valid_len: torch.Tensor | None = None) -> torch.Tensor:
        return self.qa_outputs(self.encode(tokens, segments, valid_len))


# ---- Hugging Face checkpoints ----

_HF_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")
_HF_SUBLAYERS = {  # Hugging Face's per-layer module -> divekit's EncoderLayer's
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}
_HF_QKV = re.compile(r"^attention\.self\.(query|key|value)\.(weight|bias)$")
_HF_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_BARE_PREFIXES = ("embeddings.", "encoder.", "pooler.")


def looks_like_hf(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` has key names of ``transformers``' BERT models (divekit's never do)."""
    return any(key.startswith(_BARE_PREFIXES) or ".attention.self." in key
               or key.endswith((".gamma", ".beta", "position_ids")) or key == "cls.predictions.bias"
               for key in state)


def convert_hf_state_dict(state: Mapping[str, torch.Tensor]) -> State:
    """A ``transformers`` BERT state dict with divekit's key names.

    Reads the keys of ``BertModel``, ``BertForPreTraining``, ``BertForSequenceClassification``,
    ``BertForTokenClassification`` and ``BertForQuestionAnswering`` (and the TensorFlow-era
    ``LayerNorm.gamma``/``beta``): each layer's query, key and value projections are stacked
    into ``self_attn.in_proj_weight``/``in_proj_bias``; the output projection, FFN and norms
    are renamed (``attention.output.dense`` -> ``self_attn.out_proj``, ``attention.output.
    LayerNorm`` -> ``norm1``, ``intermediate.dense`` -> ``linear1``, ``output.dense`` ->
    ``linear2``, ``output.LayerNorm`` -> ``norm2``); a bare ``BertModel``'s keys get the
    ``bert.`` prefix; buffers (``position_ids``, ``token_type_ids``) are dropped; the MLM
    decoder gets ``cls.predictions.bias`` and, where the file leaves the tied weight out, the
    word embeddings. Other keys (task heads) pass through.

    Raises:
        DivekitError: a layer lacks one of its query, key and value tensors.
    """
    renamed: State = {}
    for key, value in state.items():
        if key.endswith(_HF_BUFFERS):
            continue
        if key.startswith(_BARE_PREFIXES):
            key = "bert." + key
        if key.endswith(".gamma") or key.endswith(".beta"):  # TensorFlow's layer-norm names
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        renamed[key] = value

    converted: State = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (layer, weight/bias) -> q, k, v
    for key, value in renamed.items():
        layer = _HF_LAYER.match(key)
        if layer is None:
            converted[key] = value
            continue
        prefix, rest = f"bert.encoder.layer.{layer[1]}.", layer[2]
        projection = _HF_QKV.match(rest)
        if projection is not None:
            qkv.setdefault((prefix, projection[2]), {})[projection[1]] = value
            continue
        module, _, name = rest.rpartition(".")
        converted[prefix + _HF_SUBLAYERS.get(module, module) + "." + name] = value
    for (prefix, name), parts in qkv.items():
        missing = [part for part in ("query", "key", "value") if part not in parts]
        if missing:
            raise DivekitError(f"{prefix}attention.self has no {', '.join(missing)} {name}: the "
                               f"checkpoint is incomplete, so its attention cannot be converted")
        converted[f"{prefix}self_attn.in_proj_{name}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]])

    # The MLM decoder's bias is stored as cls.predictions.bias (decoder.bias is the same tensor
    # in transformers and absent from old files); its weight is the tied word embedding, which
    # save_pretrained leaves out.
    if "cls.predictions.bias" in converted:
        converted["cls.predictions.decoder.bias"] = converted.pop("cls.predictions.bias")
    if (any(key.startswith("cls.predictions.") for key in converted)
            and "cls.predictions.decoder.weight" not in converted
            and "bert.embeddings.word_embeddings.weight" in converted):
        converted["cls.predictions.decoder.weight"] = (
            converted["bert.embeddings.word_embeddings.weight"])
    return converted


# ---- registry ----

_SECTION = "15.8 Bidirectional Encoder Representations from Transformers (BERT)"


def _sizes(size: str, num_layers: int | None, num_hiddens: int | None, num_heads: int | None,
           ffn_num_hiddens: int | None, dropout: float | None) -> BertSize:
    """The sizes of ``size`` with the given overrides (``None`` = the size's)."""
    if size not in BERT_SIZES:
        raise DivekitError(f"size must be one of {', '.join(BERT_SIZES)}, got {size!r}")
    given = BertSize(num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout)
    return BertSize(*(default if value is None else value
                      for value, default in zip(given, BERT_SIZES[size], strict=True)))


def _register_pretraining(size: str, params: int, description: str) -> None:
    def build(vocab_size: int = UNCASED_VOCAB, num_layers: int | None = None,
              num_hiddens: int | None = None, num_heads: int | None = None,
              ffn_num_hiddens: int | None = None, dropout: float | None = None,
              max_position: int = 512) -> BertForPreTraining:
        sizes = _sizes(size, num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout)
        return BertForPreTraining(vocab_size, *sizes, max_position=max_position)

    build.__name__ = f"bert_{size}"
    build.__doc__ = (f"{description}\n\nArgs: see :class:`BertModel`; ``None`` keeps the "
                     "size's value.")
    register_model(f"bert-{size}", family="bert", section=_SECTION, task="bert-pretraining",
                   input_shape=(128,), params=params)(build)


# The registered counts are those of the built models (tests/models/test_bert.py checks them
# against a formula and against transformers' models; the encoders of base and large are
# bert-base-uncased's 109,482,240 and bert-large-uncased's 335,141,888 parameters).
_register_pretraining("small", 4_301_884, "BERT for pretraining, the course's size: 2 layers, "
                      "128 hidden, 2 heads, FFN 256.")
_register_pretraining("base", 110_106_428, "BERT-base for pretraining: 12 layers, 768 hidden, "
                      "12 heads, FFN 3072 (110M).")
_register_pretraining("large", 336_226_108, "BERT-large for pretraining: 24 layers, 1024 "
                      "hidden, 16 heads, FFN 4096 (340M).")


@register_model("bert-classifier", family="bert", section=_SECTION, task="text-classification",
                input_shape=(128,), params=4_254_594)
def bert_classifier(vocab_size: int = UNCASED_VOCAB, size: str = "small", num_classes: int = 2,
                    num_layers: int | None = None, num_hiddens: int | None = None,
                    num_heads: int | None = None, ffn_num_hiddens: int | None = None,
                    dropout: float | None = None,
                    max_position: int = 512) -> BertClassifier:
    """BERT for (sentence-pair) classification from the pooled output.

    Args: ``size`` one of ``BERT_SIZES``; the others see :class:`BertClassifier` (``None``
    keeps the size's value).
    """
    sizes = _sizes(size, num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout)
    return BertClassifier(num_classes, vocab_size, *sizes, max_position=max_position)


@register_model("bert-tagger", family="bert", section=_SECTION, task="token-classification",
                input_shape=(128,), params=4_238_082)
def bert_tagger(vocab_size: int = UNCASED_VOCAB, size: str = "small", num_classes: int = 2,
                num_layers: int | None = None, num_hiddens: int | None = None,
                num_heads: int | None = None, ffn_num_hiddens: int | None = None,
                dropout: float | None = None, max_position: int = 512) -> BertTagger:
    """BERT for token classification (tagging), one prediction per token.

    Args: as ``bert-classifier``.
    """
    sizes = _sizes(size, num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout)
    return BertTagger(num_classes, vocab_size, *sizes, max_position=max_position)


@register_model("bert-qa", family="bert", section=_SECTION, task="question-answering",
                input_shape=(128,), params=4_238_082)
def bert_qa(vocab_size: int = UNCASED_VOCAB, size: str = "small", num_layers: int | None = None,
            num_hiddens: int | None = None, num_heads: int | None = None,
            ffn_num_hiddens: int | None = None, dropout: float | None = None,
            max_position: int = 512) -> BertQA:
    """BERT for extractive question answering: answer start and end logits per token.

    Args: ``size`` one of ``BERT_SIZES``; the others see :class:`BertQA` (``None`` keeps the
    size's value).
    """
    sizes = _sizes(size, num_layers, num_hiddens, num_heads, ffn_num_hiddens, dropout)
    return BertQA(vocab_size, *sizes, max_position=max_position)
