"""The residual-update ratio and the contextualization distance (dti.analysis.residual) on tiny encoders
built here, where the answer is known: a block with zeroed output projections updates nothing (ratio 0),
a token whose output cannot see the prompt is not contextualized (distance 0), a larger token norm leaves
a smaller relative update, and the bootstrap intervals are reproducible from their seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import CLIPTextModel, T5Config, T5EncoderModel

from dti.analysis import residual as R
from dti.errors import DtiError
from dti.tiny import clip_text_config, clip_tokenizer
from dti.tokens import PlaceholderEmbedding

TOKEN = "<tok> <tok>_1"  # a 2-vector placeholder as written in a prompt (dti.token_names)
PROMPTS = [f"a photo of {TOKEN} on the beach", f"{TOKEN} in the snow", f"a painting of {TOKEN} wearing a hat",
           f"a {TOKEN} next to a cat and a dog", f"a close-up of {TOKEN} in a garden at night"]


@pytest.fixture(scope="module")
def tokenizer():
    """The real CLIP BPE with the placeholder's two tokens added once (ids 49408, 49409)."""
    tok = clip_tokenizer()
    tok.add_tokens(["<tok>", "<tok>_1"])
    return tok


def _clip(seed: int = 0, magnitude: float | None = None) -> CLIPTextModel:
    """A tiny random CLIP (2 blocks, width 32) with the placeholder's rows installed as training does."""
    torch.manual_seed(seed)
    encoder = CLIPTextModel(clip_text_config(32, with_projection=False)).eval()
    rows = torch.randn(2, 32) * 0.02 * 32**0.5  # about the vocabulary's norm
    frozen = encoder.get_input_embeddings()
    if magnitude is not None:  # DTI's layer: unit directions times m
        rows = rows / rows.norm(dim=-1, keepdim=True)
    encoder.set_input_embeddings(PlaceholderEmbedding(frozen, rows, magnitude, first_id=49408))
    return encoder


def _layers(encoder: CLIPTextModel):
    """The CLIP blocks (transformers 4 nests them under `text_model`, 5 does not)."""
    return getattr(encoder, "text_model", encoder).encoder.layers


def _silence(layer) -> None:
    """Zero a CLIP block's output projections (attention out_proj, MLP fc2): its update is exactly 0."""
    with torch.no_grad():
        for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()


def test_ratio_definition_and_zero_update_block(tokenizer):
    encoder = _clip()
    _silence(_layers(encoder)[1])
    table = R.residual_updates(encoder, tokenizer, PROMPTS, "<tok>")
    assert list(table.columns) == list(R.RESIDUAL_COLUMNS)
    assert len(table) == len(PROMPTS) * 2 * 2  # prompts x layers x vectors
    assert (table.loc[table.layer == 1, "ratio"] == 0).all()
    assert (table.loc[table.layer == 0, "ratio"] > 0).all()
    # Layer 0 by hand from output_hidden_states at the first prompt's first vector.
    tok = tokenizer(PROMPTS[:1], return_tensors="pt")
    position = tok.input_ids[0].tolist().index(49408)
    with torch.no_grad():
        h = encoder(**tok, output_hidden_states=True).hidden_states
    expected = ((h[1] - h[0])[0, position].norm() / h[0][0, position].norm()).item()
    row = table[(table.prompt_id == 0) & (table.layer == 0) & (table.vector == 0)].iloc[0]
    assert row.position == position and row.ratio == pytest.approx(expected, rel=1e-5)


def test_t5_last_block_is_read_before_the_final_norm(tokenizer):
    """T5's last hidden_states entry is after its final norm; the last block's update must not include it."""
    torch.manual_seed(0)
    config = T5Config(vocab_size=49408, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
    encoder = T5EncoderModel(config)
    rows = torch.randn(2, 16)
    encoder.set_input_embeddings(PlaceholderEmbedding(encoder.get_input_embeddings(), rows, None))
    with torch.no_grad():
        encoder.encoder.block[1].layer[0].SelfAttention.o.weight.zero_()
        encoder.encoder.block[1].layer[1].DenseReluDense.wo.weight.zero_()
    with torch.no_grad():  # what makes this case: transformers puts the final norm's output last
        out = encoder(**tokenizer(PROMPTS[:1], return_tensors="pt"), output_hidden_states=True)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    encoder.train()  # dropout on: the measurement runs in eval mode and gives the mode back
    table = R.residual_updates(encoder, tokenizer, PROMPTS, [49408, 49409])
    assert encoder.training
    assert (table.loc[table.layer == 1, "ratio"] == 0).all()
    assert (table.loc[table.layer == 0, "ratio"] > 0).all()


@pytest.mark.parametrize("features", ["last", "penultimate"])
def test_contextualization_zero_when_output_ignores_the_prompt(tokenizer, features):
    encoder = _clip()
    repeated = R.summarize_pairs(R.contextualization(encoder, tokenizer, [PROMPTS[0]] * 3, "<tok>",
                                                     features=features))
    assert repeated["mean"].abs().max() < 1e-6
    varied = R.contextualization(encoder, tokenizer, PROMPTS, "<tok>", features=features)
    assert list(varied.columns) == list(R.CONTEXT_COLUMNS)
    assert len(varied) == 10 * 2 and (varied.distance > 1e-4).all()  # 10 pairs x 2 vectors
    for layer in _layers(encoder):  # no attention output: each position sees only itself
        with torch.no_grad():
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
    same_place = [f"{TOKEN} on the beach", f"{TOKEN} in the snow at night", f"{TOKEN} wearing a hat"]
    blind = R.contextualization(encoder, tokenizer, same_place, "<tok>", features=features)
    assert blind.distance.abs().max() < 1e-6


def test_larger_token_norm_gives_smaller_update_ratio(tokenizer):
    encoder = _clip()
    before = R.token_rows(encoder, [49408, 49409])
    residual, context = R.norm_sweep(encoder, tokenizer, PROMPTS, "<tok>", [1, 4, 16, None])
    assert torch.equal(R.token_rows(encoder, [49408, 49409]), before)  # the sweep restores the rows
    scaled = residual.dropna(subset=["scale"])
    assert np.allclose(scaled.scale, scaled.norm_ratio)
    means = R.summarize(scaled, by=["scale"]).set_index("scale")["mean"]  # averaged over layers and vectors
    assert list(means.index) == [1, 4, 16] and means.is_monotonic_decreasing and means.is_unique
    trained = residual[residual.scale.isna()]
    assert trained.norm_ratio.iloc[0] == pytest.approx(before.norm(dim=-1).mean().item()
                                                       / R.vocab_mean_norm(encoder, [49408, 49409]))
    assert set(context.scale.dropna()) == {1, 4, 16} and len(context) == 4 * 10 * 2


def test_set_token_norm_on_placeholder_layers_and_plain_tables(tokenizer):
    dti = _clip(magnitude=0.7)  # DTI's m * v layer
    direction = R.token_rows(dti, [49408, 49409]) / 0.7
    with R.token_norm(dti, [49408, 49409], 5.0):
        rows = R.token_rows(dti, [49408, 49409])
        assert torch.allclose(rows.norm(dim=-1), torch.full((2,), 5.0))
        assert torch.allclose(rows / 5.0, direction, atol=1e-6)
        assert torch.allclose(dti.get_input_embeddings().rows.norm(dim=-1), torch.full((2,), 5 / 0.7))
    assert torch.allclose(R.token_rows(dti, [49408, 49409]), 0.7 * direction)
    plain = CLIPTextModel(clip_text_config(32, with_projection=False))  # as diffusers' loader leaves it
    plain.resize_token_embeddings(49410)
    m = R.vocab_mean_norm(plain, [49408, 49409])
    assert m == pytest.approx(plain.get_input_embeddings().weight[:49408].norm(dim=-1).mean().item())
    R.set_token_norm(plain, [49408, 49409], 3 * m)
    assert torch.allclose(plain.get_input_embeddings().weight[49408:].norm(dim=-1), torch.full((2,), 3 * m))
    with pytest.raises(DtiError, match="positive"):
        R.set_token_norm(plain, [49408], 0.0)


def test_bootstrap_intervals_contain_the_mean_and_follow_the_seed():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"prompt_id": np.repeat(np.arange(12), 4), "layer": np.tile([0, 0, 1, 1], 12),
                          "ratio": rng.gamma(2.0, size=48)})
    summary = R.summarize(table, by=["layer"], n_boot=500, seed=3)
    per_prompt = table.groupby(["layer", "prompt_id"]).ratio.mean().groupby("layer").mean()
    assert np.allclose(summary["mean"], per_prompt) and (summary.n_prompts == 12).all()
    assert ((summary.ci_low <= summary["mean"]) & (summary["mean"] <= summary.ci_high)).all()
    assert (summary.ci_low < summary.ci_high).all()
    pd.testing.assert_frame_equal(summary, R.summarize(table, by=["layer"], n_boot=500, seed=3))
    assert not R.summarize(table, by=["layer"], n_boot=500, seed=4).equals(summary)
    one = R.summarize(table[table.prompt_id == 0])
    assert one.ci_low.iloc[0] == one["mean"].iloc[0] == one.ci_high.iloc[0]

    pairs = pd.DataFrame([(a, b, j, rng.uniform()) for a in range(8) for b in range(a + 1, 8)
                          for j in (0, 1)], columns=list(R.CONTEXT_COLUMNS))
    ctx = R.summarize_pairs(pairs, n_boot=500, seed=3)
    assert ctx["mean"].iloc[0] == pytest.approx(pairs.distance.mean()) and ctx.n_prompts.iloc[0] == 8
    assert ctx.ci_low.iloc[0] < ctx["mean"].iloc[0] < ctx.ci_high.iloc[0]
    pd.testing.assert_frame_equal(ctx, R.summarize_pairs(pairs, n_boot=500, seed=3))
    with pytest.raises(DtiError, match="not columns"):
        R.summarize(table, by=["scale"])


def test_prompt_without_the_token_is_an_error(tokenizer):
    with pytest.raises(DtiError, match="does not contain"):
        R.residual_updates(_clip(), tokenizer, [PROMPTS[0], "a photo of a dog"], "<tok>")
    with pytest.raises(DtiError, match="not in the tokenizer"):
        R.placeholder_ids(tokenizer, "<other>")
    with pytest.raises(DtiError, match="two prompts"):
        R.contextualization(_clip(), tokenizer, PROMPTS[:1], "<tok>")
