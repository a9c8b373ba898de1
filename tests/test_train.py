"""Real training runs on the tiny models of every family (CPU, 64 px, a few steps)."""

from __future__ import annotations

import pytest
import torch
from conftest import SLOTS, fast_settings, fresh_backbone, saved_token_table, vocab_mean_norm
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from dti.errors import DtiError
from dti.export import read_metadata
from dti.latents import CachedLatents, EncodeEveryStep, resize_shorter_side, to_tensor
from dti.train import Trainer, finish, sample_generator, train

DOG = 1929  # "dog</w>" in the CLIP vocabulary, the initializer of the fast recipe
EMBED_FILES = {"clip_l": "learned_embeds.safetensors", "clip_g": "learned_embeds_2.safetensors",
               "gemma2": "learned_embeds.safetensors", "umt5": "learned_embeds.safetensors"}


def _saved_rows(out_dir, slot, placeholder="<subject>") -> torch.Tensor:
    return load_file(str(out_dir / EMBED_FILES[slot]))[placeholder]


def _independent_magnitude(model, slot, magnitude) -> float:
    if magnitude == "mean":
        return vocab_mean_norm(model, slot)
    norms = saved_token_table(model, slot).double().norm(dim=-1)
    norms = norms[norms > 0]
    return {"min": norms.min().item(), "max": norms.max().item()}.get(magnitude) or float(magnitude)


# --- DTI keeps |e| = m ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family,magnitude", [("sd", "mean"), ("sdxl", "mean"), ("sana", "mean"), ("wan", "mean"),
                                              ("sd", "min"), ("sd", "max"), ("sd", "0.3")])
def test_dti_rows_stay_unit_and_saved_vectors_have_norm_m(tiny_models, subject_images, tmp_path, family,
                                                          magnitude):
    model = tiny_models[family]
    trainer = Trainer(fresh_backbone(model), subject_images, fast_settings(magnitude=magnitude), tmp_path)
    expected_m = {slot: _independent_magnitude(model, slot, magnitude) for slot in SLOTS[family]}
    start = {slot: layer.rows.detach().clone() for slot, layer in trainer.layers.items()}
    for _ in range(3):
        trainer.train_step()
        for slot, layer in trainer.layers.items():
            torch.testing.assert_close(layer.rows.detach().norm(dim=-1), torch.ones(1), atol=1e-6, rtol=0)
            norm = layer.embedding_rows().detach().double().norm(dim=-1)
            expected = torch.tensor([expected_m[slot]], dtype=torch.float64)
            torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    for slot, layer in trainer.layers.items():
        assert not torch.allclose(layer.rows.detach(), start[slot], atol=1e-4)  # the direction did train
    finish(trainer, tmp_path, 0, 0.0)
    for slot in SLOTS[family]:
        rows = _saved_rows(tmp_path, slot)
        assert rows.dtype == torch.float32 and rows.shape == (1, saved_token_table(model, slot).shape[1])
        assert rows.double().norm().item() == pytest.approx(expected_m[slot], rel=1e-6)


def test_bf16_backbone_keeps_fp32_unit_rows(tiny_sd, subject_images, tmp_path):
    from dti.backbones.catalog import load_backbone

    backbone = load_backbone(str(tiny_sd), dtype=torch.bfloat16)
    trainer = Trainer(backbone, subject_images, fast_settings(steps=2, mixed_precision="bf16"), tmp_path)
    for _ in range(2):
        trainer.train_step()
    layer = trainer.layers["clip_l"]
    assert layer.frozen.weight.dtype == torch.bfloat16 and backbone.denoiser.dtype == torch.bfloat16
    assert layer.rows.dtype == torch.float32
    assert trainer.optimizer.state[layer.rows]["sq_avg"].dtype == torch.float32
    torch.testing.assert_close(layer.rows.detach().norm(dim=-1), torch.ones(1), atol=1e-6, rtol=0)
    # m comes from the bf16 table here: equal to the fp32 statistic up to bf16 rounding.
    assert trainer.slots["clip_l"].magnitude == pytest.approx(vocab_mean_norm(tiny_sd, "clip_l"), rel=5e-3)


def test_ti_norm_moves_while_dti_norm_stays_m(tiny_sd, trained_run):
    m = vocab_mean_norm(tiny_sd, "clip_l")
    init_norm = saved_token_table(tiny_sd, "clip_l")[DOG].norm().item()
    assert abs(init_norm - m) / m > 0.01  # else the comparison below could not tell the methods apart
    ti = _saved_rows(trained_run("sd", "ti").out_dir, "clip_l").norm().item()
    dti = _saved_rows(trained_run("sd", "dti").out_dir, "clip_l").norm().item()
    assert abs(ti - init_norm) / init_norm > 0.05
    assert dti == pytest.approx(m, rel=1e-6)


# --- everything else frozen ------------------------------------------------------------------------------


def test_model_weights_and_vocabulary_stay_bit_identical(tiny_sdxl, trained_run):
    backbone = trained_run("sdxl", "ti").backbone
    reference = fresh_backbone(tiny_sdxl)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        trained = getattr(backbone.pipe, component).state_dict()
        fresh = getattr(reference.pipe, component).state_dict()
        learned = [k for k in trained if k.endswith("token_embedding.rows")]
        # The wrapped table is stored as token_embedding.frozen.weight; map it back to the stock name.
        renamed = {k.replace("token_embedding.frozen.", "token_embedding."): v for k, v in trained.items()
                   if k not in learned}
        assert renamed.keys() == fresh.keys(), component
        for key, tensor in fresh.items():
            assert torch.equal(renamed[key], tensor), f"{component}.{key} changed"
        if component.startswith("text_encoder"):
            (key,) = learned
            original_dog = fresh[key.replace("rows", "weight")][DOG]
            assert not torch.equal(trained[key][0], original_dog)  # only the placeholder row moved
    for slot in backbone.slots:
        assert slot.encoder.get_input_embeddings().weight.shape[0] == 49409


# --- CrossInit ------------------------------------------------------------------------------------------


def test_crossinit_starts_at_the_encoder_output(tiny_sd, subject_images, tmp_path):
    trainer = Trainer(fresh_backbone(tiny_sd), subject_images,
                      fast_settings(method="crossinit", initializer="stuffed animal"), tmp_path)
    encoder = CLIPTextModel.from_pretrained(str(tiny_sd / "text_encoder")).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_sd / "tokenizer"))
    ids = tokenizer("stuffed animal", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder(ids).last_hidden_state[0, 1:3]
    rows = trainer.layers["clip_l"].rows.detach()
    assert rows.shape == (2, 32)
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-5)


def test_crossinit_pull_term_is_in_the_loss(tiny_sd, subject_images, tmp_path):
    weight = 3.0
    trainer = Trainer(fresh_backbone(tiny_sd), subject_images,
                      fast_settings(method="crossinit", pull_weight=weight), tmp_path)
    layer = trainer.layers["clip_l"]
    with torch.no_grad():
        layer.rows.add_(0.05 * torch.randn(layer.rows.shape, generator=torch.Generator().manual_seed(0)))
        with_pull = trainer.loss_for(1, range(2)).item()
        trainer.hp["pull_weight"] = 0.0
        without = trainer.loss_for(1, range(2)).item()  # the same samples: the stream is keyed by step/index
    mse = ((layer.rows - trainer.init_rows["clip_l"]) ** 2).mean().item()
    assert with_pull - without == pytest.approx(weight * mse, rel=1e-4)


def test_crossinit_huge_pull_keeps_rows_near_init(tiny_sd, subject_images, tmp_path):
    distance = {}
    for pull in (0.0, 1e4):
        settings = fast_settings(method="crossinit", pull_weight=pull, weight_decay=0.0, batch_size=1)
        trainer = Trainer(fresh_backbone(tiny_sd), subject_images, settings, tmp_path)
        for _ in range(5):
            trainer.train_step()
        distance[pull] = (trainer.layers["clip_l"].rows - trainer.init_rows["clip_l"]).norm().item()
    # Not zero: AdamW's steps have length ~lr whatever the gradient scale, so the pull only shortens the walk.
    assert distance[1e4] < 0.3 * distance[0.0]


# --- the sample stream -------------------------------------------------------------------------------


def test_gradient_accumulation_equals_the_larger_batch(tiny_sd, subject_images, tmp_path):
    grads, rows = {}, {}
    for batch, accum in ((2, 1), (1, 2), (1, 1)):
        trainer = Trainer(fresh_backbone(tiny_sd), subject_images,
                          fast_settings(method="ti", batch_size=batch, grad_accum=accum), tmp_path)
        trainer.train_step()
        layer = trainer.layers["clip_l"]
        grads[batch, accum], rows[batch, accum] = layer.rows.grad.clone(), layer.rows.detach().clone()
    torch.testing.assert_close(grads[1, 2], grads[2, 1], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(rows[1, 2], rows[2, 1], rtol=1e-5, atol=1e-7)
    # Control: half the samples give a different gradient, so the comparison above can fail.
    assert not torch.allclose(grads[1, 1], grads[2, 1], rtol=1e-2, atol=1e-9)


def test_same_seed_same_files_other_seed_other_files(tiny_sdxl, subject_images, trained_run, tmp_path):
    first = trained_run("sdxl", "dti")
    dirs = {"a": first.out_dir, "b": tmp_path / "b", "c": tmp_path / "c"}
    train(fresh_backbone(tiny_sdxl), subject_images, fast_settings(), dirs["b"], progress=False)
    train(fresh_backbone(tiny_sdxl), subject_images, fast_settings(seed=first.settings.seed + 1), dirs["c"],
          progress=False)
    for file in ("learned_embeds.safetensors", "learned_embeds_2.safetensors", "dti-subject.safetensors"):
        a, b, c = (load_file(str(dirs[k] / file)) for k in "abc")
        assert a.keys() == b.keys() == c.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), file
        assert not any(torch.equal(a[k], c[k]) for k in a), file
        assert read_metadata(dirs["a"] / file) == read_metadata(dirs["b"] / file)
        # Byte-identical files (what a checksum-based pipeline sees), not just equal tensors.
        assert (dirs["a"] / file).read_bytes() == (dirs["b"] / file).read_bytes(), file


def test_sample_generator_depends_on_seed_step_and_index():
    keys = [(1, 1, 0), (1, 1, 1), (1, 2, 0), (2, 1, 0)]
    draws = {key: torch.randn(4, generator=sample_generator(*key)) for key in keys}
    assert torch.equal(draws[1, 1, 0], torch.randn(4, generator=sample_generator(1, 1, 0)))
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])


# --- latents ----------------------------------------------------------------------------------------------


class _CountingVae:
    """Forwards to the real VAE and counts encode calls."""

    def __init__(self, vae):
        self.vae, self.calls = vae, 0

    def __getattr__(self, name):
        return getattr(self.vae, name)

    def encode(self, x):
        self.calls += 1
        return self.vae.encode(x)


def test_latent_cache_matches_encoding_and_crops(tiny_sd, subject_images):
    backbone = fresh_backbone(tiny_sd)
    vae = backbone.vae
    # Non-square images (80x120 -> 64x96 at resolution 64) so crops have room to move.
    images = [img.resize((120, 80), Image.BICUBIC) for img in subject_images[:2]]
    cached_vae, every_vae = _CountingVae(vae), _CountingVae(vae)
    backbone.vae = cached_vae
    cached = CachedLatents(backbone, images, 64)
    backbone.vae = every_vae
    every = EncodeEveryStep(backbone, images, 64)
    assert cached_vae.calls == 2 and every_vae.calls == 0
    lefts = set()
    for step in range(12):
        gen_a, gen_b = sample_generator(0, step, 0), sample_generator(0, step, 0)
        crop_a, crop_b = cached.random_crop(gen_a, 2), every.random_crop(gen_b, 2)
        assert crop_a == crop_b
        expected_ids = [80, 120, 8 * crop_a.top, 8 * crop_a.left, 64, 64]
        assert cached.time_ids(crop_a) == every.time_ids(crop_b) == expected_ids
        lefts.add(crop_a.left)
        mean, std = cached.distribution(crop_a)
        assert mean.shape == std.shape == (4, 8, 8)
        every.distribution(crop_b)
    assert len(lefts) > 1 and max(lefts) <= 4  # 96 px wide = 12 cells, 8-cell crops
    assert cached_vae.calls == 2  # never re-encoded
    assert every_vae.calls == 12
    # The cached distribution is that of the whole resized image, encoded once.
    for i, img in enumerate(images):
        pixels = to_tensor(resize_shorter_side(img, 64))
        assert pixels.shape == (3, 64, 96)
        with torch.no_grad():
            dist = vae.encode(pixels.unsqueeze(0)).latent_dist
        torch.testing.assert_close(cached.cache[i][0], dist.mean[0])
        torch.testing.assert_close(cached.cache[i][1], dist.std[0])
    # A sample is (mean + std * eps) * scaling factor.
    crop = cached.random_crop(sample_generator(0, 0, 0), 2)
    eps = torch.randn(4, 8, 8)
    mean, std = cached.distribution(crop)
    torch.testing.assert_close(cached.sample(crop, eps), (mean + std * eps) * vae.config.scaling_factor)


# --- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,culprit", [(dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"),
                                               (dict(method="ti_rescaled"), "ti_rescaled"),
                                               (dict(method="nope"), "nope"),
                                               (dict(mixed_precision="fp8"), "fp8"),
                                               # the export's default name, from the placeholder, must stay a
                                               # plain file name too
                                               (dict(placeholder="<../evil>"), "'dti-../evil' must be")])
def test_bad_settings_are_dti_errors(tiny_sd, subject_images, tmp_path, overrides, culprit):
    with pytest.raises(DtiError, match=culprit):
        Trainer(fresh_backbone(tiny_sd), subject_images, fast_settings(**overrides), tmp_path)


# --- zero-pad training (the authors' SANA augmentation) ------------------------------------------------
def test_zero_pad_count_follows_the_authors_distribution():
    from dti.train import zero_pad_count

    counts = torch.tensor([zero_pad_count(sample_generator(0, step, 0)) for step in range(20000)])
    assert counts.min() == 0 and counts.max() <= 15
    # n = floor(min(X, 15)), X ~ Exponential(scale 2): P(n > 0) = exp(-1/2); E[n] = sum_k=1..15 exp(-k/2).
    assert (counts > 0).float().mean().item() == pytest.approx(0.6065, abs=0.012)
    expected_mean = sum(torch.exp(torch.tensor(-k / 2)).item() for k in range(1, 16))
    assert counts.float().mean().item() == pytest.approx(expected_mean, abs=0.04)
    for k in (1, 2, 4):  # the tail: P(n >= k) = exp(-k/2)
        assert (counts >= k).float().mean().item() == pytest.approx(torch.exp(torch.tensor(-k / 2)).item(), abs=0.012)


@pytest.mark.parametrize("family", ["sd", "sana"])
def test_zero_pad_rows_stay_zero_and_untrained_while_the_token_learns(tiny_models, subject_images, tmp_path, family,
                                                                      monkeypatch):
    from dti.token_names import ZERO_PAD

    trainer = Trainer(fresh_backbone(tiny_models[family]), subject_images, fast_settings(zero_pad=True, batch_size=4),
                      tmp_path)
    slot = trainer.backbone.slots[0]
    layer = trainer.layers[slot.name]
    pad_id = slot.tokenizer.convert_tokens_to_ids(ZERO_PAD)
    assert layer.zero_rows == 1 and pad_id == layer.first_id + layer.rows.shape[0]
    assert all(name == "rows" for name, p in layer.named_parameters() if p.requires_grad)  # the pad is no parameter

    drawn = []  # the counts the samples' generators gave, in order

    def recording(gen):
        drawn.append(real_count(gen))
        return drawn[-1]

    import dti.train

    real_count = dti.train.zero_pad_count
    monkeypatch.setattr(dti.train, "zero_pad_count", recording)
    prompts = trainer._micro_batch(1, range(4))[0]
    again = Trainer._micro_batch(trainer, 1, range(4))[0]
    assert prompts == again and drawn[:4] == drawn[4:]  # seeded per sample
    joiner = trainer.backbone.placeholder_joiner
    for n, prompt in zip(drawn, prompts, strict=False):
        assert prompt.count(ZERO_PAD) == n
        assert prompt.startswith(joiner.join([ZERO_PAD] * n + [""])) if n else not prompt.startswith(ZERO_PAD)
    padded = next(p for p in (trainer._micro_batch(step, range(4))[0] for step in range(1, 20)) for p in p if ZERO_PAD in p)
    ids = slot.tokenizer(padded, return_tensors="pt").input_ids
    assert (ids == pad_id).sum().item() == padded.count(ZERO_PAD)  # one token per pad, as written

    before = layer.rows.detach().clone()
    for _ in range(2):
        trainer.train_step()
        assert layer.rows.grad is not None and layer.rows.grad.abs().sum() > 0  # the learned rows get gradient
        looked_up = layer(torch.tensor([[pad_id]]))
        assert torch.count_nonzero(looked_up) == 0
    assert not torch.equal(layer.rows.detach(), before)
    finish(trainer, tmp_path, 0, 0.0)
    saved = load_file(str(tmp_path / "learned_embeds.safetensors"))
    assert list(saved) == ["<subject>"] and saved["<subject>"].shape[0] == layer.rows.shape[0]  # no pad exported


def test_zero_pad_off_leaves_prompts_and_the_sample_stream_alone(tiny_sd, subject_images, tmp_path):
    plain = Trainer(fresh_backbone(tiny_sd), subject_images, fast_settings(), tmp_path)
    assert plain.layers["clip_l"].zero_rows == 0
    assert not any("<zero-pad>" in p for p in plain._micro_batch(1, range(8))[0])
