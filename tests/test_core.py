"""CoRe's context regularizers (dti.methods.context_regularization) on constructed inputs and on the tiny
SD model, its norm hold, and where it refuses to run (docs/method.md, "CoRe")."""

from __future__ import annotations

import pytest
import torch
from conftest import fast_settings, fresh_backbone

from dti.errors import DtiError
from dti.methods import get_method
from dti.methods.context_regularization import (
    ContextPositions,
    context_attention_loss,
    context_embedding_loss,
    context_positions,
    cross_attention_layers,
    recorded_attention,
)
from dti.methods.core_prompts import REGULARIZATION_PROMPTS
from dti.methods.units import StepInputs
from dti.train import Trainer


def _trainer(model, images, tmp_path, method, **overrides) -> Trainer:
    return Trainer(fresh_backbone(model), images, fast_settings(method=method, **overrides), tmp_path)


def _inputs(trainer: Trainer, step: int = 1) -> StepInputs:
    _, latents, noise, timesteps, time_ids = trainer._micro_batch(step, range(trainer.settings.batch_size))
    return StepInputs(step, trainer.layers, trainer.starts, trainer.backbone, latents, noise, timesteps, time_ids,
                      trainer.prompt_token, trainer.settings.initializer, torch.Generator().manual_seed(step))


# --- context positions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("initializer", "class_word"), [("dog", "dog"), ("stuffed animal", "stuffed animal"),
                                                         ("dog", "red backpack")])
def test_context_positions_pair_the_same_tokens_start_and_end_included(tiny_sd, subject_images, tmp_path,
                                                                       initializer, class_word):
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "core", initializer=initializer)
    tokenizer = trainer.backbone.slots[0].tokenizer
    template = "a {} in the desert"
    positions = context_positions(tokenizer, template, trainer.prompt_token, class_word)
    ours = tokenizer(template.format(trainer.prompt_token))["input_ids"]
    theirs = tokenizer(template.format(class_word))["input_ids"]
    assert [ours[i] for i in positions.prompt] == [theirs[i] for i in positions.reference]
    # start token, "a", "in", "the", "desert", end token: the placeholder's and the class word's tokens left out
    assert len(positions.prompt) == 6
    assert positions.prompt[0] == positions.reference[0] == 0
    assert positions.prompt[-1] == len(ours) - 1 and positions.reference[-1] == len(theirs) - 1
    placeholder_ids = set(trainer.slots["clip_l"].placeholder.token_ids)
    assert not placeholder_ids & {ours[i] for i in positions.prompt}


def test_every_regularization_prompt_has_one_slot_with_spaces_around_it(tiny_sd, subject_images, tmp_path):
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "core", initializer="stuffed animal")
    tokenizer = trainer.backbone.slots[0].tokenizer
    assert len(set(REGULARIZATION_PROMPTS)) == len(REGULARIZATION_PROMPTS) >= 20
    for template in REGULARIZATION_PROMPTS:
        assert template.count("{}") == 1
        positions = context_positions(tokenizer, template, trainer.prompt_token, "stuffed animal")
        assert len(positions.prompt) == len(positions.reference) >= 3


def test_a_template_whose_words_merge_with_the_placeholder_is_refused(tiny_sd, subject_images, tmp_path):
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "core")
    with pytest.raises(DtiError, match="tokenize differently"):
        context_positions(trainer.backbone.slots[0].tokenizer, "a{}s in the desert", trainer.prompt_token, "dog")


# --- the two terms on constructed inputs ------------------------------------------------------------------
POSITIONS = ContextPositions(torch.tensor([0, 1, 3, 4]), torch.tensor([0, 1, 4, 5]))  # k = 1, class word of 2


def test_identical_context_outputs_give_zero_embedding_loss_whatever_the_token_rows():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 8, 16, generator=gen)
    ours = torch.randn(1, 7, 16, generator=gen)
    ours[:, POSITIONS.prompt] = ref[:, POSITIONS.reference]  # the context equal; the token's own row differs
    assert context_embedding_loss([ours], [ref], POSITIONS).item() == pytest.approx(0.0, abs=1e-6)
    ours[:, 2] = 100.0  # the placeholder's output does not count
    assert context_embedding_loss([ours], [ref], POSITIONS).item() == pytest.approx(0.0, abs=1e-6)


def test_the_embedding_loss_is_one_minus_the_mean_per_token_cosine_over_the_encoders():
    gen = torch.Generator().manual_seed(1)
    ours = [torch.randn(1, 7, 16, generator=gen), torch.randn(1, 7, 32, generator=gen)]
    ref = [torch.randn(1, 8, 16, generator=gen), torch.randn(1, 8, 32, generator=gen)]
    direct = []
    for a, b in zip(ours, ref, strict=True):
        cos = [torch.dot(a[0, i], b[0, j]) / (a[0, i].norm() * b[0, j].norm())
               for i, j in zip(POSITIONS.prompt.tolist(), POSITIONS.reference.tolist(), strict=True)]
        direct.append(1 - sum(cos) / len(cos))
    expected = sum(direct) / 2
    assert context_embedding_loss(ours, ref, POSITIONS).item() == pytest.approx(float(expected), rel=1e-5)


def test_identical_attention_gives_zero_attention_loss_and_the_formula_otherwise():
    gen = torch.Generator().manual_seed(2)
    ref = [torch.rand(3, 8, generator=gen) for _ in range(2)]
    ours = [torch.rand(3, 7, generator=gen) for _ in range(2)]
    for a, b in zip(ours, ref, strict=True):
        a[:, POSITIONS.prompt] = b[:, POSITIONS.reference]
    assert context_attention_loss(ours, ref, POSITIONS).item() == 0.0
    ours = [torch.rand(3, 7, generator=gen) for _ in range(2)]
    per_layer = []
    for a, b in zip(ours, ref, strict=True):  # MSE over the context tokens per sample, summed over the batch
        per_layer.append(sum(((a[s, POSITIONS.prompt] - b[s, POSITIONS.reference]) ** 2).mean() for s in range(3)))
    expected = sum(per_layer) / 2  # averaged over the layers
    assert context_attention_loss(ours, ref, POSITIONS).item() == pytest.approx(float(expected), rel=1e-6)


# --- on the tiny model --------------------------------------------------------------------------------------
def test_the_recorded_attention_is_a_distribution_over_tokens_from_every_cross_attention_layer(
        tiny_sd, subject_images, tmp_path):
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "core")
    backbone, inputs = trainer.backbone, _inputs(trainer)
    cond = backbone.encode_prompts(["a dog in the desert"] * 2)
    noisy, timesteps, _ = backbone.objective.prepare(inputs.latents, inputs.noise, inputs.timesteps)
    with torch.no_grad(), recorded_attention(backbone.denoiser) as maps:
        backbone.predict(noisy, timesteps, cond, inputs.time_ids)
    assert len(maps) == len(cross_attention_layers(backbone.denoiser)) > 0
    for m in maps:
        assert m.shape == (2, backbone.slots[0].text_length)
        torch.testing.assert_close(m.sum(dim=-1), torch.ones(2))
    with torch.no_grad():  # nothing is recorded outside a block
        backbone.predict(noisy, timesteps, cond, inputs.time_ids)
    assert len(maps) == len(cross_attention_layers(backbone.denoiser))


def test_a_token_equal_to_its_class_word_gives_zero_terms_and_the_gradient_reaches_only_its_rows(
        tiny_sd, subject_images, tmp_path):
    """CoRe starts from the class word's row (a one-token initializer), so before any step the regularization
    prompt encodes exactly as its reference: both terms are zero. Moved off it, both are positive and their
    gradient reaches the new rows and nothing else of the model."""
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "core", initializer="dog")
    unit = trainer.unit
    assert unit.extra_loss(_inputs(trainer)).item() == pytest.approx(0.0, abs=1e-6)
    rows = trainer.layers["clip_l"].rows
    with torch.no_grad():
        rows.add_(0.05 * torch.randn(rows.shape, generator=torch.Generator().manual_seed(0)))
    for weights in ({"context_attention_weight": 0.0}, {"context_embedding_weight": 0.0}):
        unit.hp = {**trainer.hp, **weights}
        rows.grad = None
        loss = unit.extra_loss(_inputs(trainer))
        assert loss.item() > 0
        loss.backward()
        assert rows.grad is not None and rows.grad.abs().sum() > 0
        others = [name for name, p in trainer.backbone.pipe.components["unet"].named_parameters()
                  if p.grad is not None]
        others += [name for name, p in trainer.backbone.slots[0].encoder.named_parameters()
                   if p.grad is not None and p is not rows]
        assert others == []


def test_core_holds_the_norm_over_its_window_and_lets_it_go_after(tiny_sd, subject_images, tmp_path):
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "core", steps=5, rescale_from=1, rescale_until=3,
                       lr=0.05)
    norms = []
    for _ in range(5):
        trainer.train_step()
        norms.append(trainer.layers["clip_l"].rows.detach().norm().item())
    assert norms[1] == pytest.approx(norms[0], rel=1e-6) and norms[2] == pytest.approx(norms[0], rel=1e-6)
    assert abs(norms[3] - norms[0]) > 1e-4  # free again after step 3 (and before: step 1 moved it)


def test_dti_with_core_keeps_its_norm_m_and_trains_with_the_regularizers(tiny_sd, subject_images, tmp_path):
    trainer = _trainer(tiny_sd, subject_images, tmp_path, "dti_core", initializer="dog")
    layer = trainer.layers["clip_l"]
    before = layer.embedding_rows().detach().clone()
    inputs = _inputs(trainer)
    assert trainer.unit.extra_loss(inputs).item() > 0  # m * v differs from the class word's row
    trainer.train_step()
    after = layer.embedding_rows().detach()
    assert not torch.equal(before, after)
    torch.testing.assert_close(after.norm(dim=-1), before.norm(dim=-1))


def test_core_on_sdxl_regularizes_both_text_encoders(tiny_sdxl, subject_images, tmp_path):
    trainer = _trainer(tiny_sdxl, subject_images, tmp_path, "core", initializer="dog")
    cond = trainer.backbone.encode_prompts(["a dog"])
    features = trainer.backbone.token_features(cond)
    assert [f.shape[-1] for f in features] == [s.encoder.config.hidden_size for s in trainer.backbone.slots]
    torch.testing.assert_close(torch.cat(features, dim=-1), cond["hidden"])
    record = trainer.train_step()
    assert set(record["grad_norm"]) == {"clip_l", "clip_g"}
    assert all(g[0] > 0 for g in record["grad_norm"].values())


@pytest.mark.parametrize("method", ["core", "dti_core"])
@pytest.mark.parametrize("family", ["sana", "wan"])
def test_core_is_refused_on_families_its_formulas_do_not_cover(method, family):
    with pytest.raises(DtiError, match=rf"backbones.big: method {method!r} runs on sd, sdxl backbones only, "
                                       rf"not {family}: CoRe regularizes CLIP"):
        get_method(method).check_family(family, "backbones.big")
    get_method(method).check_family("sdxl", "backbones.big")  # no error


def test_planning_refuses_core_on_a_sana_backbone_and_accepts_it_on_sdxl_alone():
    from test_paper_config import load, planned

    config = load("paper.yaml")
    config["methods"]["core"] = {}
    with pytest.raises(DtiError, match=r"backbones.sana: method 'core' runs on sd, sdxl backbones only"):
        planned(config)
    config["only_backbones"] = ["sdxl"]
    assert planned(config)


def test_a_backbone_leaves_core_out_with_only_methods_and_the_others_still_run_it():
    from test_paper_config import load, planned

    from dti.benchmark_config import backbone_methods

    config = load("paper.yaml")
    config["methods"]["core"] = {}
    with pytest.raises(DtiError, match=r"list the methods sana runs in backbones.sana.only_methods"):
        planned(config)
    for name in ("sana", "wan"):
        config["backbones"][name]["only_methods"] = [m for m in config["methods"] if m != "core"]
    assert planned(config)
    assert "core" in backbone_methods(config, "sdxl")
    assert "core" not in backbone_methods(config, "sana")
    assert list(backbone_methods(config, "wan")) == [m for m in config["methods"] if m != "core"]


def test_training_refuses_core_on_sana_before_any_work(tiny_sana, subject_images, tmp_path):
    with pytest.raises(DtiError, match="training core: method 'core' runs on sd, sdxl backbones only, not sana"):
        _trainer(tiny_sana, subject_images, tmp_path / "run", "core")
    assert not (tmp_path / "run").exists()
