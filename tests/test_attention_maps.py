"""Cross-attention maps of a learned token (dti.analysis.attention) on the tiny SD and SDXL backbones, where
answers are known: the maps of all text positions are a softmax (they sum to 1 at every image position),
recording leaves the image as an unrecorded run makes it, a seed fixes the maps, the conditional branch is
the one read, rescaling the token changes its map and its rows come back, and the hooks go away."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import fresh_backbone

from dti.analysis import attention as A
from dti.analysis.residual import token_rows
from dti.errors import DtiError
from dti.methods.context_regularization import cross_attention_layers
from dti.sample import set_token_rows, to_uint8

TOKEN = "<attn>"
PROMPT = f"a photo of {TOKEN} on the beach"  # start, a, photo, of, then the token's two vectors: 4 and 5
RUN = dict(seed=3, steps=2, guidance_scale=5.0, resolution=64)  # 64 px: an 8x8 latent grid
TEXT_LENGTH, LATENT = 77, (8, 8)


def _with_token(model):
    """A fresh backbone with a 2-vector token of seeded random rows, about 15 m."""
    backbone = fresh_backbone(model)
    gen = torch.Generator().manual_seed(0)
    vectors = {s.name: 0.3 * torch.randn(2, s.encoder.get_input_embeddings().embedding_dim, generator=gen)
               for s in backbone.slots}
    assert set_token_rows(backbone, TOKEN, vectors) == TOKEN
    return backbone


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def backbone(request):
    return _with_token(request.getfixturevalue(f"tiny_{request.param}"))


@pytest.fixture(scope="module")
def sd_backbone(tiny_sd):
    return _with_token(tiny_sd)


def _pre_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in module.modules())


def test_text_position_maps_are_a_softmax(backbone):
    record = A.cross_attention_maps(backbone, PROMPT, **RUN)
    assert record.maps.shape == (TEXT_LENGTH, *LATENT)
    assert record.image.shape == (64, 64, 3) and record.image.dtype == np.uint8
    assert record.steps == RUN["steps"] and record.layers == len(cross_attention_layers(backbone.denoiser))
    assert (record.maps >= 0).all()
    np.testing.assert_allclose(record.maps.sum(axis=0), 1.0, atol=1e-6)


def test_recording_leaves_the_image_unchanged(backbone):
    record = A.cross_attention_maps(backbone, PROMPT, **RUN)
    with torch.inference_mode():
        latents = backbone.render_latents([PROMPT], [torch.Generator(backbone.device).manual_seed(RUN["seed"])],
                                          steps=RUN["steps"], guidance_scale=RUN["guidance_scale"], height=64,
                                          width=64)
        plain = to_uint8(backbone.decode_latents(latents))[0].numpy()
    np.testing.assert_array_equal(record.image, plain)


def test_seed_fixes_the_maps_and_rescaling_changes_them(backbone):
    before = {s.name: token_rows(s.encoder, s.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"]))
              for s in backbone.slots}
    trained, at_1, at_8 = A.token_attention_maps(backbone, PROMPT, TOKEN, scales=(None, 1.0, 8.0), **RUN)
    (again,) = A.token_attention_maps(backbone, PROMPT, TOKEN, **RUN)
    assert trained["positions"] == [4, 5]
    np.testing.assert_array_equal(trained["map"], again["map"])
    np.testing.assert_array_equal(trained["image"], again["image"])
    # The token's map is the mean of its two positions' maps.
    record = A.cross_attention_maps(backbone, PROMPT, **RUN)
    np.testing.assert_array_equal(trained["map"], record.maps[[4, 5]].mean(axis=0))
    assert trained["norm_ratio"] > 10
    assert at_1["norm_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert at_8["norm_ratio"] == pytest.approx(8.0, rel=1e-5)
    for a, b in ((trained, at_1), (at_1, at_8), (trained, at_8)):
        assert np.abs(a["map"] - b["map"]).max() > 1e-5
    for s in backbone.slots:  # the rows are the installed ones again
        ids = s.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
        torch.testing.assert_close(token_rows(s.encoder, ids), before[s.name], rtol=0, atol=0)


def test_the_conditional_branch_is_read(sd_backbone):
    """One step: the conditional row sees the same latents and text with guidance as without, so its maps
    agree; the unconditional row (the empty prompt) would give other maps."""
    one = dict(seed=3, steps=1, resolution=64)
    alone = A.cross_attention_maps(sd_backbone, PROMPT, guidance_scale=1.0, **one)
    guided = A.cross_attention_maps(sd_backbone, PROMPT, guidance_scale=5.0, **one)
    empty = A.cross_attention_maps(sd_backbone, "", guidance_scale=1.0, **one)
    np.testing.assert_allclose(guided.maps, alone.maps, rtol=0, atol=1e-7)
    assert np.abs(empty.maps - alone.maps).max() > 1e-5


def test_uniform_keys_give_uniform_maps(tiny_sd):
    """With every cross-attention key zero, each text position gets 1/77 everywhere, the token's map too."""
    backbone = _with_token(tiny_sd)
    with torch.no_grad():
        for layer in cross_attention_layers(backbone.denoiser):
            layer.to_k.weight.zero_()
    (result,) = A.token_attention_maps(backbone, PROMPT, TOKEN, **RUN)
    np.testing.assert_allclose(result["map"], 1 / TEXT_LENGTH, rtol=1e-6)


def test_attention_probs_by_hand(sd_backbone):
    layer = cross_attention_layers(sd_backbone.denoiser)[0]
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, layer.to_q.in_features, generator=gen)
    context = torch.randn(2, TEXT_LENGTH, layer.to_k.in_features, generator=gen)
    heads = layer.heads
    q = (hidden @ layer.to_q.weight.T).view(2, 16, heads, -1).permute(0, 2, 1, 3)
    k = (context @ layer.to_k.weight.T).view(2, TEXT_LENGTH, heads, -1).permute(0, 2, 1, 3)
    expected = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(dim=1)
    with torch.no_grad():
        torch.testing.assert_close(A.attention_probs(layer, hidden, context), expected, rtol=1e-5, atol=1e-7)


def test_layer_grid():
    assert A.layer_grid(64, (8, 8)) == (8, 8)
    assert A.layer_grid(16, (8, 8)) == (4, 4)
    assert A.layer_grid(12, (5, 7)) == (3, 4)  # halving rounds up, as a stride-2 convolution does
    with pytest.raises(DtiError, match="no halving"):
        A.layer_grid(15, (8, 8))


def test_prompt_without_the_token_is_refused(backbone):
    prompt = "a photo of a dog on the beach"
    with pytest.raises(DtiError, match=re.escape(repr(prompt))):
        A.token_attention_maps(backbone, prompt, TOKEN, **RUN)
    with pytest.raises(DtiError, match="not in the tokenizer"):
        A.token_attention_maps(backbone, PROMPT, "<never-installed>", **RUN)


@pytest.mark.parametrize("family", ["sana", "wan"])
def test_unsupported_families_are_refused(family, request):
    backbone = fresh_backbone(request.getfixturevalue(f"tiny_{family}"))
    with pytest.raises(DtiError, match=f"not available for {family}:"):
        A.token_attention_maps(backbone, PROMPT, TOKEN, **RUN)
    with pytest.raises(DtiError, match=f"not available for {family}:"):
        A.cross_attention_maps(backbone, PROMPT, **RUN)


def test_hooks_are_removed(sd_backbone, monkeypatch):
    denoiser = sd_backbone.denoiser
    before = _pre_hooks(denoiser)
    A.token_attention_maps(sd_backbone, PROMPT, TOKEN, scales=(None, 2.0), **RUN)
    assert _pre_hooks(denoiser) == before

    seen = []

    def failing_render(*args, **kwargs):
        seen.append(_pre_hooks(denoiser))
        raise RuntimeError("render failed")

    monkeypatch.setattr(sd_backbone, "render_latents", failing_render)
    with pytest.raises(RuntimeError, match="render failed"):
        A.cross_attention_maps(sd_backbone, PROMPT, **RUN)
    # The hooks were on while rendering (one per cross-attention layer and one counting steps), gone after.
    assert seen == [before + len(cross_attention_layers(denoiser)) + 1]
    assert _pre_hooks(denoiser) == before


def test_attention_grid(tmp_path):
    from dti.figures import save_figure
    from dti.figures.attention import COLORBAR_LABEL, attention_caption, attention_grid

    rng = np.random.default_rng(0)
    prompts = ["a {} on the beach", "a {} in the jungle", "a red {} with a city in the background"]
    cells = [dict(method=method, scale=scale, norm_ratio=None if scale else 12.5, prompt=prompt,
                  image=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), map=rng.random((8, 8)) / 10)
             for method in ("ti", "dti") for scale in (4.0, None) for prompt in prompts]
    del cells[4]  # one cell missing (TI at its trained norm, second prompt): left blank
    fig = attention_grid(cells, title="attention", caption=attention_caption(steps=2, guidance_scale=5.0))
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(fig.axes) == 4 * 3 + 1  # rows x prompts, and the colour bar
    assert len(images) == 4 * 3 - 1
    assert all(len(ax.get_images()) == 2 for ax in images)  # the image and its map
    assert any(ax.get_ylabel() == COLORBAR_LABEL for ax in fig.axes)
    labels = [fig.axes[r * 3].get_ylabel() for r in range(4)]  # the registry's order: DTI first, trained first
    assert labels[0].startswith("DTI") and "trained norm" in labels[0] and "12.5 m" in labels[0]
    assert labels[1].startswith("DTI") and labels[1].endswith("at 4 m")
    assert labels[2].startswith("TI") and "trained norm" in labels[2]
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a S* on the beach", "a S* in the jungle",
                                                       "a red S* with a\ncity in the\nbackground"]
    assert not fig.axes[2 * 3 + 1].get_images()
    save_figure(fig, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
