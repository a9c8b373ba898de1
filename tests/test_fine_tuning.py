"""Token plus weights (docs/method.md, "Token plus weights"): the DCO loss against its formula, the frozen
reference pass against the denoiser without any adapter, fp32 adapters on a bf16 denoiser, and the saved
adapters loading in diffusers (LoRA) and with the documented peft lines (OFT) to the images dti's sampler
renders. Resume after a kill is in tests/test_robust_training.py (every registered method)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import fast_settings, fresh_backbone

from dti.adapters import ADAPTER_NAME, AttachedAdapter, adapter_dir
from dti.errors import DtiError
from dti.methods import METHODS, get_method
from dti.methods.fine_tuning import dco_loss
from dti.methods.units import StepInputs
from dti.sample import load_learned_token
from dti.train import train

REPO = Path(__file__).resolve().parents[1]
ADAPTER_METHODS = ("dco", "oft", "dti_dco", "ti_dco", "dti_oft", "ti_oft")


def test_the_adapter_methods_are_registered_with_the_authors_settings():
    for name in ADAPTER_METHODS:
        method = get_method(name)
        assert method.defaults["adapter_rank"] == 4 and method.defaults["adapter_lr"] == 5e-5, name
        assert ("dco_beta" in method.accepts) == ("dco" in name), name
        assert method.unit_class().adapter == ("lora" if "dco" in name else "oft"), name
    assert get_method("dco").defaults["dco_beta"] == 1000.0
    # The combinations keep their token method's optimizer settings (the TI ones the authors' 5e-5).
    assert get_method("dti_dco").defaults["lr"] == METHODS["dti"].defaults["lr"]
    assert get_method("ti_oft").defaults["lr"] == get_method("ti_dco").defaults["lr"] == 5e-5


@pytest.mark.parametrize("beta", [1.0, 1000.0])
def test_dco_loss_is_its_formula_on_fixed_tensors(beta):
    gen = torch.Generator().manual_seed(0)
    target, model_pred, reference_pred = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    model_mse = ((model_pred - target) ** 2).mean()
    reference_mse = ((reference_pred - target) ** 2).mean()
    d = float(model_mse) - float(reference_mse)
    expected = math.log1p(math.exp(beta * d)) if beta * d < 30 else beta * d  # -log sigmoid(-beta d)
    assert float(dco_loss(model_mse, reference_mse, beta)) == pytest.approx(expected, rel=1e-5)
    # equal errors give log 2; a model better than the reference scores below it
    assert float(dco_loss(model_mse, model_mse, beta)) == pytest.approx(math.log(2))
    assert float(dco_loss(reference_mse - 1e-3, reference_mse, beta)) < math.log(2)


def _denoiser_inputs(backbone, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([100, 700])
    cond = backbone.encode_prompts(["a photo of a dog", "a dog on a beach"])
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2) if backbone.family == "sdxl" else None
    return latents, noise, timesteps, cond, time_ids


def _perturb(adapter: AttachedAdapter, seed: int = 1) -> None:
    """Move every adapter weight off its start (LoRA's B starts at zero, OFT's rotation at the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters.values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("kind", ["lora", "oft"])
def test_the_reference_pass_is_the_denoiser_without_the_adapter(tiny_sdxl, kind):
    backbone = fresh_backbone(tiny_sdxl)
    latents, noise, timesteps, cond, time_ids = _denoiser_inputs(backbone)
    with torch.no_grad():
        base = backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)
        adapter = AttachedAdapter(backbone, kind, 4)
        _perturb(adapter)
        adapted = backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)
        with adapter.disabled():
            reference = backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)
    assert float(adapted) != float(base)  # the adapter does change the prediction
    assert float(reference) == float(base)
    adapter.remove()
    with torch.no_grad():
        assert float(backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)) == float(base)


def test_dco_methods_compare_with_the_frozen_model_on_the_same_input(tiny_sdxl, monkeypatch):
    """DirectConsistency's reference is the loss of the denoiser with no adapter, on the very batch."""
    import dti.methods.fine_tuning as fine_tuning

    backbone = fresh_backbone(tiny_sdxl)
    latents, noise, timesteps, cond, time_ids = _denoiser_inputs(backbone)
    with torch.no_grad():
        base = backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)
    unit = get_method("dco").unit_class()(dict(get_method("dco").defaults))
    adapter = unit.attach_adapter(backbone, seed=0)
    _perturb(adapter)
    seen = {}
    monkeypatch.setattr(fine_tuning, "dco_loss", lambda m, r, beta: seen.update(model=m, reference=r, beta=beta) or m)
    inputs = StepInputs(1, {}, {}, backbone, latents, noise, timesteps, time_ids, "<p>", "dog",
                        torch.Generator(), adapter)
    unit.denoising_loss(inputs, cond)
    assert float(seen["reference"]) == float(base) and seen["beta"] == 1000.0
    assert seen["model"].requires_grad and not seen["reference"].requires_grad
    assert float(seen["model"]) != float(base)
    adapter.remove()


@pytest.mark.parametrize("kind", ["lora", "oft"])
def test_adapters_train_in_fp32_on_a_bf16_denoiser(tiny_sd, kind):
    from dti.backbones.catalog import load_backbone

    backbone = load_backbone(str(tiny_sd), dtype=torch.bfloat16)
    adapter = AttachedAdapter(backbone, kind, 4)
    assert adapter.parameters and all(p.dtype == torch.float32 for p in adapter.parameters.values())
    frozen = [p for n, p in backbone.denoiser.named_parameters() if f".{ADAPTER_NAME}." not in n]
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen)
    latents, noise, timesteps, cond, _ = _denoiser_inputs(backbone)
    loss = backbone.denoising_loss(latents.bfloat16(), {k: v.bfloat16() for k, v in cond.items()},
                                   noise.bfloat16(), timesteps)
    loss.backward()
    grads = [p.grad for p in adapter.parameters.values()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    adapter.remove()


@pytest.fixture(scope="module")
def adapter_runs(tiny_sd, subject_images, tmp_path_factory):
    """Two tiny SD runs whose adapters are trained hard enough (adapter_lr 1e-2) to change every image."""
    root = tmp_path_factory.mktemp("adapter_runs")
    runs = {}
    for method in ("dti_dco", "ti_oft"):
        settings = fast_settings(method=method, steps=2, save_every=1, batch_size=1, adapter_lr=1e-2)
        train(fresh_backbone(tiny_sd), subject_images[:2], settings, root / method, progress=False)
        runs[method] = root / method
    return runs


def _render(pipe, prompt: str):
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), num_inference_steps=3, height=64,
                width=64, guidance_scale=5.0, output_type="np").images


def _diffusers_pipe(model: Path, run: Path):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(run / "learned_embeds.safetensors"))
    return pipe


def _ours(model: Path, run: Path, step=None):
    """dti's sampler: its loader puts the step's token and adapter into the pipeline; (images, prompt word)."""
    backbone = fresh_backbone(model)
    backbone.pipe.set_progress_bar_config(disable=True)
    placeholder = load_learned_token(backbone, run, step=step)
    return _render(backbone.pipe, f"a photo of {placeholder}"), placeholder


def test_the_lora_file_loads_in_diffusers_to_our_samplers_images(tiny_sd, adapter_runs):
    run = adapter_runs["dti_dco"]
    ours, placeholder = _ours(tiny_sd, run)
    pipe = _diffusers_pipe(tiny_sd, run)
    token_only = _render(pipe, f"a photo of {placeholder}")
    pipe.load_lora_weights(str(run / "adapter"))  # the user's path (docs/method.md)
    theirs = _render(pipe, f"a photo of {placeholder}")
    assert abs(ours - theirs).max() == 0
    assert abs(ours - token_only).max() > 1e-3  # the adapter is part of what was sampled


def _snippet() -> str:
    text = (REPO / "docs" / "method.md").read_text()
    match = re.search(r"<!-- oft-snippet[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/method.md lost its OFT snippet"
    return match.group(1)


def test_the_documented_oft_lines_load_to_our_samplers_images(tiny_sd, adapter_runs):
    run = adapter_runs["ti_oft"]
    ours, placeholder = _ours(tiny_sd, run)
    pipe = _diffusers_pipe(tiny_sd, run)
    token_only = _render(pipe, f"a photo of {placeholder}")
    exec(_snippet(), {"pipe": pipe, "run": str(run)})  # noqa: S102 - the docs' own lines, as a user runs them
    theirs = _render(pipe, f"a photo of {placeholder}")
    assert abs(ours - theirs).max() == 0
    assert abs(ours - token_only).max() > 1e-3


def test_each_checkpoint_samples_with_its_own_adapter(tiny_sd, adapter_runs):
    run = adapter_runs["dti_dco"]
    assert (run / adapter_dir(1)).is_dir() and (run / adapter_dir(2)).is_dir()
    first, _ = _ours(tiny_sd, run, step=1)
    last, _ = _ours(tiny_sd, run, step=2)
    final, _ = _ours(tiny_sd, run)
    assert abs(last - final).max() == 0 and abs(first - last).max() > 0


def test_a_run_without_its_adapter_is_refused_not_sampled_as_a_token(tiny_sd, adapter_runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(adapter_runs["ti_oft"], run)
    shutil.rmtree(run / "adapter")
    with pytest.raises(DtiError, match=r"adapter.*is missing: method 'ti_oft' trains an adapter"):
        load_learned_token(fresh_backbone(tiny_sd), run)


def test_a_backbone_reused_after_training_is_the_frozen_one(tiny_sd, subject_images, tmp_path):
    backbone = fresh_backbone(tiny_sd)
    latents, noise, timesteps, cond, time_ids = _denoiser_inputs(backbone)
    with torch.no_grad():
        before = backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)
    train(backbone, subject_images[:1], fast_settings(method="oft", steps=1, batch_size=1, adapter_lr=1e-2),
          tmp_path / "run", progress=False)
    assert not getattr(backbone.denoiser, "peft_config", None)
    with torch.no_grad():
        assert float(backbone.denoising_loss(latents, cond, noise, timesteps, time_ids)) == float(before)


def test_the_adapters_random_start_comes_from_its_seed(tiny_sd):
    """LoRA's A is Gaussian: drawn from the run's seed, not from whatever the process drew before."""
    backbone = fresh_backbone(tiny_sd)
    starts = []
    for seed, noise in ((3, 0), (3, 5), (4, 0)):
        torch.manual_seed(noise)
        adapter = AttachedAdapter(backbone, "lora", 4, seed)
        starts.append(torch.cat([p.detach().flatten() for p in adapter.parameters.values()]))
        adapter.remove()
    assert torch.equal(starts[0], starts[1]) and not torch.equal(starts[0], starts[2])


def test_fused_projections_are_never_used_with_an_adapter(tiny_sd):
    """diffusers' fused q/k/v would bypass the adapter's to_q/to_k/to_v: the GPU default turns off for it,
    and asking for it is refused."""
    from dti.speedups import Speedups

    backbone = fresh_backbone(tiny_sd)
    adapter = AttachedAdapter(backbone, "oft", 4)
    assert backbone.resolve_speedups(Speedups(), device="cuda").fuse_qkv is False
    with pytest.raises(DtiError, match="speedups.fuse_qkv: the fused projections bypass the adapter"):
        backbone.resolve_speedups(Speedups(fuse_qkv=True), device="cuda")
    adapter.remove()
    assert backbone.resolve_speedups(Speedups(fuse_qkv=True), device="cuda").fuse_qkv is True


def test_the_registry_and_the_units_agree_on_adapters():
    """Planning reads the registry's `adapter` (torch-free); training the unit's: they must be the same."""
    for name in (m for m, method in METHODS.items() if method.unit is not None):
        assert get_method(name).adapter == get_method(name).unit_class().adapter, name
    assert [m for m in METHODS if get_method(m).adapter in ("lora", "oft")] == list(ADAPTER_METHODS)
    assert [m for m in METHODS if get_method(m).adapter == "full"] == ["core_unet"]


def test_interpolation_leaves_out_methods_whose_token_needs_its_adapter():
    from dti.analysis.interpolation import parse_interpolation

    plan = parse_interpolation({"pairs": [{"a": "x", "b": "y"}]}, ["x", "y"], ["dti", "dti_dco", "ti_oft"])
    assert plan.pairs[0].methods == ("dti",)
    with pytest.raises(DtiError, match=r"interpolation.pairs\[0\].methods\[0\]: 'ti_oft' trains an adapter"):
        parse_interpolation({"pairs": [{"a": "x", "b": "y", "methods": ["ti_oft"]}]}, ["x", "y"], ["dti", "ti_oft"])
