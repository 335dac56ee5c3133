"""Greedy, beam and exhaustive decoding (10.8) against naive one-source-at-a-time loops."""

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from divekit.errors import DivekitError
from divekit.models.seq2seq import select_rows
from divekit.text.decode import (
    beam_search,
    exhaustive_search,
    generate,
    greedy_search,
)

f64 = torch.float64
BOS, EOS = 2, 3  # <unk>=0, <pad>=1, <bos>=2, <eos>=3 as Vocab(reserved_tokens=...) gives


class TableModel(nn.Module):
    """Next-token logits from a fixed random table, looked up by a hash of (source, last token,
    step), so that they depend on the source and the prefix. Its attention is a softmax over the
    valid source positions that changes with the step."""

    def __init__(self, vocab: int = 6, entries: int = 97, eos_bias: float = 0.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        table = 1.5 * torch.randn(entries, vocab, dtype=f64, generator=generator)
        table[:, EOS] += eos_bias
        self.register_buffer("table", table)
        self.seen_modes: list[tuple[bool, bool]] = []
        self.batch_sizes: list[int] = []

    def encode(self, src, src_len):
        valid = torch.arange(src.shape[1]) < src_len[:, None]
        key = (src * valid).sum(1)
        return {"key": key, "step": torch.zeros_like(key), "src": src, "valid": valid}

    def step(self, tokens, state):
        self.seen_modes.append((self.training, torch.is_grad_enabled()))
        self.batch_sizes.append(len(tokens))
        index = (state["key"] * 31 + tokens * 7 + state["step"] * 13) % len(self.table)
        energy = (state["src"].double() * 0.3 * (state["step"][:, None] + 1)).sin()
        attention = energy.masked_fill(~state["valid"], -math.inf).softmax(-1)
        return self.table[index], {**state, "step": state["step"] + 1, "attention": attention}

    def reorder(self, state, index):
        return select_rows(state, index)


class GRUSeq2Seq(nn.Module):
    """A small random GRU encoder-decoder (the course's 10.7 model, float64)."""

    def __init__(self, src_vocab: int = 9, tgt_vocab: int = 7, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.src_embed = nn.Embedding(src_vocab, 8)
            self.encoder = nn.GRU(8, 16, batch_first=True)
            self.tgt_embed = nn.Embedding(tgt_vocab, 8)
            self.decoder = nn.GRU(8 + 16, 16, batch_first=True)
            self.dropout = nn.Dropout(0.5)  # decoding in training mode would be random
            self.out = nn.Linear(16, tgt_vocab)
        self.double()

    def encode(self, src, src_len):
        packed = pack_padded_sequence(self.src_embed(src), src_len, batch_first=True,
                                      enforce_sorted=False)
        _, hidden = self.encoder(packed)
        return {"hidden": hidden[0], "context": hidden[0]}

    def step(self, tokens, state):
        inputs = torch.cat([self.tgt_embed(tokens), state["context"]], -1)[:, None]
        out, hidden = self.decoder(inputs, state["hidden"][None].contiguous())
        return 4 * self.out(self.dropout(out[:, 0])), {**state, "hidden": hidden[0]}

    def reorder(self, state, index):
        return select_rows(state, index)


class ProbabilityModel(nn.Module):
    """Next-token probabilities that depend on the last token only (``rows[token]``; uniform
    after a token without a row). Zero probabilities give ``-inf`` logits."""

    def __init__(self, rows: dict[int, list[float]], vocab: int = 6):
        super().__init__()
        table = torch.full((vocab, vocab), 1 / vocab, dtype=f64)
        for token, probs in rows.items():
            table[token] = torch.tensor(probs, dtype=f64)
        self.register_buffer("log_table", table.log())

    def encode(self, src, src_len):
        return {"dummy": torch.zeros(len(src))}

    def step(self, tokens, state):
        return self.log_table[tokens], state

    def reorder(self, state, index):
        return select_rows(state, index)


def choice_model():
    """The course's point: the best first token leads to a bad sequence (tokens A=4, B=5).

    After <bos>: A .5, B .4, <eos> .04; after A: <eos> .35, A .3, B .29; after B: <eos> .9.
    Greedy picks A then <eos> (probability .5 * .35 = .175); B then <eos> has .4 * .9 = .36.
    """
    return ProbabilityModel({BOS: [.02, .02, .02, .04, .5, .4], 4: [.02, .02, .02, .35, .3, .29],
                             5: [.01, .01, .01, .9, .04, .03]})


def sources(num: int = 7, max_len: int = 6, vocab: int = 9, seed: int = 0):
    """A padded batch of sources of different lengths; the padding holds random junk."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (num, max_len), generator=generator)
    src_len = torch.randint(1, max_len + 1, (num,), generator=generator)
    src_len[0] = max_len
    return src, src_len


def one(src, src_len, b):
    """Source ``b`` alone, without its padding."""
    n = int(src_len[b])
    return src[b:b + 1, :n], src_len[b:b + 1]


def log_probs(model, token, state):
    logits, state = model.step(torch.tensor([token]), state)
    return torch.log_softmax(logits[0].double(), -1), state


# --- Naive oracles: one source, one hypothesis, one model call at a time. --------------------

@torch.no_grad()
def naive_greedy(model, src, src_len, max_len, alpha=0.0):
    state = model.encode(src, src_len)
    token, total, tokens, attention = BOS, 0.0, [], []
    for _ in range(max_len):
        logp, state = log_probs(model, token, state)
        attention.append(state.get("attention", torch.zeros(1, 0))[0])
        token = int(logp.argmax())
        total += float(logp[token])
        if token == EOS:
            break
        tokens.append(token)
    length = len(tokens) + (token == EOS)
    return tokens, total / length ** alpha, torch.stack(attention)


@torch.no_grad()
def naive_beam(model, src, src_len, max_len, num_beams, alpha):
    live = [(0.0, [], model.encode(src, src_len))]
    best_score, best_tokens = -math.inf, None
    for t in range(1, max_len + 1):
        candidates = []
        for score, seq, state in live:
            logp, next_state = log_probs(model, seq[-1] if seq else BOS, state)
            candidates += [(score + float(logp[v]), seq + [v], next_state)
                           for v in range(len(logp))]
        candidates = sorted((c for c in candidates if c[0] > -math.inf), key=lambda c: -c[0])
        if t == max_len:
            score, seq, _ = candidates[0]
            if score / t ** alpha > best_score:
                best_score, best_tokens = score / t ** alpha, seq[:-1] if seq[-1] == EOS else seq
            break
        for score, seq, _ in candidates[:num_beams]:
            if seq[-1] == EOS and score / t ** alpha > best_score:
                best_score, best_tokens = score / t ** alpha, seq[:-1]
        live = [c for c in candidates if c[1][-1] != EOS][:num_beams]
        leader = live[0][0]
        if best_score >= max(leader / (t + 1) ** alpha, leader / max_len ** alpha):
            break
    return best_tokens, best_score


@torch.no_grad()
def naive_exhaustive(model, src, src_len, max_len, alpha):
    """Depth-first over every prefix; every sequence ending in <eos> or of max_len is scored."""
    best = [-math.inf, None]

    def visit(seq, total, state):
        logp, state = log_probs(model, seq[-1] if seq else BOS, state)
        for v in range(len(logp)):
            score = total + float(logp[v])
            if v == EOS or len(seq) + 1 == max_len:
                if score / (len(seq) + 1) ** alpha > best[0]:
                    best[:] = [score / (len(seq) + 1) ** alpha, seq + [v] if v != EOS else seq]
            else:
                visit(seq + [v], score, state)

    visit([], 0.0, model.encode(src, src_len))
    return best[1], best[0]


# In eval mode, as the naive oracles need (the GRU's dropout is active in training mode).
MODELS = {"table": lambda: TableModel(eos_bias=0.5).eval(), "gru": lambda: GRUSeq2Seq().eval()}


@pytest.mark.parametrize("name", MODELS)
def test_greedy_equals_one_source_at_a_time_loop(name, one_thread):
    model = MODELS[name]()
    src, src_len = sources(vocab=6 if name == "table" else 9)
    for alpha in (0.0, 0.75):
        out = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=7,
                            length_penalty=alpha, return_attention=name == "table")
        assert out.scores.dtype == f64 and out.scores.shape == (len(src),)
        lengths = set()
        for b in range(len(src)):
            tokens, score, attention = naive_greedy(model, *one(src, src_len, b), 7, alpha)
            assert out.tokens[b] == tokens
            assert math.isclose(out.scores[b].item(), score, rel_tol=1e-12)
            if name == "table":
                assert out.attention[b].shape == (len(attention), int(src_len[b]))
                torch.testing.assert_close(out.attention[b], attention)
            lengths.add(len(tokens))
        assert len(lengths) > 2  # some sources stop early, some run to max_len


@pytest.mark.parametrize("name", MODELS)
def test_beam_search_equals_naive_beam_loop(name, one_thread):
    model = MODELS[name]()
    src, src_len = sources(num=5, vocab=6 if name == "table" else 9, seed=1)
    differs_from_greedy = False
    for num_beams, alpha in [(1, 0.0), (2, 0.75), (3, 0.0), (3, 1.0), (4, 0.5), (5, -0.5)]:
        out = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=6,
                          num_beams=num_beams, length_penalty=alpha)
        for b in range(len(src)):
            tokens, score = naive_beam(model, *one(src, src_len, b), 6, num_beams, alpha)
            assert out.tokens[b] == tokens, (num_beams, alpha, b)
            assert math.isclose(out.scores[b].item(), score, rel_tol=1e-12)
        greedy = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=6,
                               length_penalty=alpha)
        differs_from_greedy |= out.tokens != greedy.tokens
    assert differs_from_greedy  # the check would miss a beam search that is secretly greedy


@pytest.mark.parametrize("name", MODELS)
def test_one_beam_is_greedy(name, one_thread):
    model = MODELS[name]()
    src, src_len = sources(seed=2, vocab=6 if name == "table" else 9)
    # With alpha = 0 a finished hypothesis ends the single beam; with alpha > 0 beam search may
    # go on, as a longer hypothesis could still score higher (tested against naive_beam above).
    beam = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=7, num_beams=1,
                       length_penalty=0.0)
    greedy = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=7)
    assert beam.tokens == greedy.tokens
    torch.testing.assert_close(beam.scores, greedy.scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exhaustive_equals_naive_enumeration_and_wide_beam(seed, one_thread):
    model = TableModel(seed=seed)
    src, src_len = sources(num=6, vocab=6, seed=seed)
    vocab, max_len = 6, 4
    for alpha in (0.0, 0.75):
        exhaustive = exhaustive_search(model, src, src_len, bos=BOS, eos=EOS, max_len=max_len,
                                       length_penalty=alpha)
        # A beam this wide never drops a candidate, so it must find the optimum.
        wide = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=max_len,
                           num_beams=vocab ** (max_len - 1), length_penalty=alpha)
        for b in range(len(src)):
            tokens, score = naive_exhaustive(model, *one(src, src_len, b), max_len, alpha)
            assert exhaustive.tokens[b] == tokens
            assert math.isclose(exhaustive.scores[b].item(), score, rel_tol=1e-12)
        assert wide.tokens == exhaustive.tokens
        torch.testing.assert_close(wide.scores, exhaustive.scores, rtol=1e-12, atol=0)
        narrow = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=max_len,
                             num_beams=2, length_penalty=alpha)
        assert (narrow.scores <= exhaustive.scores + 1e-12).all()


def test_greedy_can_be_worse_than_exhaustive_and_beam_search_recovers(one_thread):
    model = choice_model()
    src, src_len = torch.full((1, 2), 4), torch.tensor([2])
    greedy = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3)
    best = exhaustive_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3)
    beam = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3, num_beams=2,
                       length_penalty=0.0)
    assert greedy.tokens == [[4]] and math.isclose(greedy.scores.item(), math.log(.5 * .35))
    assert best.tokens == [[5]] and math.isclose(best.scores.item(), math.log(.4 * .9))
    assert beam.tokens == [[5]] and math.isclose(beam.scores.item(), math.log(.4 * .9))


def test_length_penalty_lets_a_long_likely_output_beat_an_early_eos(one_thread):
    # After <bos>: <eos> .8, A .2; after A: A .995, <eos> .005; other tokens impossible.
    model = ProbabilityModel({BOS: [0, 0, 0, .8, .2, 0], 4: [0, 0, 0, .005, .995, 0]})
    src, src_len = torch.full((1, 1), 4), torch.tensor([1])
    long = (math.log(.2) + 9 * math.log(.995)) / 10  # A * 10, no <eos>: -0.165
    # Stopping after <eos> at step 1 (-0.223) would be wrong: A's sum log .2, spread over the
    # 10 tokens it may still grow to, could (and does) score higher.
    for num_beams in (1, 2, 3):
        out = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=10,
                          num_beams=num_beams, length_penalty=1.0)
        assert out.tokens == [[4] * 10] and math.isclose(out.scores.item(), long)
        out = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=10,
                          num_beams=num_beams, length_penalty=0.0)
        assert out.tokens == [[]] and math.isclose(out.scores.item(), math.log(.8))
    assert naive_beam(model, src, src_len, 10, 2, 1.0) == ([4] * 10, pytest.approx(long))
    greedy = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=10)
    assert greedy.tokens == [[]]


def test_negative_length_penalty_bounds_live_prefixes_at_the_next_length(one_thread):
    # alpha = -1 multiplies sums by L, favouring short outputs. After <bos>: <eos> .1, A .5,
    # B .4; then <eos> .9. At step 1 <eos> is finished with log .1 = -2.30; A (sum log .5) can
    # still reach log(.5) * 2 = -1.39 at length 2 (and does: A <eos> scores 2 log .45 = -1.60),
    # though at length 10 it could not.
    model = ProbabilityModel({BOS: [0, 0, 0, .1, .5, .4], 4: [0, 0, 0, .9, .1, 0],
                              5: [0, 0, 0, .9, .1, 0]})
    src, src_len = torch.full((1, 1), 4), torch.tensor([1])
    out = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=10, num_beams=3,
                      length_penalty=-1.0)
    assert out.tokens == [[4]] and math.isclose(out.scores.item(), 2 * math.log(.45))


def test_batch_of_different_lengths_equals_one_source_at_a_time(one_thread):
    model = GRUSeq2Seq(seed=3).eval()
    src, src_len = sources(num=6, seed=4)
    decoders = {
        "greedy": lambda s, n: greedy_search(model, s, n, bos=BOS, eos=EOS, max_len=6),
        "beam": lambda s, n: beam_search(model, s, n, bos=BOS, eos=EOS, max_len=6, num_beams=3),
        "exhaustive": lambda s, n: exhaustive_search(model, s, n, bos=BOS, eos=EOS, max_len=4,
                                                     length_penalty=0.5),
    }
    for decode in decoders.values():
        batch = decode(src, src_len)
        for b in range(len(src)):
            alone = decode(*one(src, src_len, b))
            assert batch.tokens[b] == alone.tokens[0]
            torch.testing.assert_close(batch.scores[b:b + 1], alone.scores)


def test_one_batched_step_per_time_step_and_finished_rows_leave(one_thread):
    model = TableModel(eos_bias=1.0)
    src, src_len = sources(num=9, vocab=6, seed=5)
    out = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=8)
    # Source b takes part in len(tokens) steps, plus the one that produced its <eos>.
    steps = [len(t) + (len(t) < 8) for t in out.tokens]
    assert model.batch_sizes == [sum(s > t for s in steps) for t in range(max(steps))]
    model.batch_sizes.clear()
    beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=8, num_beams=3)
    assert len(model.batch_sizes) <= 8 and model.batch_sizes[0] == 9 * 3
    assert all(size % 3 == 0 for size in model.batch_sizes)
    assert model.batch_sizes == sorted(model.batch_sizes, reverse=True)


def test_generate_dispatches_on_num_beams(one_thread):
    model = choice_model()
    src, src_len = torch.full((2, 2), 4), torch.tensor([2, 1])
    for alpha in (0.0, 0.75):
        out = generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=3,
                       length_penalty=alpha)
        greedy = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3,
                               length_penalty=alpha)
        assert out.tokens == greedy.tokens == [[4], [4]]
        torch.testing.assert_close(out.scores, greedy.scores)
        out = generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=3, num_beams=2,
                       length_penalty=alpha)
        beam = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3, num_beams=2,
                           length_penalty=alpha)
        assert out.tokens == beam.tokens and out.tokens[0] != [4]
        torch.testing.assert_close(out.scores, beam.scores)
    # max_new_tokens counts the final <eos>: one token allowed, so it is the <eos> or a token.
    out = generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=1)
    assert out.tokens == [[4], [4]]
    torch.testing.assert_close(out.scores, torch.full((2,), math.log(.5), dtype=f64))


def test_decoders_run_in_eval_mode_without_grad_and_restore_modes(one_thread):
    model = TableModel()
    extra = nn.Linear(2, 2)
    model.extra = extra  # a submodule left in eval mode while the model trains
    model.train()
    extra.eval()
    src, src_len = sources(num=3, vocab=6)
    for decode in (greedy_search, exhaustive_search):
        decode(model, src, src_len, bos=BOS, eos=EOS, max_len=3)
    beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3, num_beams=2)
    assert model.seen_modes and set(model.seen_modes) == {(False, False)}
    assert model.training and not extra.training
    model.eval()
    greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3)
    assert not model.training


def test_dropout_model_decodes_deterministically_in_training_mode(one_thread):
    model = GRUSeq2Seq().train()
    src, src_len = sources()
    first = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=6, num_beams=3)
    second = beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=6, num_beams=3)
    assert first.tokens == second.tokens and model.training


def test_bad_arguments_are_refused(one_thread):
    model = TableModel()
    src, src_len = sources(num=2, vocab=6)
    with pytest.raises(DivekitError, match="exhaustive search"):
        exhaustive_search(model, src, src_len, bos=BOS, eos=EOS, max_len=8)  # 6**8 > 1e6
    with pytest.raises(DivekitError, match="num_beams"):
        beam_search(model, src, src_len, bos=BOS, eos=EOS, max_len=3, num_beams=0)
    with pytest.raises(DivekitError, match="max_new_tokens"):
        generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=0)
    with pytest.raises(DivekitError, match="max_len"):
        greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=0)
    with pytest.raises(DivekitError, match="src_len"):
        greedy_search(model, src, src_len + 10, bos=BOS, eos=EOS, max_len=3)
    with pytest.raises(DivekitError, match="attention"):
        greedy_search(choice_model(), src, src_len, bos=BOS, eos=EOS, max_len=3,
                      return_attention=True)
    with pytest.raises(DivekitError, match="eos"):
        greedy_search(model, src, src_len, bos=BOS, eos=6, max_len=3)


def test_exhaustive_candidates_match_itertools_count(one_thread):
    # Every sequence is scored once: the model sees each prefix that does not end in <eos>.
    model = TableModel()
    src, src_len = sources(num=1, vocab=6)
    exhaustive_search(model, src, src_len, bos=BOS, eos=EOS, max_len=4)
    prefixes = [sum(1 for p in itertools.product(range(6), repeat=t) if EOS not in p)
                for t in range(4)]
    assert model.batch_sizes == prefixes


def test_sampling_draws_from_the_models_distribution(one_thread):
    model = choice_model()
    n = 4000
    src, src_len = torch.full((n, 2), 4), torch.full((n,), 2)
    drawn = generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=3, do_sample=True,
                     length_penalty=0.0, generator=torch.Generator().manual_seed(0))
    first = torch.tensor([tokens[0] if tokens else EOS for tokens in drawn.tokens])
    expected = {4: .5, 5: .4, EOS: .04}
    for token, p in expected.items():  # 3 standard errors at n = 4000 are below 0.024
        assert abs((first == token).double().mean().item() - p) < 0.025, token
    # Scores are the model's log probabilities of what was drawn: B then <eos> is .4 * .9.
    b_then_eos = [i for i, tokens in enumerate(drawn.tokens) if tokens == [5]]
    assert b_then_eos and math.isclose(drawn.scores[b_then_eos[0]].item(), math.log(.4 * .9))
    again = generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=3, do_sample=True,
                     length_penalty=0.0, generator=torch.Generator().manual_seed(0))
    assert again.tokens == drawn.tokens


def test_sampling_from_the_top_token_or_at_a_tiny_temperature_is_greedy(one_thread):
    for name in ("table", "gru"):
        model = TableModel() if name == "table" else GRUSeq2Seq()
        src, src_len = sources()
        greedy = greedy_search(model, src, src_len, bos=BOS, eos=EOS, max_len=6)
        for options in ({"top_k": 1}, {"temperature": 1e-4}):
            sampled = generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=6,
                               length_penalty=0.0, do_sample=True, **options)
            assert sampled.tokens == greedy.tokens, (name, options)
    with pytest.raises(DivekitError, match="use num_beams=1 with do_sample"):
        generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=6, num_beams=2,
                 do_sample=True)
    with pytest.raises(DivekitError, match="temperature must be a positive number"):
        generate(model, src, src_len, bos=BOS, eos=EOS, max_new_tokens=6, do_sample=True,
                 temperature=0)
