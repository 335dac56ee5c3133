"""10.8 Beam search: greedy, beam and exhaustive decoding for encoder-decoder models.

Each decoder turns source sentences into target token sequences, one token per time step, with
the translation model interface of :mod:`divekit.models.seq2seq` (``encode``, ``step``,
``reorder``). A candidate output is a sequence that ends in ``eos`` or reaches ``max_len``
tokens; with ``L`` its generated tokens (``eos`` included), it scores

    (1 / L**alpha) * sum_t log P(y_t | y_<t, x),        alpha = length_penalty,

since a plain sum of log probabilities (``alpha = 0``) favours short outputs.

* Greedy search takes the most likely token at every step: cheap, but the sequence of best
  tokens need not be the best sequence.
* Exhaustive search scores every candidate, ``O(V**max_len)``: the optimum, only for toys.
* Beam search (the course; the bookkeeping of finished hypotheses follows Hugging Face's
  ``generate``) keeps the ``num_beams`` best unfinished prefixes per source. At every step it
  ranks all their one-token extensions by total log probability; of the top ``num_beams``,
  those ending in ``eos`` are finished hypotheses, and the ``num_beams`` best extensions not
  ending in ``eos`` become the next live prefixes. A source is done when no live prefix can
  beat its best finished score any more (log probabilities only fall as a prefix grows, so the
  bound is the live prefix's sum over the most favourable final length) or at ``max_len``.

All decoders are batched: one ``model.step`` call per time step for every source and beam;
sources that are done leave the batch (``model.reorder``). They run under ``torch.no_grad``
with the model in eval mode and put every module's mode back afterwards. Log probabilities
are computed in at least float32 (float64 for a float64 model) and summed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from divekit.errors import DivekitError

EXHAUSTIVE_LIMIT = 10**6  # candidates exhaustive_search will enumerate per source


@dataclass
class GenerationOutput:
    """What a decoder returns.

    Attributes:
        tokens: per source, the generated token ids without ``bos`` and without the final
            ``eos``.
        scores: ``(B,)`` float64, each output's score ``sum log p / L**length_penalty``.
        attention: greedy search with ``return_attention=True`` only: per source, an
            ``(L_b, S_b)`` tensor whose row ``t`` holds the cross-attention weights over the
            ``S_b = src_len[b]`` source positions used to predict output token ``t``
            (``L_b`` steps: the tokens plus the final ``eos`` when one was produced).
    """

    tokens: list[list[int]]
    scores: torch.Tensor
    attention: list[torch.Tensor] | None = None


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd, restoring each module's own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DivekitError(f"{name} must be an integer >= 1, got {value!r}")


def _check(src: torch.Tensor, src_len: torch.Tensor, bos: int, eos: int, max_len: int,
           length_penalty: float) -> None:
    if not isinstance(src, torch.Tensor) or src.dim() != 2 or src.dtype != torch.long:
        raise DivekitError("src must be a (B, S) long tensor of source token ids")
    if (not isinstance(src_len, torch.Tensor) or src_len.shape != src.shape[:1]
            or src_len.dtype != torch.long):
        raise DivekitError(f"src_len must be a ({src.shape[0]},) long tensor of source lengths")
    if src_len.numel() and not (src_len.min() >= 1 and src_len.max() <= src.shape[1]):
        raise DivekitError(f"src_len must be in [1, {src.shape[1]}] (the padded source length), "
                           f"got {src_len.tolist()}")
    for name, token in (("bos", bos), ("eos", eos)):
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise DivekitError(f"{name} must be a token id (an integer >= 0), got {token!r}")
    _positive_int(max_len, "max_len")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, int | float) \
            or not math.isfinite(length_penalty):
        raise DivekitError(f"length_penalty must be a finite number, got {length_penalty!r}")


def _log_probs(logits: torch.Tensor, eos: int) -> torch.Tensor:
    """Log probabilities of every token, in at least float32 (half precision would blur the
    rankings); callers sum the ones they keep in float64."""
    if logits.dim() != 2 or eos >= logits.shape[1]:
        raise DivekitError(f"model.step must return (B, V) logits with eos={eos} < V, "
                           f"got shape {tuple(logits.shape)}")
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


class _Best:
    """The best finished hypothesis of every source: score, tokens (without ``eos``), length."""

    def __init__(self, batch: int, max_len: int, device: torch.device) -> None:
        self.score = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
        self.tokens = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.length = torch.zeros(batch, dtype=torch.long, device=device)

    def offer(self, source: torch.Tensor, score: torch.Tensor, tokens: torch.Tensor,
              length: torch.Tensor) -> None:
        """Keep, per source, the first highest-scoring candidate if it beats the best so far.

        Args:
            source: ``(N,)`` the source of each candidate.
            score: ``(N,)`` length-normalised scores.
            tokens: ``(N, T)`` token ids; candidate ``i`` is ``tokens[i, :length[i]]``.
            length: ``(N,)``.
        """
        score = torch.where(score.isnan(), -math.inf, score)
        top = torch.full_like(self.score, -math.inf).scatter_reduce(0, source, score, "amax")
        better = top > self.score
        is_top = (score == top[source]) & better[source]
        first = torch.full_like(self.length, len(score)).scatter_reduce(
            0, source[is_top], torch.nonzero(is_top).squeeze(1), "amin")
        winners = torch.nonzero(better).squeeze(1)
        chosen = first[winners]
        self.score[winners] = score[chosen]
        self.tokens[winners, :tokens.shape[1]] = tokens[chosen]
        self.length[winners] = length[chosen]

    def output(self) -> GenerationOutput:
        lengths = self.length.tolist()
        tokens = [row[:n] for row, n in zip(self.tokens.tolist(), lengths, strict=True)]
        return GenerationOutput(tokens, self.score)


def greedy_search(
    model: nn.Module,
    src: torch.Tensor,
    src_len: torch.Tensor,
    *,
    bos: int,
    eos: int,
    max_len: int,
    length_penalty: float = 0.0,
    return_attention: bool = False,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Decode by taking the most likely next token at every step, or by sampling it.

    Args:
        model: a translation model (``encode``, ``step``, ``reorder``).
        src: source token ids, padded after ``src_len``.
        src_len: valid source lengths.
        bos, eos: the begin- and end-of-sequence token ids.
        max_len: the most tokens generated per source, ``eos`` included.
        length_penalty: ``alpha`` of the reported scores (the choice of tokens does not depend
            on it); 0 reports each output's log probability.
        return_attention: also return the cross-attention weights of every step, read from
            ``state["attention"]``.
        do_sample: draw each token from the model's distribution (sharpened or flattened by
            ``temperature``, cut to the ``top_k`` most likely tokens) instead of the argmax.
            Scores stay the model's own log probabilities of the drawn tokens.
        generator: the source of the draws (default: torch's global generator).

    Returns:
        A :class:`GenerationOutput`.

    Shape:
        src: ``(B, S)``; src_len: ``(B,)``; scores: ``(B,)``.
    """
    _check(src, src_len, bos, eos, max_len, length_penalty)
    if not (isinstance(temperature, int | float) and temperature > 0):
        raise DivekitError(f"temperature must be a positive number, got {temperature!r}")
    if top_k is not None:
        _positive_int(top_k, "top_k")
    batch, device = src.shape[0], src.device
    tokens_out = torch.zeros(batch, max_len, dtype=torch.long, device=device)
    steps = torch.zeros(batch, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, dtype=torch.float64, device=device)
    attention = []
    with _inference(model):
        state = model.encode(src, src_len)
        active = torch.arange(batch, device=device)
        tokens = torch.full((batch,), bos, dtype=torch.long, device=device)
        for t in range(max_len if batch else 0):
            logits, state = model.step(tokens, state)
            log_probs = _log_probs(logits, eos)
            if do_sample:
                tokens = _draw(log_probs, temperature, top_k, generator)
                best = log_probs.gather(1, tokens[:, None])[:, 0]
            else:
                best, tokens = log_probs.max(-1)
            log_prob[active] += best.double()
            tokens_out[active, t] = tokens
            steps[active] = t + 1
            if return_attention:
                if not isinstance(state, dict) or "attention" not in state:
                    raise DivekitError(f"{type(model).__name__}.step does not put 'attention' "
                                       "into its state; call with return_attention=False")
                attention.append((active, state["attention"].detach()))
            finished = tokens == eos
            if finished.any():
                if finished.all():
                    break
                keep = torch.nonzero(~finished).squeeze(1)
                active, tokens = active[keep], tokens[keep]
                state = model.reorder(state, keep)
    ended = tokens_out.gather(1, (steps - 1).clamp(min=0)[:, None]).squeeze(1) == eos
    lengths = (steps - ended.long()).tolist()
    output = GenerationOutput(
        [row[:n] for row, n in zip(tokens_out.tolist(), lengths, strict=True)],
        log_prob / steps.clamp(min=1).double() ** length_penalty)
    if return_attention:
        output.attention = _per_source(attention, steps, src_len)
    return output


def _draw(log_probs: torch.Tensor, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from ``softmax(log_probs / temperature)`` over the ``top_k`` best."""
    scores = log_probs / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]


def _per_source(attention: list[tuple[torch.Tensor, torch.Tensor]], steps: torch.Tensor,
                src_len: torch.Tensor) -> list[torch.Tensor]:
    """Step-wise ``(active rows, (B_t, S))`` weights regrouped as one ``(L_b, S_b)`` per source."""
    if not attention:
        return [torch.zeros(0, int(n)) for n in src_len.tolist()]
    first = attention[0][1]
    full = first.new_zeros(len(steps), len(attention), first.shape[1])
    for t, (active, weights) in enumerate(attention):
        full[active, t] = weights
    return [full[b, :n, :s] for b, (n, s) in enumerate(zip(steps.tolist(), src_len.tolist(),
                                                             strict=True))]


def beam_search(
    model: nn.Module,
    src: torch.Tensor,
    src_len: torch.Tensor,
    *,
    bos: int,
    eos: int,
    max_len: int,
    num_beams: int,
    length_penalty: float = 0.75,
) -> GenerationOutput:
    """Decode with beam search, keeping ``num_beams`` live hypotheses per source.

    Args:
        model: a translation model (``encode``, ``step``, ``reorder``).
        src: source token ids, padded after ``src_len``.
        src_len: valid source lengths.
        bos, eos: the begin- and end-of-sequence token ids.
        max_len: the most tokens generated per source, ``eos`` included.
        num_beams: live hypotheses per source; 1 behaves like greedy search when
            ``length_penalty`` is 0 (with ``alpha > 0`` it may continue past a finished
            hypothesis, since a longer one can score higher).
        length_penalty: ``alpha`` in ``sum log p / L**alpha``.

    Returns:
        A :class:`GenerationOutput` with the best finished hypothesis of each source.

    Shape:
        src: ``(B, S)``; src_len: ``(B,)``; scores: ``(B,)``.
    """
    _check(src, src_len, bos, eos, max_len, length_penalty)
    _positive_int(num_beams, "num_beams")
    batch, device, k = src.shape[0], src.device, num_beams
    best = _Best(batch, max_len, device)
    with _inference(model):
        state = model.encode(src, src_len)
        if k > 1:
            state = model.reorder(state, torch.arange(batch, device=device).repeat_interleave(k))
        sources = torch.arange(batch, device=device)  # the sources still decoding
        # Every source starts with one live prefix (bos); the other beam slots are empty (-inf)
        # so that identical copies of it are never expanded twice.
        beam_scores = torch.full((batch, k), -math.inf, dtype=torch.float64, device=device)
        beam_scores[:, 0] = 0.0
        history = torch.zeros(batch, k, 0, dtype=torch.long, device=device)
        tokens = torch.full((batch * k,), bos, dtype=torch.long, device=device)
        for t in range(1, max_len + 1 if batch else 1):
            logits, state = model.step(tokens, state)
            active = len(sources)
            if logits.shape[-1] < 2:
                raise DivekitError(f"beam search needs >= 2 tokens, got {logits.shape[-1]}")
            # Only a beam's k + 1 best tokens can be among the k best extensions overall, or
            # among the k best that do not end in eos, so the rest are never looked at.
            log_prob, token = _log_probs(logits, eos).topk(min(k + 1, logits.shape[-1]), -1)
            per_beam = log_prob.shape[1]
            candidates = (beam_scores.view(-1, 1) + log_prob.double()).view(active, k * per_beam)
            token = token.view(active, k * per_beam)
            rows = torch.arange(active, device=device)
            if t == max_len:
                # Every extension is complete and has length max_len: the best sum wins.
                score, index = candidates.max(-1)
                last = token[rows, index]
                seq = torch.cat([history[rows, index // per_beam], last[:, None]], 1)
                best.offer(sources, score / t ** length_penalty, seq,
                           torch.full_like(last, t) - (last == eos).long())
                break
            top_score, top_index = candidates.topk(k, -1)
            finished = (token.gather(1, top_index) == eos) & (top_score > -math.inf)
            if finished.any():
                row, rank = torch.nonzero(finished, as_tuple=True)
                best.offer(sources[row], top_score[row, rank] / t ** length_penalty,
                           history[row, top_index[row, rank] // per_beam],
                           torch.full_like(row, t - 1))
            # The live prefixes: the k best extensions that do not end in eos.
            live_score, live_index = candidates.masked_fill(token == eos, -math.inf).topk(k, -1)
            # Sums only fall, so a live prefix's best possible score divides its sum now by
            # L**alpha at the most favourable final length L in [t + 1, max_len].
            leader = live_score[:, 0]
            bound = torch.maximum(leader / (t + 1) ** length_penalty,
                                  leader / max_len ** length_penalty)
            keep = torch.nonzero(~(best.score[sources] >= bound)).squeeze(1)
            if len(keep) == 0:
                break
            live_beam = live_index[keep] // per_beam
            live_token = token[keep[:, None], live_index[keep]]
            state = model.reorder(state, (keep[:, None] * k + live_beam).view(-1))
            history = torch.cat([history[keep[:, None], live_beam], live_token[:, :, None]], 2)
            beam_scores, sources = live_score[keep], sources[keep]
            tokens = live_token.reshape(-1)
    return best.output()


def exhaustive_search(
    model: nn.Module,
    src: torch.Tensor,
    src_len: torch.Tensor,
    *,
    bos: int,
    eos: int,
    max_len: int,
    length_penalty: float = 0.0,
) -> GenerationOutput:
    """Score every candidate sequence and return the best: the optimum beam search approximates.

    Enumerates every token sequence that ends in ``eos`` within ``max_len`` tokens or reaches
    ``max_len`` tokens, ``O(V**max_len)`` per source; refused above :data:`EXHAUSTIVE_LIMIT`.

    Args:
        model: a translation model (``encode``, ``step``, ``reorder``).
        src: source token ids, padded after ``src_len``.
        src_len: valid source lengths.
        bos, eos: the begin- and end-of-sequence token ids.
        max_len: the most tokens per candidate, ``eos`` included.
        length_penalty: ``alpha`` in ``sum log p / L**alpha``.

    Returns:
        A :class:`GenerationOutput` with the best candidate of each source.

    Shape:
        src: ``(B, S)``; src_len: ``(B,)``; scores: ``(B,)``.
    """
    _check(src, src_len, bos, eos, max_len, length_penalty)
    batch, device = src.shape[0], src.device
    best = _Best(batch, max_len, device)
    with _inference(model):
        state = model.encode(src, src_len)
        # One row per (source, live prefix); prefixes of a source stay in lexicographic order.
        sources = torch.arange(batch, device=device)
        sums = torch.zeros(batch, dtype=torch.float64, device=device)
        history = torch.zeros(batch, 0, dtype=torch.long, device=device)
        tokens = torch.full((batch,), bos, dtype=torch.long, device=device)
        for t in range(1, max_len + 1 if batch else 1):
            logits, state = model.step(tokens, state)
            vocab = logits.shape[-1]
            if t == 1 and vocab ** max_len > EXHAUSTIVE_LIMIT:
                raise DivekitError(f"exhaustive search over {vocab}**{max_len} sequences exceeds "
                                   f"{EXHAUSTIVE_LIMIT:.0e}; lower max_len or use beam_search")
            candidates = sums[:, None] + _log_probs(logits, eos).double()
            if t == max_len:
                score, token = candidates.max(-1)  # all of length max_len: the best sum wins
                best.offer(sources, score / t ** length_penalty,
                           torch.cat([history, token[:, None]], 1),
                           torch.full_like(token, t) - (token == eos).long())
                break
            best.offer(sources, candidates[:, eos] / t ** length_penalty, history,
                       torch.full_like(sources, t - 1))
            possible = candidates > -math.inf
            possible[:, eos] = False
            parent, token = torch.nonzero(possible, as_tuple=True)
            if len(parent) == 0:
                break
            state = model.reorder(state, parent)
            history = torch.cat([history[parent], token[:, None]], 1)
            sums, sources, tokens = candidates[parent, token], sources[parent], token
    return best.output()


def generate(
    model: nn.Module,
    src: torch.Tensor,
    src_len: torch.Tensor,
    *,
    bos: int,
    eos: int,
    max_new_tokens: int,
    num_beams: int = 1,
    length_penalty: float = 0.75,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Translate ``src``: greedy search for ``num_beams=1``, beam search otherwise, or
    sampling with ``do_sample`` (see :func:`greedy_search`).

    The entry point of Hugging Face's ``generate`` for encoder-decoders, with its argument
    names; ``max_new_tokens`` counts the final ``eos``. Scores are ``sum log p / L**alpha``
    with ``alpha = length_penalty`` for either strategy.

    Args:
        model: a translation model (``encode``, ``step``, ``reorder``).
        src: source token ids ``(B, S)``, padded after ``src_len``.
        src_len: valid source lengths ``(B,)``.
        bos, eos: the begin- and end-of-sequence token ids.
        max_new_tokens: the most tokens generated per source.
        num_beams: 1 for greedy search, more for beam search.
        length_penalty: ``alpha`` of the scores (and of beam search's ranking).

    Returns:
        A :class:`GenerationOutput`.
    """
    _positive_int(max_new_tokens, "max_new_tokens")
    _positive_int(num_beams, "num_beams")
    if do_sample and num_beams > 1:
        raise DivekitError("sampling draws one sequence per source: use num_beams=1 with "
                           "do_sample")
    if num_beams == 1:
        return greedy_search(model, src, src_len, bos=bos, eos=eos, max_len=max_new_tokens,
                             length_penalty=length_penalty, do_sample=do_sample,
                             temperature=temperature, top_k=top_k, generator=generator)
    return beam_search(model, src, src_len, bos=bos, eos=eos, max_len=max_new_tokens,
                       num_beams=num_beams, length_penalty=length_penalty)
