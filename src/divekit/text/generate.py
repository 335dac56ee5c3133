"""9.5 Prediction with a recurrent language model: warm up on a prefix, then generate tokens.

The model first reads the prefix (the warm-up period), which leaves a hidden state that
summarises it; from then on every chosen token is fed back as the next input. A token is chosen
greedily (the most likely one) or sampled from ``softmax(logits / temperature)``, optionally
restricted to the ``top_k`` most likely tokens (Fan et al. 2018, "Hierarchical Neural Story
Generation"). Low temperatures sharpen the distribution towards greedy decoding, high ones
flatten it towards uniform.
"""

from __future__ import annotations

import torch
from torch import nn

from divekit.errors import DivekitError
from divekit.text.tokenize import LEVELS, tokenize
from divekit.text.vocab import Vocab

STRATEGIES = ("greedy", "sample")
BIDIRECTIONAL_REFUSAL = (
    "a bidirectional model sees the future (its output at step t depends on the tokens after "
    "t), so it cannot generate text one token at a time; use it for tagging/feature extraction "
    "or train a unidirectional model"
)


def _check_options(num_tokens: int, level: str, strategy: str, temperature: float,
                   top_k: int | None) -> None:
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise DivekitError(f"num_tokens must be a non-negative integer, got {num_tokens!r}")
    if level not in LEVELS:
        raise DivekitError(f"level must be 'char' or 'word', got {level!r}")
    if strategy not in STRATEGIES:
        raise DivekitError(f"strategy must be 'greedy' or 'sample', got {strategy!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
            or not temperature > 0:
        raise DivekitError(f"temperature must be a positive number, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise DivekitError(f"top_k must be None or an integer >= 1, got {top_k!r}")


def choose_token(
    logits: torch.Tensor,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from one step's logits.

    Args:
        logits: unnormalised scores of every token, shape ``(V,)``.
        strategy: ``"greedy"`` takes the argmax (``temperature`` and ``top_k`` do not matter);
            ``"sample"`` draws from ``softmax(logits / temperature)``.
        temperature: divides the logits before the softmax.
        top_k: sample among the ``top_k`` highest logits only (all when ``None``).
        generator: source of the random draw (default: torch's global one).

    Returns:
        The chosen token's index.
    """
    if strategy == "greedy":
        return int(logits.argmax())
    logits = logits.double() / temperature
    candidates = None
    if top_k is not None and top_k < len(logits):
        logits, candidates = logits.topk(top_k)
    probs = torch.softmax(logits, dim=0)
    if generator is not None:
        probs = probs.to(generator.device)
    choice = int(torch.multinomial(probs, 1, generator=generator))
    return choice if candidates is None else int(candidates[choice])


@torch.no_grad()
def generate(
    model: nn.Module,
    vocab: Vocab,
    prefix: str,
    num_tokens: int,
    level: str = "char",
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> str:
    """Continue ``prefix`` by ``num_tokens`` tokens with a unidirectional language model.

    The prefix is lower-cased when the vocabulary holds no upper-case letter (it was built
    from lower-cased text, as ``timemachine``'s is), then tokenized at ``level``; tokens the
    vocabulary still lacks become ``"<unk>"``. ``"<unk>"`` itself is never generated: it
    stands for many different tokens and would print as a placeholder. The model runs in
    eval mode (no dropout) and is put back in its previous mode afterwards.

    Args:
        model: a model with ``step(x, state) -> (logits, state)``, such as
            :class:`divekit.models.rnn.RNNLanguageModel`; not bidirectional.
        vocab: the vocabulary the model was trained with.
        prefix: the text to continue; at least one token.
        num_tokens: how many tokens to generate.
        level: ``"char"`` or ``"word"``, as the training text was tokenized.
        strategy, temperature, top_k, generator: how each token is chosen, see
            :func:`choose_token`.

    Returns:
        The prefix as the model read it (lower-cased for a lower-case vocabulary) followed by
        the generated tokens: characters are appended as they are, words are separated by
        single spaces.
    """
    _check_options(num_tokens, level, strategy, temperature, top_k)
    if getattr(model, "bidirectional", False):
        raise DivekitError(BIDIRECTIONAL_REFUSAL)
    if not any(token != token.lower() for token in vocab.idx_to_token):
        prefix = prefix.lower()
    tokens = tokenize(prefix, level)
    if not tokens:
        raise DivekitError(f"the prefix must hold at least one {level} token to warm up the "
                           f"state, got {prefix!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits, state = model.step(torch.tensor([vocab[tokens]], device=device))
        generated = []
        for _ in range(num_tokens):
            scores = logits[0, -1].clone()
            scores[vocab.unk] = -torch.inf
            index = choose_token(scores, strategy, temperature, top_k, generator)
            generated.append(vocab.to_tokens(index))
            logits, state = model.step(torch.tensor([[index]], device=device), state)
    finally:
        model.train(was_training)
    if level == "char":
        return prefix + "".join(generated)
    return " ".join([prefix.rstrip(), *generated]) if generated else prefix
