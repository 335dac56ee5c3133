"""Recipes for BERT (d2l 15.8-15.10 pretraining, 16.6-16.7 fine-tuning).

``bert-pretrain-wikitext-book`` is d2l's experiment with its settings: ``bert.small`` (2 layers,
128 hidden, 2 heads, FFN 256, dropout 0.2) on WikiText-2 pairs of at most 64 tokens, batch 512,
Adam at 0.01, 50 steps, the book's word vocabulary (minimum frequency 5) and masking done once.
The book trains on ``wiki.train.tokens``; where only the validation and test files are present
(as in the shared data) the recipe trains on ``valid.txt`` and tests on ``test.txt``, so its
vocabulary is smaller (4,211 against the book's 20,256) and its MLM loss is not the same
quantity: the report says which file trained.

``bert-pretrain-wikitext`` is the longer CPU run that the fine-tuning recipes start from
(``--weights RUN``): WikiText-2's training text plus the paragraphs of SQuAD's training articles
and the English sentences of fra-eng's training split (about five times the text), a WordPiece
vocabulary (it covers words WikiText never uses, which movie reviews and tweets are full of),
masking drawn afresh for every batch, AdamW with warm-up and a cosine schedule.

The fine-tuning recipes train a model of the pretraining run's size on labelled data; given no
``--weights`` they start from random weights, which is the baseline the course's claim is
measured against (``benchmarks/bert_finetune.py``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from divekit.recipes import Recipe, add_recipe, training_run

BOOK_SECTION = "15.10 Pretraining BERT"
FINETUNE_SECTION = "16.6 Fine-Tuning BERT for Sequence-Level and Token-Level Applications"


def book_losses(run_dir: Path) -> list[str]:
    """The mean MLM and NSP losses over the training steps: what d2l's ``train_bert`` prints."""
    with open(Path(run_dir) / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    mlm = sum(float(row["mlm"]) for row in rows) / len(rows)
    nsp = sum(float(row["nsp"]) for row in rows) / len(rows)
    with open(Path(run_dir) / "config.json") as f:
        summary = json.load(f).get("data_summary", "")
    # With wiki.train.tokens present, valid.txt is the validation split.
    trained = "wiki.train.tokens" if "val=" in summary else "valid.txt (no train file here)"
    return [f"mean over {len(rows)} steps: MLM loss {mlm:.3f}, NSP loss {nsp:.3f} "
            f"(the book: MLM 5.425-5.885, NSP 0.744-0.775); trained on {trained}"]


add_recipe(Recipe(
    "bert-pretrain-wikitext-book", BOOK_SECTION,
    "The book's BERT pretraining: bert.small, batch 512, Adam 0.01, 50 steps (CPU: ~1 min)",
    training_run("bert-small", "wikitext-2-bert", 512, max_epochs=100, max_steps=50,
                 optimizer="adam", lr=0.01,
                 data_options={"max_len": 64, "min_freq": 5, "static_masking": True}),
    book="MLM 5.425 / 5.545 / 5.885, NSP 0.775 / 0.744 / 0.760 (means over the 50 steps; "
         "zh 2.0 / en 0.17 / en 1.0), 3,486-4,413 pairs/s on a V100",
    target="MLM and NSP losses logged per step (steps.csv, steps.png)",
    report=book_losses,
))

PRETRAIN = training_run(
    "bert-small", "wikitext-2-bert", 128, max_epochs=10, optimizer="adamw", lr=1e-3,
    weight_decay=0.01, schedule="cosine", warmup_epochs=0.5, amp="bf16",
    model_options={"dropout": 0.1},
    data_options={"tokenizer": "wordpiece", "max_len": 64, "squad_passages": True,
                  "fra_eng": True})
add_recipe(Recipe(
    "bert-pretrain-wikitext", BOOK_SECTION,
    "bert-small pretrained on WikiText-2 + SQuAD training passages + fra-eng English, "
    "WordPiece (CPU, ~9 min); the fine-tuning start",
    PRETRAIN,
    target="held-out (test.txt) MLM and NSP accuracy, in the README",
))


def _finetune(name: str, model: str, data: str, batch_size: int, description: str,
              target: str, **trainer) -> None:
    add_recipe(Recipe(
        name, FINETUNE_SECTION, description,
        training_run(model, data, batch_size, optimizer="adamw", weight_decay=0.01,
                     schedule="cosine", warmup_epochs=0.1, amp="bf16", **trainer),
        target=target))


_finetune("bert-sst2", "bert-classifier", "sst-2", 64,
          "SST-2 sentiment from <cls> (add --weights PRETRAIN_RUN; none: random init)",
          "dev accuracy, pretrained against random init, in the README",
          max_epochs=1, lr=5e-4)
_finetune("bert-wnut17", "bert-tagger", "wnut-17", 32,
          "WNUT-17 emerging entities, BIO tagging (add --weights PRETRAIN_RUN)",
          "test entity F1, pretrained against random init, in the README",
          max_epochs=10, lr=5e-4)
_finetune("bert-ewt-pos", "bert-tagger", "ud-ewt-pos", 32,
          "UD English-EWT part-of-speech tags (add --weights PRETRAIN_RUN)",
          "test word accuracy, in the README",
          max_epochs=3, lr=5e-4)
_finetune("bert-squad", "bert-qa", "squad", 32,
          "SQuAD v1.1 spans, held-out dev articles (add --weights PRETRAIN_RUN)",
          "held-out EM / F1, in the README",
          max_epochs=4, lr=5e-4)
