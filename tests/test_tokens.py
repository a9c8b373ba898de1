"""Placeholder tokens, the magnitude m and the initial vectors, on the tiny models' real CLIP vocabulary."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import saved_token_table, vocab_mean_norm
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dti.errors import DtiError
from dti.tokens import (
    PlaceholderEmbedding,
    add_placeholder,
    contextual_init,
    install,
    resolve_magnitude,
    token_init,
    vocab_norm_stats,
)

_TOKENIZERS: dict[str, CLIPTokenizer] = {}


def _tokenizer(model, sub="tokenizer"):
    """A private copy (tests add tokens) of a tokenizer loaded once per module."""
    key = str(model / sub)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = CLIPTokenizer.from_pretrained(key)
    return copy.deepcopy(_TOKENIZERS[key])


# --- magnitude -------------------------------------------------------------------------------------------


def test_magnitude_statistics_skip_zero_rows():
    table = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])  # norms 5, 0, 1, 0, 2
    assert resolve_magnitude(table, "mean") == pytest.approx(8 / 3)
    assert resolve_magnitude(table, "min") == pytest.approx(1.0)
    assert resolve_magnitude(table, "max") == pytest.approx(5.0)
    assert resolve_magnitude(table, 0.25) == 0.25
    assert resolve_magnitude(table, "0.25") == 0.25  # as it arrives from a CLI flag or a YAML string
    stats = vocab_norm_stats(table)
    assert stats["std"] == pytest.approx(torch.tensor([5.0, 1.0, 2.0]).std().item())


def test_magnitude_of_the_tiny_vocabulary_matches_an_independent_computation(tiny_sdxl):
    for slot in ("clip_l", "clip_g"):
        table = saved_token_table(tiny_sdxl, slot)
        assert resolve_magnitude(table, "mean") == pytest.approx(vocab_mean_norm(tiny_sdxl, slot), rel=1e-6)
        norms = table.double().norm(dim=-1)
        assert resolve_magnitude(table, "min") == pytest.approx(norms.min().item(), rel=1e-6)
        assert resolve_magnitude(table, "max") == pytest.approx(norms.max().item(), rel=1e-6)


@pytest.mark.parametrize("bad", ["average", "", "1e", "-1", "0", 0.0, -2.5, "nan", "inf"])
def test_bad_magnitude_is_a_dti_error_naming_the_value(bad):
    with pytest.raises(DtiError, match="magnitude") as err:
        resolve_magnitude(torch.ones(3, 2), bad)
    assert str(bad) in str(err.value)


# --- placeholder tokens ----------------------------------------------------------------------------------


def test_placeholder_gets_one_token_per_initializer_piece(tiny_sd):
    tok = _tokenizer(tiny_sd)
    size = len(tok)
    ph = add_placeholder(tok, "clip_l", "<toy>", "stuffed animal")
    assert ph.tokens == ["<toy>", "<toy>_1"]
    assert ph.token_ids == [size, size + 1]
    assert ph.init_ids == tok.encode("stuffed animal", add_special_tokens=False)
    assert ph.text == "<toy> <toy>_1"
    # The prompt text tokenizes to exactly the new ids, whole.
    assert tok.encode(f"a {ph.text} on a table", add_special_tokens=False)[1:3] == [size, size + 1]


@pytest.mark.parametrize("initializer", ["", "   "])
def test_initializer_without_tokens_is_rejected(tiny_sd, initializer):
    with pytest.raises(DtiError, match="initializer") as err:
        add_placeholder(_tokenizer(tiny_sd), "clip_l", "<toy>", initializer)
    assert repr(initializer) in str(err.value)


@pytest.mark.parametrize("placeholder", ["dog", "sks", "<|endoftext|>"])
def test_placeholder_already_in_vocabulary_is_rejected(tiny_sd, placeholder):
    tok = _tokenizer(tiny_sd)
    with pytest.raises(DtiError, match="already in the clip_l vocabulary") as err:
        add_placeholder(tok, "clip_l", placeholder, "dog")
    assert repr(placeholder) in str(err.value)
    assert len(tok) == 49408  # nothing was added


@pytest.mark.parametrize("placeholder", ["", "two words"])
def test_placeholder_must_be_one_word(tiny_sd, placeholder):
    with pytest.raises(DtiError, match="placeholder"):
        add_placeholder(_tokenizer(tiny_sd), "clip_l", placeholder, "dog")


# --- the embedding layer ---------------------------------------------------------------------------------


def test_placeholder_embedding_looks_up_frozen_and_new_rows():
    torch.manual_seed(0)
    frozen = torch.nn.Embedding(10, 4)
    original = frozen.weight.detach().clone()
    directions = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    layer = PlaceholderEmbedding(frozen, directions, magnitude=0.5)
    ids = torch.tensor([[0, 10, 3, 11, 9]])
    out = layer(ids)
    assert torch.equal(out[0, [0, 2, 4]], original[[0, 3, 9]])
    torch.testing.assert_close(out[0, [1, 3]], 0.5 * directions)
    out.sum().backward()
    assert frozen.weight.grad is None and not frozen.weight.requires_grad
    assert layer.rows.grad is not None and layer.rows.dtype == torch.float32
    assert layer.num_embeddings == 12
    assert torch.equal(layer.weight[:10], original)
    # Raw vectors (TI): the rows are the embedding itself.
    raw = PlaceholderEmbedding(torch.nn.Embedding(10, 4), 3 * directions, magnitude=None)
    torch.testing.assert_close(raw(torch.tensor([11]))[0], 3 * directions[1])


def test_placeholder_ids_after_other_added_tokens():
    """Ids need not start at the vocabulary size (a tokenizer may already hold added tokens)."""
    frozen = torch.nn.Embedding(10, 4)
    layer = PlaceholderEmbedding(frozen, torch.ones(2, 4), magnitude=None, first_id=12)
    out = layer(torch.tensor([12, 13, 5]))
    torch.testing.assert_close(out[:2], torch.ones(2, 4))
    assert torch.equal(out[2], frozen.weight[5].detach())
    with pytest.raises(ValueError, match="no rows"):
        layer(torch.tensor([10]))  # an added token that is not this placeholder's


def test_install_twice_is_refused(tiny_sd):
    encoder = CLIPTextModel.from_pretrained(str(tiny_sd / "text_encoder"))
    table = encoder.get_input_embeddings().weight
    ph = add_placeholder(_tokenizer(tiny_sd), "clip_l", "<toy>", "dog")
    layer = install(encoder, ph, token_init(table, ph.init_ids), magnitude=None)
    assert encoder.get_input_embeddings() is layer and layer.first_id == ph.token_ids[0]
    with pytest.raises(DtiError, match="already"):
        install(encoder, ph, token_init(table, ph.init_ids), magnitude=None)


# --- CrossInit -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,sub,cls", [("sd", "", CLIPTextModel),
                                            ("sdxl", "_2", CLIPTextModelWithProjection)])
def test_contextual_init_is_the_last_hidden_state_at_the_initializer_positions(tiny_models, family, sub, cls):
    model = tiny_models[family]
    tok = _tokenizer(model, "tokenizer" + sub)
    encoder = cls.from_pretrained(str(model / ("text_encoder" + sub))).eval()
    init = contextual_init(encoder, tok, "stuffed animal", "cpu")
    # Independently: the phrase with BOS/EOS and no padding (CLIP's causal mask makes padding irrelevant).
    ids = tok("stuffed animal", return_tensors="pt").input_ids
    assert ids[0].tolist()[1:3] == [11781, 4668]  # "stuffed", "animal" right after BOS
    with torch.no_grad():
        hidden = encoder(ids).last_hidden_state[0]
    assert init.shape == (2, encoder.config.hidden_size)
    torch.testing.assert_close(init, hidden[1:3], atol=1e-5, rtol=1e-5)
    # Not merely the token rows: the contextual vectors differ from the vocabulary rows.
    vocabulary_rows = token_init(encoder.get_input_embeddings().weight, [11781, 4668])
    assert not torch.allclose(init, vocabulary_rows, atol=1e-3)
