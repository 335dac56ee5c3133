"""Recipes for machine translation on fra-eng (d2l 10.7, 11.4 and 11.7).

The ``*-book`` recipes are d2l 1.0's experiments with its settings: ``MTFraEng(batch_size=128)``
(the first 512 pairs of fra.txt train, the next 128 are the held-out split the book calls
validation and we call test, vocabularies from all 640 pairs, ``num_steps=9``), Adam, the global
gradient norm clipped to 1, 30 epochs; after training they translate the book's four example
sentences and print the course's BLEU (k = 2) next to the book's.
"""

from __future__ import annotations

from pathlib import Path

from divekit.config import RunConfig
from divekit.recipes import Recipe, add_recipe, training_run

# d2l's ``_tokenize(text, max_examples=640)`` stops only after line 641, so its validation
# split holds 129 pairs: the usual batch of 128 and one more pair in a batch of its own.
BOOK_DATA = {"num_train": 512, "num_val": 129, "num_steps": 9}
# d2l 1.0 (10.7.6, 11.4.4, 11.7.7): the four sentences, their references, and the BLEU the
# book printed for each model (English 1.0.3).
BOOK_EXAMPLES = (("go .", "va !"), ("i lost .", "j'ai perdu ."), ("he's calm .", "il est calme ."),
                 ("i'm home .", "je suis chez moi ."))
BOOK_BLEU = {
    "seq2seq": (1.0, 1.0, 0.0, 1.0),
    "bahdanau": (1.0, 1.0, 0.0, 1.0),
    "transformer": (1.0, 0.687, 0.658, 1.0),
}


def book_examples(model: str):
    """``report(run_dir)``: the held-out loss of the last epoch measured per token and the
    book's way, and the book's four sentences translated, with the course's BLEU of each next
    to the book's."""

    def report(run_dir: Path) -> list[str]:
        from divekit.experiment import translate
        from divekit.text.bleu import course_bleu

        # The book reports its model after the last epoch.
        results = translate(run_dir, [english for english, _ in BOOK_EXAMPLES], "last")
        ours, batch_means = book_validation_loss(run_dir)
        lines = [f"held-out loss {ours:.3f} per token; the book's way (the mean of its two "
                 f"validation batches' means, 128 pairs and 1 pair): {batch_means:.3f}",
                 "the book's examples (greedy; course BLEU with k=2, ours / the book's):"]
        for (english, french), result, book in zip(BOOK_EXAMPLES, results, BOOK_BLEU[model],
                                                   strict=True):
            score = course_bleu(result.text, french, k=2)
            lines.append(f"  {english} => {result.text}   bleu {score:.3f} / {book:.3f}")
        return lines

    report.__name__ = f"{model}_book_examples"
    return report


def book_validation_loss(run_dir: Path) -> tuple[float, float]:
    """The per-token loss over the held-out pairs, and the number d2l plots as "val loss":
    the unweighted mean of its validation batches' losses (batches of 128 in file order), in
    which the 129th pair, alone in its batch, weighs as much as the other 128 together."""
    import torch

    from divekit.experiment import load_run

    trainer, data, model = load_run(run_dir, "last")
    model = trainer._prepare(model).eval()
    src, src_len, tgt_in, tgt_out, _ = (t.to(trainer.device) for t in data.test)
    losses, tokens = [], []
    with torch.no_grad():
        for start in range(0, len(src), 128):
            rows = slice(start, start + 128)
            logits = model(src[rows], src_len[rows], tgt_in[rows])
            losses.append(float(trainer.task.loss(logits, tgt_out[rows])))
            tokens.append(int(trainer.task.count((None, None, None, tgt_out[rows]))))
    per_token = sum(loss * n for loss, n in zip(losses, tokens, strict=True)) / sum(tokens)
    return per_token, sum(losses) / len(losses)


def book_run(model: str, lr: float, **model_options) -> RunConfig:
    return training_run(model, "fra-eng", 128, model_options=model_options,
                        data_options=BOOK_DATA, optimizer="adam", lr=lr, grad_clip=1.0,
                        max_epochs=30)


add_recipe(Recipe(
    "seq2seq-fra-eng-book", "10.7 Sequence-to-Sequence Learning for Machine Translation",
    "d2l 1.0's GRU encoder-decoder: 2 layers of 256, embeddings 256, dropout 0.2, Adam lr "
    "0.005, clip 1, 30 epochs on the first 512 pairs",
    book_run("seq2seq-gru", 0.005),
    book="train loss 0.236 / val loss 3.36 (min 2.54) (en 1.0.3)",
    target="test loss (the book's val) <= 3.36",
    report=book_examples("seq2seq"),
))
add_recipe(Recipe(
    "bahdanau-fra-eng-book", "11.4 The Bahdanau Attention Mechanism",
    "d2l 1.0's GRU encoder-decoder with additive attention: 2 layers of 256, dropout 0.2, Adam "
    "lr 0.005, clip 1, 30 epochs on the first 512 pairs",
    book_run("bahdanau-gru", 0.005),
    book="train loss 0.106 / val loss 1.85 (min 1.39) (en 1.0.3)",
    target="test loss (the book's val) <= 1.85",
    report=book_examples("bahdanau"),
))
add_recipe(Recipe(
    "transformer-fra-eng-book", "11.7 The Transformer Architecture",
    "d2l 1.0's Transformer: 2 blocks, width 256, 4 heads, FFN 64, dropout 0.2, post-norm, "
    "Adam lr 0.001, clip 1, 30 epochs on the first 512 pairs",
    book_run("transformer-mt", 0.001, init="torch"),
    book="train loss 0.183 / val loss 1.86 (min 1.73) (en 1.0.3)",
    target="test loss (the book's val) <= 1.86",
    report=book_examples("transformer"),
))


def cpu_run(model: str, max_epochs: int, amp: str = "off", **model_options) -> RunConfig:
    """Ours: every training pair of at most 10 English words, AdamW with a cosine schedule,
    label smoothing 0.1."""
    config = training_run(
        model, "fra-eng", 128, model_options=model_options,
        data_options={"max_words": 10, "min_freq": 3},
        optimizer="adamw", lr=0.002, weight_decay=0.01, schedule="cosine", warmup_epochs=0.1,
        grad_clip=1.0, max_epochs=max_epochs, amp=amp)
    config.task_options = {"label_smoothing": 0.1}
    return config


add_recipe(Recipe(
    "transformer-fra-eng", "11.7 The Transformer Architecture (ours, for a CPU)",
    "pre-norm Transformer (2+2 blocks of 256, FFN 512, tied output) on the 142k training pairs "
    "of at most 10 English words, AdamW cosine, label smoothing 0.1, bf16, 3 epochs; BLEU of "
    "held-out English sentences against all their translations",
    cpu_run("transformer-mt", 3, amp="bf16", num_hiddens=256, num_layers=2, num_heads=4,
            ffn_num_hiddens=512, dropout=0.1, norm_first=True, attention_bias=True,
            tie_embeddings=True),
    target="held-out corpus BLEU >= 30 (sacreBLEU, lower-cased course tokens, greedy) within "
           "20 minutes on a 2-core CPU with bf16 (on a CPU without fast bf16: --amp off)",
))

GRU_SIZES = {"embed_size": 256, "num_hiddens": 256, "num_layers": 2, "dropout": 0.2,
             "bidirectional": True}
add_recipe(Recipe(
    "seq2seq-fra-eng", "10.7 Sequence-to-Sequence Learning (ours, the comparison)",
    "GRU encoder-decoder (bidirectional 2-layer encoder of 256) on transformer-fra-eng's data "
    "and schedule, 2 epochs",
    cpu_run("seq2seq-gru", 2, **GRU_SIZES),
    target="a point of comparison for transformer-fra-eng (README)",
))
add_recipe(Recipe(
    "bahdanau-fra-eng", "11.4 The Bahdanau Attention Mechanism (ours, the comparison)",
    "GRU encoder-decoder with additive attention on transformer-fra-eng's data and schedule, "
    "2 epochs",
    cpu_run("bahdanau-gru", 2, **GRU_SIZES),
    target="a point of comparison for transformer-fra-eng (README)",
))
