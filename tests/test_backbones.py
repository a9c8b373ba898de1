"""Every family behind the one registry: what is derived from it, each family's training conditioning
against its own diffusers pipeline, the flow-matching and v-prediction objectives, SANA's scaled token
table, Wan's one-frame latents, the learned rows reloaded into fresh pipelines, and the full-size
architectures for GPU timing."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import FAMILIES, SLOTS, fast_settings, fresh_backbone
from PIL import Image
from safetensors.torch import load_file
from workflow_run import REPO

from dti.backbones.base import SWITCHES, detect_family
from dti.backbones.catalog import backbone_class
from dti.errors import DtiError
from dti.export import read_metadata
from dti.families import FAMILIES as REGISTRY
from dti.families import family_names
from dti.latents import resize_shorter_side, to_tensor
from dti.sample import SampleJob, SampleSettings, generate, install_learned_token
from dti.speedups import Speedups
from dti.tokens import contextual_init, install_rows
from dti.train import Trainer, sample_generator

PROMPT = "a photo of {} on a beach"
# Upper case, doubled and trailing spaces: what SANA's and Wan's pipelines normalise before tokenizing.
RAW_PROMPTS = ["a photo of a dog on a beach", "A  Dog in the SNOW "]


# --- the registry -----------------------------------------------------------------------------------------
def test_each_family_is_its_registered_pipeline_class(tiny_models):
    for family, folder in tiny_models.items():
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == REGISTRY[family].pipeline
        assert detect_family(str(folder)) == family
        cls = backbone_class(family)
        assert (cls.family, cls.pipeline_class) == (family, index["_class_name"])
        # Each slot's components exist in the saved folder under the names the registry gives them.
        for slot in REGISTRY[family].slots:
            assert index[slot.encoder][0] == "transformers" and index[slot.tokenizer][0] == "transformers"


def test_registry_and_base_import_no_family_module_and_no_torch():
    code = ("import sys, dti.families, dti.model_files, dti.benchmark_config; "
            "print('torch' in sys.modules); import dti.backbones.base; "
            "print(sorted(m for m in sys.modules if m.startswith('dti.backbones.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False"  # planning stays torch-free
    assert out[1] == str(["dti.backbones.base", "dti.backbones.objectives"])


def test_cli_and_schema_take_families_from_the_registry():
    from dti.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("tiny-model", "train", "sample"):
        (family,) = [a for a in subparsers[command]._actions if a.dest == "family"]
        assert family.choices == family_names()
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    family_schema = schema["properties"]["backbones"]["additionalProperties"]["properties"]["family"]
    assert "enum" not in family_schema  # one list of families: the registry, checked while planning


def test_a_wan_2_2_folder_is_refused_naming_it(tiny_wan, tmp_path):
    from dti.backbones.catalog import load_backbone

    folder = tmp_path / "wan22"
    shutil.copytree(tiny_wan, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "boundary_ratio": 0.875}))  # two experts
    with pytest.raises(DtiError, match=r"is a Wan 2.2 pipeline .*dti trains Wan 2.1"):
        load_backbone(str(folder))


# --- conditioning as the pipelines compute it -------------------------------------------------------------
def _pipeline_conditioning(pipe, family: str, prompts: list[str]) -> dict[str, torch.Tensor]:
    if family == "sana":  # training leaves out the complex human instruction
        hidden, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device="cpu",
                                                complex_human_instruction=None)
        return {"hidden": hidden, "mask": mask}
    # 512: what WanPipeline.__call__ passes (encode_prompt's own default is 226).
    hidden, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device="cpu", max_sequence_length=512)
    return {"hidden": hidden}


@pytest.mark.parametrize("family,length", [("sana", 300), ("wan", 512)])
def test_training_conditioning_is_the_pipelines(tiny_models, family, length):
    backbone = fresh_backbone(tiny_models[family])
    with torch.no_grad():
        ours = backbone.encode_prompts(RAW_PROMPTS)
        theirs = _pipeline_conditioning(backbone.pipe, family, RAW_PROMPTS)
    assert ours["hidden"].shape[:2] == (2, length)
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6)
    if family == "wan":  # the states past the prompt are zeros, not the padding's states
        assert torch.count_nonzero(ours["hidden"][:, -1]) == 0


@pytest.mark.parametrize("family", ["sana", "wan"])
def test_learned_file_installs_into_a_fresh_pipeline_and_reproduces_training(tiny_models, trained_run, family):
    run = trained_run(family, "dti", initializer="stuffed animal")
    (slot,) = SLOTS[family]
    tokens = run.run["tokens"][slot]
    assert tokens == ["<subject>", "<subject>_1"]
    # The file: one float32 tensor {placeholder: [k, width]}, with the family in its provenance.
    tensors = load_file(str(run.out_dir / "learned_embeds.safetensors"))
    assert list(tensors) == ["<subject>"] and tensors["<subject>"].dtype == torch.float32
    assert tensors["<subject>"].shape == (2, run.backbone.slots[0].encoder.get_input_embeddings().embedding_dim)
    assert read_metadata(run.out_dir / "learned_embeds.safetensors")["dti.family"] == family

    import diffusers

    pipe = getattr(diffusers, REGISTRY[family].pipeline).from_pretrained(str(tiny_models[family]))
    text = install_learned_token(pipe, run.out_dir)
    assert text == "".join(tokens)  # written without spaces, as the authors and training write them
    with torch.no_grad():
        loaded = _pipeline_conditioning(pipe, family, [PROMPT.format(text)])["hidden"]
        trained = run.backbone.encode_prompts([PROMPT.format(text)])["hidden"]
        baseline = _pipeline_conditioning(pipe, family, [PROMPT.format("stuffed animal")])["hidden"]
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loaded, baseline, atol=1e-4)  # the learned rows matter to the output


def test_two_learned_tokens_share_one_sana_pipeline(tiny_sana, trained_run):
    first = trained_run("sana", "dti")
    second = trained_run("sana", "ti")
    backbone = fresh_backbone(tiny_sana)
    slot = backbone.slots[0]
    rows = {}
    for name, run in (("<a>", first), ("<b>", second)):
        rows[name] = load_file(str(run.out_dir / "learned_embeds.safetensors"))["<subject>"]
        install_rows(slot.tokenizer, slot.encoder, name, rows[name])
    ids = slot.tokenizer.convert_tokens_to_ids(["<a>", "<b>"])
    with torch.no_grad():
        looked_up = slot.encoder.get_input_embeddings()(torch.tensor([ids]))[0]
    scale = math.sqrt(slot.encoder.config.hidden_size)
    torch.testing.assert_close(looked_up, torch.cat([rows["<a>"], rows["<b>"]]) * scale)


def test_sana_scales_placeholder_rows_like_vocabulary_rows(tiny_sana):
    """Gemma multiplies looked-up rows by sqrt(hidden size); a placeholder row equal to a vocabulary row must
    enter the model equal to it, and m is the norm of the table's (unscaled) rows."""
    slot = fresh_backbone(tiny_sana).slots[0]
    table = slot.encoder.get_input_embeddings()
    hidden = slot.encoder.config.hidden_size
    assert float(table.embed_scale) == pytest.approx(math.sqrt(hidden))
    dog = slot.tokenizer.convert_tokens_to_ids("dog")
    install_rows(slot.tokenizer, slot.encoder, "<copy>", table.weight[dog : dog + 1])
    copy_id = slot.tokenizer.convert_tokens_to_ids("<copy>")
    with torch.no_grad():
        out = slot.encoder.get_input_embeddings()(torch.tensor([[dog, copy_id]]))
    assert torch.equal(out[0, 0], out[0, 1])
    torch.testing.assert_close(out[0, 1], table.weight[dog] * math.sqrt(hidden))


@pytest.mark.parametrize("family,start", [("sana", 1), ("wan", 0)])  # Gemma puts <bos> first, T5 nothing
def test_crossinit_reads_the_encoder_at_the_initializer_positions(tiny_models, family, start):
    """The phrase encoded alone, padded to the prompts' length with the attention mask: its states equal
    those of the unpadded phrase (UMT5 attends both ways, so without the mask the padding would leak in)."""
    slot = fresh_backbone(tiny_models[family]).slots[0]
    init = contextual_init(slot.encoder, slot.tokenizer, "stuffed animal", "cpu", slot.text_length)
    ids = slot.tokenizer("stuffed animal", return_tensors="pt").input_ids
    with torch.no_grad():
        alone = slot.encoder(ids).last_hidden_state[0, start : start + 2]
        padded = slot.tokenizer(["stuffed animal"], padding="max_length", max_length=slot.text_length,
                                return_tensors="pt").input_ids
        unmasked = slot.encoder(padded).last_hidden_state[0, start : start + 2]
    assert init.shape == alone.shape == (2, slot.encoder.config.hidden_size)
    torch.testing.assert_close(init, alone, atol=1e-5, rtol=1e-5)
    if family == "wan":
        assert not torch.allclose(unmasked, alone, atol=1e-4)  # the mask matters here


def test_sana_trains_a_capitalised_placeholder_as_its_pipeline_reads_it(tiny_sana, subject_images, tmp_path):
    """SanaPipeline lower-cases every prompt; placeholders are stored in lower case (dti.tokens), so "<Bear>"
    is the token "<bear>" in training, in the files and in prompts."""
    trainer = Trainer(fresh_backbone(tiny_sana), subject_images, fast_settings(placeholder="<Bear>"), tmp_path)
    assert trainer.prompt_token == "<bear>"
    with pytest.raises(DtiError, match="lower case"):  # the family's own check still guards the text
        trainer.backbone.check_placeholder("<Bear>")


# --- objectives -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sana", "wan"])
def test_flow_matching_loss_and_uniform_timesteps(tiny_models, subject_images, tmp_path, family):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    trainer = Trainer(fresh_backbone(tiny_models[family]), subject_images, fast_settings(), tmp_path)
    backbone = trainer.backbone
    prompts, latents, noise, steps, time_ids = trainer._micro_batch(1, range(2))
    # The schedule as the authors load it for training: a flow-matching Euler scheduler from the folder.
    schedule = FlowMatchEulerDiscreteScheduler.from_pretrained(str(tiny_models[family]), subfolder="scheduler")
    sigma = schedule.sigmas[steps].view(-1, *([1] * (latents.dim() - 1)))
    with torch.no_grad():
        cond = backbone.encode_prompts(prompts)
        loss = backbone.denoising_loss(latents, cond, noise, steps)
        pred = backbone.predict((1 - sigma) * latents + sigma * noise, schedule.timesteps[steps], cond, None)
    assert loss.item() == pytest.approx(F.mse_loss(pred, noise - latents).item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.mse_loss(pred, noise).item(), rel=1e-3)  # not an epsilon target
    # The timestep is diffusers' density with weighting "none", drawn from the sample's own generator.
    n = schedule.config.num_train_timesteps
    u = compute_density_for_timestep_sampling("none", 1, generator=sample_generator(0, 7, 1))
    assert backbone.sample_timestep(sample_generator(0, 7, 1)) == int((u * n).long())
    draws = np.array([backbone.sample_timestep(sample_generator(0, step, 0)) for step in range(4000)])
    standard_error = math.sqrt((n**2 - 1) / 12 / len(draws))
    assert abs(draws.mean() - (n - 1) / 2) < 4 * standard_error  # uniform over 0..n-1
    assert draws.min() < n * 0.01 and draws.max() > n * 0.99


def _pixels(image) -> torch.Tensor:
    return to_tensor(resize_shorter_side(image, 64))[:, :64, :64]


def test_wan_trains_on_one_frame_latents_at_the_mode(tiny_wan, subject_images, tmp_path):
    trainer = Trainer(fresh_backbone(tiny_wan), subject_images, fast_settings(), tmp_path)
    vae = trainer.backbone.vae
    assert trainer.latents.shape == (vae.config.z_dim, 1, 8, 8)  # channels, one frame, 64 px / 8
    crop = trainer.latents.random_crop(sample_generator(0, 1, 0), len(subject_images))
    pixels = to_tensor(resize_shorter_side(subject_images[crop.image], 64))
    with torch.no_grad():
        mode = vae.encode(pixels[None, :, None]).latent_dist.mode()[0]
    mean = torch.tensor(vae.config.latents_mean).view(-1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(-1, 1, 1, 1)
    window = mode[..., crop.top : crop.top + 8, crop.left : crop.left + 8]
    # The authors' recipe: the distribution's mode, no sampling noise, normalised per channel.
    sample = trainer.latents.sample(crop, torch.randn(trainer.latents.shape))
    torch.testing.assert_close(sample, (window - mean) / std, rtol=1e-5, atol=1e-5)


def test_sana_latents_are_the_dc_ae_encoding_scaled(tiny_sana, subject_images, tmp_path):
    trainer = Trainer(fresh_backbone(tiny_sana), subject_images, fast_settings(), tmp_path)
    vae = trainer.backbone.vae
    crop = trainer.latents.random_crop(sample_generator(0, 1, 0), len(subject_images))
    pixels = to_tensor(resize_shorter_side(subject_images[crop.image], 64))
    with torch.no_grad():
        latent = vae.encode(pixels[None]).latent[0]
    window = latent[:, crop.top : crop.top + 8, crop.left : crop.left + 8]
    sample = trainer.latents.sample(crop, torch.randn(trainer.latents.shape))
    torch.testing.assert_close(sample, window * vae.config.scaling_factor, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_sd_v(tiny_sd, tmp_path_factory):
    """The tiny SD model as a v-prediction checkpoint (what SD 2.1 768-v's scheduler config says)."""
    folder = tmp_path_factory.mktemp("v") / "tiny-sd-v"
    shutil.copytree(tiny_sd, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    return folder


def test_v_prediction_trains_on_the_velocity(tiny_sd_v, subject_images, tmp_path):
    from diffusers import DDPMScheduler

    trainer = Trainer(fresh_backbone(tiny_sd_v), subject_images, fast_settings(), tmp_path)
    backbone = trainer.backbone
    prompts, latents, noise, steps, time_ids = trainer._micro_batch(1, range(2))
    alphas = DDPMScheduler.from_pretrained(str(tiny_sd_v), subfolder="scheduler").alphas_cumprod[steps]
    a, s = alphas.sqrt().view(-1, 1, 1, 1), (1 - alphas).sqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        cond = backbone.encode_prompts(prompts)
        loss = backbone.denoising_loss(latents, cond, noise, steps)
        pred = backbone.predict(a * latents + s * noise, steps, cond, None)
    assert loss.item() == pytest.approx(F.mse_loss(pred, a * noise - s * latents).item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.mse_loss(pred, noise).item(), rel=1e-3)  # not the epsilon target


def test_v_prediction_samples_as_its_pipeline(tiny_sd, tiny_sd_v, tmp_path):
    jobs = {name: [SampleJob("a photo of a dog", seed, tmp_path / name / f"{seed}.png") for seed in (0, 1)]
            for name in ("v", "epsilon")}
    backbone = fresh_backbone(tiny_sd_v)
    assert backbone.pipe.scheduler.config.prediction_type == "v_prediction"
    settings = SampleSettings(steps=3, resolution=64, batch_size=2, png_workers=0)
    generate(backbone, jobs["v"], settings, progress=False)
    generate(fresh_backbone(tiny_sd), jobs["epsilon"], settings, progress=False)
    backbone.pipe.set_progress_bar_config(disable=True)
    theirs = backbone.pipe(prompt=["a photo of a dog"] * 2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                           num_inference_steps=3, guidance_scale=5.0, height=64, width=64).images
    ours = [np.asarray(Image.open(j.path), dtype=np.int16) for j in jobs["v"]]
    assert max(int(np.abs(o - np.asarray(t, dtype=np.int16)).max()) for o, t in zip(ours, theirs, strict=True)) <= 1
    other = np.asarray(Image.open(jobs["epsilon"][0].path), dtype=np.int16)
    assert np.abs(ours[0] - other).max() > 10  # the prediction type changes the sampler's arithmetic


# --- speed switches ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_defaults_never_ask_a_family_for_a_switch_it_lacks(tiny_models, family):
    backbone = fresh_backbone(tiny_models[family])
    resolved = backbone.resolve_speedups(Speedups(), device="cuda")
    assert resolved.compile  # every family names blocks to compile
    unsupported = set(SWITCHES) - backbone.speedups_supported
    assert all(getattr(resolved, name) is False for name in unsupported)
    for name in unsupported:  # asked for explicitly, it is an error that names it
        with pytest.raises(DtiError, match=f"speedups.{name}: not available for {family}"):
            backbone.resolve_speedups(Speedups(**{name: True}), device="cuda")
    assert unsupported == {"sd": set(), "sdxl": set(), "sana": {"fuse_qkv"}, "wan": {"channels_last"}}[family]


@pytest.mark.parametrize("family", ["sana", "wan"])
def test_training_with_gpu_defaults_keeps_the_loss(tiny_models, subject_images, monkeypatch, tmp_path, family):
    """A GPU job's default switches (compiled blocks; Wan's fused QKV) on the CPU, with the aot_eager
    backend as in test_speedups: the same losses and rows as without."""
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **kw: original(self, *a, **{**kw, "backend": "aot_eager"}))
    runs = {}
    for name in ("off", "gpu defaults"):
        backbone = fresh_backbone(tiny_models[family])
        speedups = Speedups(False, False, False) if name == "off" else backbone.resolve_speedups(Speedups(), "cuda")
        trainer = Trainer(backbone, subject_images, fast_settings(steps=2, speedups=speedups), tmp_path / name)
        runs[name] = ([trainer.train_step()["loss"] for _ in range(2)], trainer.vectors()[SLOTS[family][0]])
    blocks = [m for m in backbone.denoiser.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert blocks  # the named blocks were compiled
    assert runs["gpu defaults"][0] == pytest.approx(runs["off"][0], rel=1e-4)
    torch.testing.assert_close(runs["gpu defaults"][1], runs["off"][1], rtol=0, atol=1e-5)


# --- full size ----------------------------------------------------------------------------------------
# Parameters of each denoiser, as the models are named or documented: SD 1.5's UNet about 860 M, SDXL's
# 2.6 B, SANA 1.5 1.6B's transformer 1.6 B, Wan 2.1 "1.3B", whose DiT has 1.42 B with its embedders.
DENOISER_BILLIONS = {"sd": 0.86, "sdxl": 2.57, "sana": 1.6, "wan": 1.42}


@pytest.mark.parametrize("family", FAMILIES)
def test_fullsize_architectures_have_the_published_sizes(family):
    from dti.backbones.catalog import build_fullsize_pipeline

    pipe = build_fullsize_pipeline(family, device="meta")  # shapes only: no memory, no time
    assert type(pipe).__name__ == REGISTRY[family].pipeline
    denoiser = pipe.components[backbone_class(family).denoiser_name]
    assert sum(p.numel() for p in denoiser.parameters()) / 1e9 == pytest.approx(DENOISER_BILLIONS[family], rel=0.02)
    assert next(denoiser.parameters()).dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
