"""The sampler's own decoding path and every GPU speed switch, on the tiny models in fp32 on the CPU: each
switch must take effect and leave the images as the plain path renders them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES, fresh_backbone
from PIL import Image

from dti.errors import DtiError
from dti.sample import SampleJob, SampleSettings, batches, fit_batch_size, generate
from dti.speedups import CPU_DEFAULTS, Speedups, applied_speedups, attention_backend, gpu_defaults

PROMPTS = [("a photo of a dog", 0), ("a photo of a dog", 1), ("a dog in the snow", 0), ("a dog in the snow", 3)]
BASE = dict(steps=3, guidance_scale=5.0, resolution=64, batch_size=4, png_workers=0, speedups=CPU_DEFAULTS)


def render(model, out_dir, **overrides):
    """Render PROMPTS with a fresh backbone; returns (backbone, pixels as int16 arrays)."""
    backbone = fresh_backbone(model)
    jobs = [SampleJob(p, s, out_dir / f"{i}.png") for i, (p, s) in enumerate(PROMPTS)]
    generate(backbone, jobs, SampleSettings(**{**BASE, **overrides}), progress=False)
    return backbone, [np.asarray(Image.open(j.path).convert("RGB"), dtype=np.int16) for j in jobs]


def max_difference(a, b) -> int:
    return max(int(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def plain(tiny_sd, tmp_path_factory):
    return render(tiny_sd, tmp_path_factory.mktemp("plain"))[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_our_decoding_matches_the_diffusers_pipeline(family, tiny_models, tmp_path):
    """Latents from the pipeline, decoded and converted by us, give diffusers' own PIL output (Wan's: the
    one frame of its one-frame video)."""
    _, ours = render(tiny_models[family], tmp_path)
    backbone = fresh_backbone(tiny_models[family])
    pipe = backbone.pipe
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=[p for p, _ in PROMPTS], generator=[torch.Generator().manual_seed(s) for _, s in PROMPTS],
               num_inference_steps=3, guidance_scale=5.0, height=64, width=64, output_type="pil",
               **backbone.sampling_kwargs)
    theirs = out.images if family != "wan" else [video[0] for video in out.frames]
    theirs = [np.asarray(image, dtype=np.int16) for image in theirs]
    assert max_difference(ours, theirs) <= 1  # batched decoding may round one 8-bit level apart
    assert np.mean([np.abs(a - b).mean() for a, b in zip(ours, theirs, strict=True)]) < 0.01
    assert max(int(np.abs(ours[0] - image).max()) for image in ours[1:]) > 10  # control: images differ


def test_channels_last(tiny_sd, tmp_path, plain):
    backbone, images = render(tiny_sd, tmp_path, speedups=Speedups(False, True, False))
    assert backbone.denoiser.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert backbone.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert applied_speedups(backbone.denoiser) == {"channels_last"}
    assert max_difference(images, plain) <= 1


def test_fused_qkv(tiny_sd, tmp_path, plain):
    backbone, images = render(tiny_sd, tmp_path, speedups=Speedups(False, False, True))
    processors = {type(p).__name__ for p in backbone.denoiser.attn_processors.values()}
    assert processors == {"FusedAttnProcessor2_0"}
    assert any(hasattr(m, "to_qkv") for m in backbone.denoiser.modules())
    assert max_difference(images, plain) <= 1


def test_compile_with_inductor(tiny_sd, tmp_path, plain):
    """The real compiler (inductor) on every repeated block; one batch shape, so one compilation."""
    import torch._dynamo

    torch._dynamo.reset()
    backbone, images = render(tiny_sd, tmp_path, speedups=Speedups(True, False, True))
    blocks = [m for m in backbone.denoiser.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks and all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert max_difference(images, plain) <= 1


def test_attention_backend_is_enforced(tiny_sd, tmp_path, plain):
    _, images = render(tiny_sd, tmp_path, speedups=Speedups(False, False, False, "math"))
    assert max_difference(images, plain) <= 1
    # The restriction is real: a backend the CPU lacks makes attention fail rather than fall back.
    q = torch.randn(1, 2, 8, 16)
    with attention_backend("cudnn"), pytest.raises(RuntimeError):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_png_workers_write_the_same_files(tiny_sd, tmp_path):
    render(tiny_sd, tmp_path / "inline")
    render(tiny_sd, tmp_path / "threads", png_workers=2)
    for i in range(len(PROMPTS)):
        assert (tmp_path / "inline" / f"{i}.png").read_bytes() == (tmp_path / "threads" / f"{i}.png").read_bytes()


def test_bf16_decoder_stays_close(tiny_sd, tmp_path, plain):
    backbone, images = render(tiny_sd, tmp_path, vae_dtype="bf16")
    assert backbone.vae.dtype == torch.bfloat16
    differences = [np.abs(a - b) for a, b in zip(images, plain, strict=True)]
    assert max(int(d.max()) for d in differences) > 0  # it does change the arithmetic
    assert np.mean([d.mean() for d in differences]) < 2.0  # but by rounding, not by content


def test_auto_batch_on_cpu_renders_the_same(tiny_sd, tmp_path, plain):
    _, images = render(tiny_sd, tmp_path, batch_size="auto")
    assert max_difference(images, plain) <= 1


def test_training_switches_keep_the_loss(tiny_sd, subject_images, monkeypatch, tmp_path):
    """Training with every switch on: the same losses and rows as without. The compiler backend here is
    aot_eager (tracing and autograd as inductor sees them, without code generation, which the sampling
    test above covers) to keep the CPU suite short."""
    from conftest import fast_settings

    from dti.train import Trainer

    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **kw: original(self, *a, **{**kw, "backend": "aot_eager"}))
    runs = {}
    for name, speedups in (("off", CPU_DEFAULTS), ("on", Speedups(True, True, True, "math"))):
        trainer = Trainer(fresh_backbone(tiny_sd), subject_images, fast_settings(method="dti", speedups=speedups),
                          tmp_path / name)
        losses = [trainer.train_step()["loss"] for _ in range(3)]
        runs[name] = (losses, trainer.vectors()["clip_l"])
    assert applied_speedups(trainer.backbone.denoiser) == {"compile", "channels_last", "fuse_qkv"}
    assert runs["on"][0] == pytest.approx(runs["off"][0], rel=1e-4)
    torch.testing.assert_close(runs["on"][1], runs["off"][1], rtol=0, atol=1e-5)


def test_batches_are_few_and_even():
    assert [len(b) for b in batches(164, 16)] == [15] * 10 + [14]
    assert [len(b) for b in batches(16, 16)] == [16]
    assert [len(b) for b in batches(5, 2)] == [2, 2, 1]
    assert batches(0, 4) == []
    covered = [i for b in batches(37, 8) for i in b]
    assert covered == list(range(37))


def test_fit_batch_size():
    gib = 2**30
    # 80 GiB free, 10 GiB fixed, 2 GiB per image: (0.85 * 80 - 10) / 2 = 29
    assert fit_batch_size(free_bytes=80 * gib, fixed_bytes=10 * gib, per_image_bytes=2 * gib, limit=64) == 29
    assert fit_batch_size(free_bytes=80 * gib, fixed_bytes=10 * gib, per_image_bytes=2 * gib, limit=16) == 16
    assert fit_batch_size(free_bytes=gib, fixed_bytes=10 * gib, per_image_bytes=2 * gib, limit=16) == 1


def test_switch_defaults_follow_the_device():
    assert Speedups().resolved("cpu") == CPU_DEFAULTS
    assert Speedups().resolved("cuda") == gpu_defaults()
    assert Speedups(compile=False).resolved("cuda").compile is False
    assert Speedups(channels_last=True).resolved("cpu").channels_last is True


@pytest.mark.parametrize("bad", [dict(vae_dtype="fp16"), dict(batch_size=0), dict(batch_size="many"),
                                 dict(png_workers=-1), dict(speedups={"attention": "fastest"})])
def test_bad_sample_settings_name_the_value(bad):
    with pytest.raises(DtiError) as err:
        SampleSettings(**bad)
    assert str(next(iter(bad.values()))) in str(err.value) or "fastest" in str(err.value)
