"""Exported files load with diffusers' own loader and reproduce training; sampling is batch-independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fast_settings, fresh_backbone, vocab_mean_norm
from PIL import Image
from safetensors.torch import load_file, save_file

import dti
from dti.errors import DtiError
from dti.export import load_diffusers, read_metadata, save_diffusers, save_single_file
from dti.methods import METHODS
from dti.sample import SampleJob, SampleSettings, generate, load_learned_token
from dti.train import train

PROMPT = "a photo of {} on a beach"
SD_RUN = dict(initializer="stuffed animal", kappa=0.002)  # two vectors per encoder, a non-default kappa


def _fresh_pipeline(family, model):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sd":
        return StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None,
                                                       requires_safety_checker=False)
    return StableDiffusionXLPipeline.from_pretrained(str(model))


@torch.no_grad()
def _training_time_conditioning(run) -> dict[str, torch.Tensor]:
    """What the trained backbone conditions on: all k placeholder tokens written out, as in training."""
    tokens = " ".join(run.run["tokens"]["clip_l"])
    return run.backbone.encode_prompts([PROMPT.format(tokens)])


def test_sd_file_loads_with_load_textual_inversion_and_reproduces_training(tiny_sd, trained_run):
    run = trained_run("sd", "dti", **SD_RUN)
    assert run.run["tokens"]["clip_l"] == ["<subject>", "<subject>_1"]
    pipe = _fresh_pipeline("sd", tiny_sd)
    # One call; the token comes from the file's key. encode_prompt expands <subject> to all k tokens.
    pipe.load_textual_inversion(str(run.out_dir / "learned_embeds.safetensors"))
    with torch.no_grad():
        loaded, _ = pipe.encode_prompt(PROMPT.format("<subject>"), "cpu", 1, False)
        baseline, _ = pipe.encode_prompt(PROMPT.format("stuffed animal"), "cpu", 1, False)
    expected = _training_time_conditioning(run)["hidden"]
    torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(loaded, baseline, atol=1e-4)  # the learned rows matter to the output


def _assert_sdxl_conditions_as_in_training(pipe, run):
    """The SDXL pipeline's prompt embeddings (hidden states and pooled) with the loaded token equal the
    conditioning the training run computed."""
    with torch.no_grad():
        hidden, _, pooled, _ = pipe.encode_prompt(PROMPT.format("<subject>"), device="cpu",
                                                  do_classifier_free_guidance=False)
    expected = _training_time_conditioning(run)
    torch.testing.assert_close(hidden, expected["hidden"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(pooled, expected["pooled"], atol=1e-6, rtol=1e-5)


def test_sdxl_files_load_per_encoder_and_reproduce_training(tiny_sdxl, trained_run):
    run = trained_run("sdxl", "dti")
    pipe = _fresh_pipeline("sdxl", tiny_sdxl)
    pipe.load_textual_inversion(str(run.out_dir / "learned_embeds.safetensors"), token="<subject>",
                                text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(str(run.out_dir / "learned_embeds_2.safetensors"), token="<subject>",
                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    _assert_sdxl_conditions_as_in_training(pipe, run)
    # Each encoder got its own rows (different tables, different m).
    rows_l = load_file(str(run.out_dir / "learned_embeds.safetensors"))["<subject>"]
    rows_g = load_file(str(run.out_dir / "learned_embeds_2.safetensors"))["<subject>"]
    for encoder, tokenizer, rows in ((pipe.text_encoder, pipe.tokenizer, rows_l),
                                     (pipe.text_encoder_2, pipe.tokenizer_2, rows_g)):
        token_id = tokenizer.convert_tokens_to_ids("<subject>")
        assert torch.equal(encoder.get_input_embeddings().weight[token_id], rows[0])
    assert not torch.equal(rows_l, rows_g)


def test_sdxl_single_file_loads_in_diffusers_as_the_readme_says(tiny_sdxl, trained_run):
    """The README's recipe: one file, its clip_l rows into the first encoder and clip_g into the second."""
    run = trained_run("sdxl", "dti")
    pipe = _fresh_pipeline("sdxl", tiny_sdxl)
    state_dict = load_file(str(run.out_dir / "dti-subject.safetensors"))
    pipe.load_textual_inversion(state_dict["clip_l"], token="<subject>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state_dict["clip_g"], token="<subject>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    _assert_sdxl_conditions_as_in_training(pipe, run)


def test_a_capitalized_placeholder_gets_every_vector_in_diffusers(tiny_sd, subject_images, tmp_path):
    """CLIP tokenizers lower-case prompts, and diffusers expands a multi-vector token into its k tokens only
    where the prompt's tokens equal the file's key: so the placeholder is stored, and loaded, in lower case."""
    settings = fast_settings(placeholder="<Bear>", initializer="stuffed animal", steps=1, save_every=1)
    out = tmp_path / "bear"
    run = train(fresh_backbone(tiny_sd), subject_images, settings, out, progress=False)
    assert run["tokens"]["clip_l"] == ["<bear>", "<bear>_1"] and (out / "dti-bear.safetensors").is_file()
    rows = load_file(str(out / "learned_embeds.safetensors"))["<bear>"]
    pipe = _fresh_pipeline("sd", tiny_sd)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    assert pipe.maybe_convert_prompt("a <bear> toy", pipe.tokenizer) == "a <bear> <bear>_1 toy"
    # The failure this avoids: a key with capitals gets its first vector only.
    control = _fresh_pipeline("sd", tiny_sd)
    control.load_textual_inversion({"<Bear>": rows}, token="<Bear>")
    assert control.maybe_convert_prompt("a <Bear> toy", control.tokenizer) == "a <Bear> toy"
    # A file from another tool whose key has capitals: dti loads it in lower case, every vector used.
    other = tmp_path / "other"
    other.mkdir()
    save_file({"<Bear>": rows}, str(other / "learned_embeds.safetensors"))
    backbone = fresh_backbone(tiny_sd)
    token = load_learned_token(backbone, other)
    assert token == "<bear>"
    expanded = backbone.pipe.maybe_convert_prompt(f"a {token} toy", backbone.pipe.tokenizer)
    assert expanded == "a <bear> <bear>_1 toy"


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_single_file_export_shapes_and_provenance(tiny_models, trained_run, family):
    run = trained_run(family, "dti", **(SD_RUN if family == "sd" else {}))
    path = run.out_dir / "dti-subject.safetensors"  # {method}-{the placeholder without <>}
    tensors = load_file(str(path))
    k = len(run.run["tokens"]["clip_l"])
    first = load_file(str(run.out_dir / "learned_embeds.safetensors"))["<subject>"]
    if family == "sd":
        assert set(tensors) == {"emb_params"} and tensors["emb_params"].shape == (k, 32)
        assert torch.equal(tensors["emb_params"], first)
    else:
        second = load_file(str(run.out_dir / "learned_embeds_2.safetensors"))["<subject>"]
        assert set(tensors) == {"clip_l", "clip_g"}
        assert tensors["clip_l"].shape == tensors["clip_g"].shape == (k, 32)
        assert torch.equal(tensors["clip_l"], first) and torch.equal(tensors["clip_g"], second)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    meta = read_metadata(path)
    assert meta["format"] == "pt"
    assert meta["dti.method"] == "dti"
    assert meta["dti.base_model"] == tiny_models[family].name  # the folder's name, never this machine's path
    assert int(meta["dti.steps"]) == run.settings.steps
    assert meta["dti.code_version"] == dti.__version__
    kappa = run.settings.hyper_parameters.get("kappa", METHODS["dti"].defaults["kappa"])
    assert float(meta["dti.kappa"]) == kappa
    for slot in ("clip_l", "clip_g")[: 1 if family == "sd" else 2]:
        m = vocab_mean_norm(tiny_models[family], slot)
        assert float(meta[f"dti.magnitude.{slot}"]) == pytest.approx(m, rel=1e-6)
    # The diffusers files carry the same provenance.
    diffusers_meta = read_metadata(run.out_dir / "learned_embeds.safetensors")
    assert diffusers_meta["format"] == "pt" and diffusers_meta["dti.method"] == "dti"
    assert diffusers_meta["dti.slot"] == "clip_l"


def test_single_file_bytes_depend_only_on_content(tmp_path):
    """safetensors writes metadata from a hash map; equal inputs must still give equal bytes."""
    vectors = {"clip_l": torch.arange(6.0).reshape(2, 3), "clip_g": torch.ones(2, 4)}
    meta = {f"dti.key{i}": i for i in range(10)}
    for name in ("a", "b", "c"):
        save_single_file(tmp_path / f"{name}.safetensors", vectors, meta)
    blobs = {(tmp_path / f"{name}.safetensors").read_bytes() for name in "abc"}
    assert len(blobs) == 1


def test_missing_embedding_file_is_named(tmp_path):
    save_diffusers(tmp_path, "<subject>", {"clip_l": torch.ones(1, 4)}, {})
    with pytest.raises(DtiError, match="learned_embeds_2.safetensors"):  # the second encoder's file
        load_diffusers(tmp_path, ["clip_l", "clip_g"])


# --- sampling --------------------------------------------------------------------------------------------


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_batched_sampling_equals_one_at_a_time(tiny_sd, trained_run, tmp_path):
    run = trained_run("sd", "dti", **SD_RUN)
    backbone = fresh_backbone(tiny_sd)
    placeholder = load_learned_token(backbone, run.out_dir)
    assert placeholder == "<subject>"
    specs = [(PROMPT, 0), (PROMPT, 1), ("a {} in the snow", 0)]
    settings = dict(steps=3, guidance_scale=5.0, resolution=64)
    for name, batch in (("batched", 3), ("single", 1)):
        jobs = [SampleJob(prompt.format(placeholder), seed, tmp_path / name / f"{i}.png")
                for i, (prompt, seed) in enumerate(specs)]
        generate(backbone, jobs, SampleSettings(batch_size=batch, **settings), progress=False)
    images = {(name, i): _pixels(tmp_path / name / f"{i}.png")
              for name in ("batched", "single") for i in range(3)}
    assert images["batched", 0].shape == (64, 64, 3)
    for i in range(3):
        # Batched convolutions may round differently: allow one 8-bit level, nothing more.
        assert np.abs(images["batched", i] - images["single", i]).max() <= 1, f"image {i}"
    # Controls: the seed and the prompt each change the picture.
    assert np.abs(images["single", 0] - images["single", 1]).max() > 10
    assert np.abs(images["single", 0] - images["single", 2]).max() > 10


def test_ti_rescaled_loads_rows_with_norm_m(tiny_sdxl, trained_run):
    run = trained_run("sdxl", "ti")
    backbone = fresh_backbone(tiny_sdxl)
    load_learned_token(backbone, run.out_dir, rescale_to="mean")
    for slot, file in (("clip_l", "learned_embeds.safetensors"), ("clip_g", "learned_embeds_2.safetensors")):
        saved = load_file(str(run.out_dir / file))["<subject>"][0]
        m = vocab_mean_norm(tiny_sdxl, slot)
        assert abs(saved.norm().item() - m) / m > 0.01  # TI's own norm is not m already
        encoder = next(s for s in backbone.slots if s.name == slot)
        token_id = encoder.tokenizer.convert_tokens_to_ids("<subject>")
        loaded = encoder.encoder.get_input_embeddings().weight[token_id].detach()
        assert loaded.norm().item() == pytest.approx(m, rel=1e-5)
        torch.testing.assert_close(loaded / loaded.norm(), saved / saved.norm(), atol=1e-6, rtol=0)


def test_plain_load_keeps_ti_rows(tiny_sd, trained_run):
    run = trained_run("sd", "ti")
    backbone = fresh_backbone(tiny_sd)
    load_learned_token(backbone, run.out_dir)
    slot = backbone.slots[0]
    loaded = slot.encoder.get_input_embeddings().weight[slot.tokenizer.convert_tokens_to_ids("<subject>")]
    assert torch.equal(loaded, load_file(str(run.out_dir / "learned_embeds.safetensors"))["<subject>"][0])
