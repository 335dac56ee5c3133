"""10.7-11.7 Sequence-to-sequence learning: masked per-token cross-entropy, perplexity and
corpus BLEU of decoded translations.

A batch is ``(src, src_len, tgt_in, tgt_out, ref_id)`` (see :mod:`divekit.data.translation`).
The loss is the cross-entropy of every real (non-padding) target token, averaged over those
tokens, so padding never changes it and a batch counts its real target tokens. On evaluation
splits the task also decodes each distinct source sentence once (the pairs with
``ref_id >= 0``), greedily or with beam search, and scores the translations against all of that
sentence's references with sacreBLEU's corpus BLEU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from divekit.engine.metrics import Perplexity
from divekit.engine.task import Output, Task, register_task
from divekit.errors import DivekitError


@register_task("translation")
@dataclass
class Translation(Task):
    """Teacher-forced training of an encoder-decoder; BLEU of its decoded output.

    Args:
        label_smoothing: spread this much target probability over the vocabulary (Vaswani et
            al. 2017 use 0.1); the reported perplexity is then of the smoothed loss.
        num_beams: beam width of the decoding that BLEU scores (1 = greedy).
        length_penalty: the exponent ``alpha`` of beam search's length normalisation.
        bleu: decode the evaluation splits and report their BLEU (costs a decoding pass).
    """

    label_smoothing: float = 0.0
    num_beams: int = 1
    length_penalty: float = 0.75
    bleu: bool = True

    monitor = "bleu"

    def __post_init__(self) -> None:
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) \
                or self.num_beams < 1:
            raise DivekitError(f"num_beams must be a positive integer, got {self.num_beams!r}")
        if not 0 <= self.label_smoothing < 1:
            raise DivekitError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        self.vocab = self.references = None
        self.specials = {"pad": 1, "bos": 2, "eos": 3}
        self.max_len = 0
        self.monitor = "bleu" if self.bleu else "loss"

    def setup(self, data: Any) -> None:
        vocab = getattr(data, "tgt_vocab", None)
        if vocab is None:
            raise DivekitError(f"the translation task needs sentence-pair data (e.g. fra-eng), "
                               f"got {getattr(data, 'name', type(data).__name__)!r}")
        self.vocab, self.references = vocab, data.references
        self.specials = {name: vocab[f"<{name}>"] for name in ("pad", "bos", "eos")}
        self.max_len = data.max_target_len

    def inputs(self, batch: Any) -> Any:
        return batch[:3]

    def targets(self, batch: Any) -> torch.Tensor:
        return batch[3]

    def count(self, batch: Any) -> torch.Tensor:
        return (batch[3] != self.specials["pad"]).sum()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=self.specials["pad"],
                               label_smoothing=self.label_smoothing)

    def step(self, model: nn.Module, batch: Any) -> Output:
        src, src_len, tgt_in, tgt_out, ref_id = batch
        loss = self.loss(model(src, src_len, tgt_in), tgt_out)
        if model.training or not self.bleu or self.references is None:
            return Output(loss)
        rows = (ref_id >= 0).nonzero()[:, 0]
        if len(rows) == 0:
            return Output(loss, ([], []))
        tokens = self.decode(model, src[rows], src_len[rows])
        return Output(loss, (ref_id[rows].tolist(), [self.detokenize(t) for t in tokens]))

    def decode(self, model: nn.Module, src: torch.Tensor, src_len: torch.Tensor,
               max_len: int | None = None) -> list[list[int]]:
        """The token ids of each source's translation (no ``<bos>``/``<eos>``)."""
        from divekit.text.decode import generate

        model = getattr(model, "module", model)  # DistributedDataParallel
        result = generate(model, src, src_len, bos=self.specials["bos"],
                          eos=self.specials["eos"], max_new_tokens=max_len or self.max_len,
                          num_beams=self.num_beams, length_penalty=self.length_penalty)
        return result.tokens

    def detokenize(self, tokens: list[int]) -> str:
        return " ".join(self.vocab.to_tokens(tokens))

    def metrics(self, split: str) -> dict[str, Any]:
        metrics: dict[str, Any] = {"ppl": Perplexity()}
        if split != "train" and self.bleu and self.references and split in self.references:
            metrics["bleu"] = SplitBLEU(self.references[split])
        return metrics

    def update(self, metrics: dict, output: Output, batch: Any) -> None:
        metrics["ppl"].update(output.loss, self.count(batch))
        if "bleu" in metrics and output.outputs is not None:
            metrics["bleu"].update(*output.outputs)


class SplitBLEU:
    """Corpus BLEU of one split: hypotheses arrive with the ids of their source sentences and
    are scored against all references of each (sacreBLEU, 13a tokenizer, 0-100)."""

    higher_is_better = True

    def __init__(self, references: list[list[str]]) -> None:
        from divekit.text.bleu import CorpusBLEU

        self.references = references
        self.bleu = CorpusBLEU()

    def update(self, ref_ids: list[int], hypotheses: list[str]) -> None:
        self.bleu.update(hypotheses, [self.references[i] for i in ref_ids])

    def reset(self) -> None:
        self.bleu.reset()

    def to(self, device: torch.device | str) -> SplitBLEU:
        return self

    @property
    def metric_state(self) -> dict[str, torch.Tensor]:
        return self.bleu.metric_state

    def compute(self) -> torch.Tensor:
        return self.bleu.compute()
