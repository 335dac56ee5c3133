"""BERT (d2l 15.8): parameter counts (published figures, a formula, transformers' models), equality
with Hugging Face's implementation through the checkpoint converter, padding, the gathered MLM
head and the tied embedding."""

import copy

import pytest
import torch

import divekit as dk
from divekit.errors import DivekitError
from divekit.models import MODELS
from divekit.models.bert import (
    BERT_SIZES,
    BertClassifier,
    BertForPreTraining,
    BertModel,
    BertQA,
    BertTagger,
    convert_hf_state_dict,
)

transformers = pytest.importorskip("transformers")

# The tiny configuration of the comparisons: V=99, H=32, 2 layers, 4 heads, FFN 37, 64 positions.
TINY = {"vocab_size": 99, "num_layers": 2, "num_hiddens": 32, "num_heads": 4,
        "ffn_num_hiddens": 37, "max_position": 64}
NUM_LABELS = 5
VALID_LEN = torch.tensor([7, 4, 2])


def dense(n_in, n_out):
    return n_in * n_out + n_out


def expected_count(vocab, layers, hiddens, ffn, max_position=512, *, pooler=True, head=None):
    """BERT's layout by formula: token, position and 2 segment embeddings and a layer norm; per
    layer 4 H x H attention projections, the FFN and 2 layer norms; the pooler; a head:
    "pretraining" (MLM transform + norm, a decoder bias of V (its weight is the embedding),
    NSP H -> 2), ("classes", C) (H -> C) or "qa" (H -> 2)."""
    embeddings = (vocab + max_position + 2) * hiddens + 2 * hiddens
    layer = 4 * dense(hiddens, hiddens) + dense(hiddens, ffn) + dense(ffn, hiddens) + 4 * hiddens
    count = embeddings + layers * layer + (dense(hiddens, hiddens) if pooler else 0)
    if head == "pretraining":
        count += dense(hiddens, hiddens) + 2 * hiddens + vocab + dense(hiddens, 2)
    elif head == "qa":
        count += dense(hiddens, 2)
    elif head is not None:
        count += dense(hiddens, head[1])
    return count


def on_meta(build, *args, **kwargs):
    with torch.device("meta"):
        return build(*args, **kwargs)


def test_encoders_of_base_and_large_have_the_published_parameter_counts():
    # bert-base-uncased and bert-large-uncased (BertModel with pooler): the paper's 110M / 340M.
    base = on_meta(BertModel, 30522, *BERT_SIZES["base"])
    large = on_meta(BertModel, 30522, *BERT_SIZES["large"])
    assert dk.count_parameters(base) == 109_482_240
    assert dk.count_parameters(large) == 335_141_888


@pytest.mark.parametrize("name, size, head", [
    ("bert-small", "small", "pretraining"), ("bert-base", "base", "pretraining"),
    ("bert-large", "large", "pretraining"), ("bert-classifier", "small", ("classes", 2)),
    ("bert-tagger", "small", ("classes", 2)), ("bert-qa", "small", "qa"),
])
def test_registered_counts_are_the_formula(name, size, head):
    layers, hiddens, _, ffn, _ = {"small": (2, 128, 2, 256, 0.2), "base": (12, 768, 12, 3072, 0.1),
                                  "large": (24, 1024, 16, 4096, 0.1)}[size]
    # Hugging Face's token-classification and QA models have no pooler; nor have ours.
    pooler = name not in ("bert-tagger", "bert-qa")
    expected = expected_count(30522, layers, hiddens, ffn, pooler=pooler, head=head)
    info = MODELS[name]
    assert (info.family, info.params) == ("bert", expected)
    assert dk.count_parameters(on_meta(dk.create_model, name)) == expected


def test_sizes_are_the_books_and_the_papers():
    assert BERT_SIZES["small"] == (2, 128, 2, 256, 0.2)
    assert BERT_SIZES["base"] == (12, 768, 12, 3072, 0.1)
    assert BERT_SIZES["large"] == (24, 1024, 16, 4096, 0.1)
    assert {MODELS[n].task for n in ("bert-small", "bert-base", "bert-large")} == {
        "bert-pretraining"}
    assert [MODELS[n].task for n in ("bert-classifier", "bert-tagger", "bert-qa")] == [
        "text-classification", "token-classification", "question-answering"]


# ---- equality with transformers ----

def hf_config(num_labels):
    return transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, hidden_act="gelu",
        attn_implementation="eager", num_labels=num_labels)


def randomised(hf_class, seed, num_labels=NUM_LABELS):
    """A tiny transformers model in float64 with every parameter random, layer-norm scales and
    biases included (so that a key mapped to the wrong place, or not at all, shows)."""
    torch.manual_seed(seed)
    model = hf_class(hf_config(num_labels)).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            parameter.copy_(scale + 0.2 * torch.randn_like(parameter))
    return model


def batch(seed=0, length=7):
    """Token ids with segments 0 then 1 over the real tokens and junk ids in the padding."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 99, (3, length), generator=generator)
    segments = (torch.arange(length) >= (VALID_LEN[:, None] + 1) // 2).long()
    segments = segments * (torch.arange(length) < VALID_LEN[:, None])
    return tokens, segments, VALID_LEN


def real_positions(length=7):
    return torch.arange(length) < VALID_LEN[:, None]


def hf_outputs(model, tokens, segments, valid_len):
    mask = real_positions(tokens.shape[1]).long()
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask, token_type_ids=segments)


def converted(ours, hf_model):
    """``ours`` (float64, eval) with ``hf_model``'s weights loaded strictly."""
    ours = ours.double().eval()
    ours.load_state_dict(ours.adapt_state_dict(hf_model.state_dict()))  # strict
    # Counting parameters once each: the tied decoder weight is one in both.
    assert dk.count_parameters(ours) == sum(p.numel() for p in hf_model.parameters())
    return ours


def test_bert_model_equals_transformers():
    hf = randomised(transformers.BertModel, seed=1)  # bare keys: embeddings.*, encoder.*
    ours = converted(BertModel(**TINY), hf)
    tokens, segments, valid_len = batch()
    expected = hf_outputs(hf, tokens, segments, valid_len)
    with torch.no_grad():
        sequence, pooled = ours(tokens, segments, valid_len)
    real = real_positions()
    torch.testing.assert_close(sequence[real], expected.last_hidden_state[real])
    torch.testing.assert_close(pooled, expected.pooler_output)


def test_pretraining_heads_equal_transformers():
    hf = randomised(transformers.BertForPreTraining, seed=2)
    ours = converted(BertForPreTraining(**TINY), hf)
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    tokens, segments, valid_len = batch()
    expected = hf_outputs(hf, tokens, segments, valid_len)
    with torch.no_grad():
        mlm_logits, nsp_logits = ours(tokens, segments, valid_len)
        features = ours.encode(tokens, segments, valid_len)
    real = real_positions()
    assert mlm_logits.shape == (3, 7, 99)
    torch.testing.assert_close(mlm_logits[real], expected.prediction_logits[real])
    torch.testing.assert_close(nsp_logits, expected.seq_relationship_logits)
    hf_features = hf.bert(input_ids=tokens, attention_mask=real.long(),
                          token_type_ids=segments).last_hidden_state
    torch.testing.assert_close(features[real], hf_features[real].detach())


@pytest.mark.parametrize("hf_name, ours_class", [
    ("BertForSequenceClassification", BertClassifier),
    ("BertForTokenClassification", BertTagger),
    ("BertForQuestionAnswering", BertQA),
])
def test_fine_tuning_heads_equal_transformers(hf_name, ours_class):
    qa = ours_class is BertQA
    hf = randomised(getattr(transformers, hf_name), seed=3, num_labels=2 if qa else NUM_LABELS)
    options = dict(TINY) if qa else {"num_classes": NUM_LABELS, **TINY}
    ours = converted(ours_class(**options), hf)
    tokens, segments, valid_len = batch()
    expected = hf_outputs(hf, tokens, segments, valid_len)
    with torch.no_grad():
        logits = ours(tokens, segments, valid_len)
    real = real_positions()
    if ours_class is BertClassifier:
        torch.testing.assert_close(logits, expected.logits)
    elif ours_class is BertTagger:
        assert logits.shape == (3, 7, NUM_LABELS)
        torch.testing.assert_close(logits[real], expected.logits[real])
    else:
        assert logits.shape == (3, 7, 2)
        torch.testing.assert_close(logits[..., 0][real], expected.start_logits[real])
        torch.testing.assert_close(logits[..., 1][real], expected.end_logits[real])


def test_converter_reads_tensorflow_era_names_and_files_without_the_tied_weight():
    hf = randomised(transformers.BertForPreTraining, seed=4)
    state = hf.state_dict()
    reference = convert_hf_state_dict(state)
    # Old checkpoints: LayerNorm.gamma / beta, the MLM bias only as cls.predictions.bias, and
    # the decoder weight left out (it is the word embedding); buffers kept.
    old = {}
    for key, value in state.items():
        if key in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
            continue
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma")
        old[key.replace("LayerNorm.bias", "LayerNorm.beta")] = value
    old["bert.embeddings.position_ids"] = torch.arange(64)[None]
    assert any(key.endswith(".gamma") for key in old)
    converted_old = convert_hf_state_dict(old)
    assert converted_old.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(converted_old[key], value, msg=key)
    # Bare BertModel keys get the task models' bert. prefix.
    bare = {key.removeprefix("bert."): value for key, value in state.items()
            if key.startswith("bert.")}
    assert convert_hf_state_dict(bare).keys() == {key for key in reference if
                                                  key.startswith("bert.")}


def test_adapt_state_dict_leaves_divekit_states_and_keeps_other_heads():
    ours = BertClassifier(NUM_LABELS, **TINY)
    own = ours.state_dict()
    assert ours.adapt_state_dict(own) is own
    # A pretraining checkpoint into a classifier: the encoder converts, the heads it lacks
    # remain for the loader's skip patterns, and its own head is missing from the file.
    adapted = ours.adapt_state_dict(randomised(transformers.BertForPreTraining, 5).state_dict())
    assert {key for key in adapted if not key.startswith("bert.")} == {
        "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
        "cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    assert {key for key in own if key not in adapted} == {"classifier.weight", "classifier.bias"}


def test_incomplete_attention_in_a_checkpoint_is_an_error():
    state = randomised(transformers.BertModel, 6).state_dict()
    del state["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(DivekitError, match=r"layer\.1\.attention\.self has no key bias"):
        convert_hf_state_dict(state)


# ---- behaviour of our models ----

def tiny_pretraining(seed=0):
    torch.manual_seed(seed)
    return BertForPreTraining(**TINY).double().eval()


def test_padding_changes_nothing_at_real_positions():
    # Oracle: each sequence alone, unpadded. The batch pads to 7 with junk ids and segments.
    model = tiny_pretraining()
    tokens, segments, valid_len = batch()
    segments = torch.where(real_positions(), segments, 1)
    with torch.no_grad():
        mlm_logits, nsp_logits = model(tokens, segments, valid_len)
        for row, length in enumerate(valid_len.tolist()):
            alone = model(tokens[row:row + 1, :length], segments[row:row + 1, :length])
            torch.testing.assert_close(mlm_logits[row, :length], alone.mlm_logits[0])
            torch.testing.assert_close(nsp_logits[row], alone.nsp_logits[0])


def test_mlm_mask_gathers_the_full_logits_row_by_row():
    model = tiny_pretraining()
    tokens, segments, valid_len = batch()
    mlm_mask = torch.zeros(3, 7, dtype=torch.bool)
    mlm_mask[0, [1, 5]] = mlm_mask[1, 2] = mlm_mask[2, 1] = True
    with torch.no_grad():
        gathered, nsp_gathered = model(tokens, segments, valid_len, mlm_mask)
        full, nsp_full = model(tokens, segments, valid_len)
    expected = torch.stack([full[b, pos] for b in range(3) for pos in range(7)
                            if mlm_mask[b, pos]])
    assert gathered.shape == (4, 99)
    torch.testing.assert_close(gathered, expected)
    torch.testing.assert_close(nsp_gathered, nsp_full)


def test_tied_embedding_gets_the_gradients_of_both_uses():
    # Oracle: an untied copy, whose embedding and decoder gradients must add up to the tied one.
    model = tiny_pretraining()
    untied = copy.deepcopy(model)
    embedding = untied.bert.embeddings.word_embeddings.weight
    untied.cls.predictions.decoder.weight = torch.nn.Parameter(embedding.detach().clone())
    tokens, segments, valid_len = batch()
    mlm_mask = real_positions() & (torch.arange(7) % 2 == 1)
    for net in (model, untied):
        mlm_logits, nsp_logits = net(tokens, segments, valid_len, mlm_mask)
        (mlm_logits.logsumexp(-1).sum() + nsp_logits.sum()).backward()
    from_input = untied.bert.embeddings.word_embeddings.weight.grad
    from_output = untied.cls.predictions.decoder.weight.grad
    assert from_input.abs().sum() > 0 and from_output.abs().sum() > 0
    tied = model.bert.embeddings.word_embeddings.weight
    assert tied is model.cls.predictions.decoder.weight
    torch.testing.assert_close(tied.grad, from_input + from_output)


@pytest.mark.parametrize(("width", "std"), [(768, 0.02), (128, 0.02 * 6 ** 0.5)])
def test_initialisation_is_berts_scaled_up_for_narrow_models(width, std):
    torch.manual_seed(0)
    model = BertForPreTraining(vocab_size=2000, num_layers=2, num_hiddens=width, num_heads=2,
                               ffn_num_hiddens=256)
    layer = model.bert.encoder.layer[0]
    for weight in (layer.self_attn.in_proj_weight, layer.linear1.weight,
                   model.bert.embeddings.word_embeddings.weight, model.bert.pooler.dense.weight,
                   model.cls.predictions.transform.dense.weight):
        assert abs(weight.std().item() - std) < 0.1 * std and abs(weight.mean().item()) < 0.002
    for bias in (layer.self_attn.in_proj_bias, layer.linear2.bias, model.bert.pooler.dense.bias,
                 model.cls.predictions.decoder.bias):
        assert not bias.any()
    assert (layer.norm1.weight == 1).all() and layer.norm1.eps == 1e-12


def test_registered_models_run_with_their_options():
    tokens, segments, valid_len = batch()
    small = {"vocab_size": 99, "num_hiddens": 16, "ffn_num_hiddens": 24}
    classifier = dk.create_model("bert-classifier", num_classes=3, **small).eval()
    assert classifier(tokens, segments, valid_len).shape == (3, 3)
    assert dk.create_model("bert-tagger", num_classes=4, **small)(
        tokens, segments, valid_len).shape == (3, 7, 4)
    assert dk.create_model("bert-qa", **small)(tokens, segments, valid_len).shape == (3, 7, 2)
    pretraining = dk.create_model("bert-small", **small)
    assert [tuple(t.shape) for t in pretraining(tokens, segments, valid_len)] == [(3, 7, 99),
                                                                                  (3, 2)]
    assert pretraining.encode(tokens, segments, valid_len).shape == (3, 7, 16)
    # The size gives what is not overridden.
    model = on_meta(dk.create_model, "bert-classifier", size="base", num_layers=1)
    assert len(model.bert.encoder.layer) == 1 and model.bert.pooler.dense.in_features == 768
    assert model.bert.encoder.layer[0].self_attn.num_heads == 12
    assert model.dropout.p == 0.1


@pytest.mark.parametrize("options, message", [
    ({"size": "huge"}, "size must be one of small, base, large, got 'huge'"),
    ({"num_heads": 3}, "num_heads=3 must divide embed_dim=128"),
    ({"num_layers": 0}, "num_layers must be a positive integer"),
    ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(DivekitError, match=message) as error:
        on_meta(dk.create_model, "bert-classifier", **options)
    assert "\n" not in str(error.value)


def test_bad_inputs_are_one_line_errors():
    model = tiny_pretraining()
    tokens, segments, valid_len = batch()
    calls = [
        (lambda: model(tokens.double(), segments, valid_len), "tokens must be an int64"),
        (lambda: model(torch.zeros(1, 65, dtype=torch.long)), "longer than max_position=64"),
        (lambda: model(tokens, segments[:, :5], valid_len), "segments must have the shape"),
        (lambda: model(tokens, segments, valid_len[:2]), r"valid_len must have shape \(3,\)"),
        (lambda: model(tokens, segments, valid_len, (tokens > 5).long()),
         "mlm_mask must be boolean"),
    ]
    for call, message in calls:
        with pytest.raises(DivekitError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
