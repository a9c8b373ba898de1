"""CoRe's second stage (core_unet): a core run's token, frozen, and every weight of the denoiser fine-tuned
(dti.adapters' `full` kind), started from that run's folder (TrainSettings.start_from; docs/method.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import fast_settings, fresh_backbone
from safetensors.torch import load_file

from dti.adapters import FULL_WEIGHTS, AttachedAdapter, attached_kind, describe_adapter
from dti.errors import DtiError
from dti.inspect import run_inspect
from dti.methods import Method, get_method, register
from dti.sample import load_learned_token, load_step_adapter
from dti.speedups import Speedups
from dti.train import train


@pytest.fixture(scope="module")
def stage_two(tiny_sd, subject_images, first_stage, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(the core run, the core_unet run continuing it, the denoiser's frozen weights)."""
    start = first_stage("core_unet")["start_from"]
    backbone = fresh_backbone(tiny_sd)
    frozen = {name: t.clone() for name, t in backbone.denoiser.state_dict().items()}
    out = tmp_path_factory.mktemp("core_unet")
    train(backbone, subject_images, fast_settings(method="core_unet", start_from=start), out, progress=False)
    assert attached_kind(backbone.denoiser) is None  # taken off after training: the frozen model again
    for name, tensor in backbone.denoiser.state_dict().items():
        assert torch.equal(tensor, frozen[name]), name
    assert not any(p.requires_grad for p in backbone.denoiser.parameters())
    return Path(start), out, frozen


def test_the_second_stage_keeps_the_first_stages_token_and_trains_every_denoiser_weight(stage_two):
    core, run_dir, frozen = stage_two
    for name in ("learned_embeds.safetensors", "learned_embeds-steps-3.safetensors"):
        torch.testing.assert_close(load_file(run_dir / name)["<subject>"],
                                   load_file(core / "learned_embeds.safetensors")["<subject>"], rtol=0, atol=0)
    trained = load_file(run_dir / "adapter" / FULL_WEIGHTS)
    assert trained.keys() == frozen.keys()
    assert all(not torch.equal(trained[name], frozen[name]) for name in frozen)  # AdamW moves every weight
    run = json.loads((run_dir / "run.json").read_text())
    assert run["cost"] == {"token_parameters": 0, "adapter_parameters": sum(t.numel() for t in frozen.values()),
                           "adapter": "full", "adapter_rank": None, "peak_gpu_memory_bytes": None}
    assert run["hyper_parameters"] == {"adapter_lr": 2e-6}
    # Three AdamW steps at 2e-6: an Adam step is at most about lr in size (plus the decay lr * 0.01 * |w| and
    # fp32 rounding), so no weight moves by much more than 3 lr; a rate 100 times larger would show.
    assert max(float((trained[n] - frozen[n]).abs().max()) for n in frozen) <= 3 * 2e-6 * 1.1


def test_the_fine_tuned_denoiser_loads_in_diffusers_and_for_sampling(stage_two, tiny_sd):
    from diffusers import UNet2DConditionModel

    core, run_dir, frozen = stage_two
    folder = run_dir / "adapter"
    diffusers_unet = UNet2DConditionModel.from_pretrained(folder)  # config.json beside the weights
    trained = load_file(folder / FULL_WEIGHTS)
    for name, tensor in diffusers_unet.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    backbone = fresh_backbone(tiny_sd)
    load_learned_token(backbone, run_dir)
    assert attached_kind(backbone.denoiser).name == "full"
    assert all(torch.equal(t, trained[n]) for n, t in backbone.denoiser.state_dict().items())
    # The adapter of a run that trained none (core's) is no adapter: the frozen denoiser comes back.
    assert load_step_adapter(backbone, core, None) is None
    assert attached_kind(backbone.denoiser) is None
    assert all(torch.equal(t, frozen[n]) for n, t in backbone.denoiser.state_dict().items())


def test_inspect_describes_the_whole_denoiser(stage_two):
    _, run_dir, frozen = stage_two
    info = describe_adapter(run_dir / "adapter")
    assert info["kind"] == "full" and info["rank"] is None and info["update_norm"] is None
    assert info["parameters"] == sum(t.numel() for t in frozen.values())
    assert info["metadata"]["dti.method"] == "core_unet" and info["metadata"]["dti.adapter_targets"] == "all"
    text = run_inspect(str(run_dir / "adapter"))
    assert "adapter: the whole denoiser" in text and "UNet2DConditionModel.from_pretrained" in text
    assert "update norm: not measured" in text


def test_a_second_stage_needs_its_first_and_only_it(tiny_sd, subject_images, first_stage, tmp_path):
    with pytest.raises(DtiError, match="method 'core_unet' continues a 'core' run: give that run's folder"):
        fast_settings(method="core_unet").validate()
    with pytest.raises(DtiError, match="method 'dti' starts from its own initialization"):
        fast_settings(method="dti", start_from=str(tmp_path)).validate()
    ti_run = tmp_path / "ti"
    train(fresh_backbone(tiny_sd), subject_images, fast_settings(method="ti"), ti_run, progress=False)
    with pytest.raises(DtiError, match=rf"start_from {ti_run}: its token was trained by ti; method 'core_unet' "
                                       "continues a 'core' run"):
        train(fresh_backbone(tiny_sd), subject_images, fast_settings(method="core_unet", start_from=str(ti_run)),
              tmp_path / "wrong", progress=False)
    start = first_stage("core_unet")["start_from"]
    with pytest.raises(DtiError, match="initializer 'a dog' gives 2: train both with one initializer"):
        train(fresh_backbone(tiny_sd), subject_images,
              fast_settings(method="core_unet", start_from=start, initializer="a dog"), tmp_path / "k", progress=False)
    with pytest.raises(DtiError, match="starts from 'nothing', which is no trainable method"):
        register(Method("second", "Second", "", "dti.methods.core:CoReUNet", starts_from="nothing"))
    assert get_method("core_unet").starts_from == "core"


def test_a_full_fine_tune_has_no_frozen_reference_and_no_fused_projections(tiny_sd):
    backbone = fresh_backbone(tiny_sd)
    adapter = AttachedAdapter(backbone, "full", None)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in adapter.parameters.values())
    with pytest.raises(DtiError, match="keeps no frozen model beside it"), adapter.disabled():
        pass
    assert backbone.resolve_speedups(Speedups(), device="cuda").fuse_qkv is False
    with pytest.raises(DtiError, match="speedups.fuse_qkv: the fused projections bypass"):
        backbone.resolve_speedups(Speedups(fuse_qkv=True), device="cuda")
    adapter.remove()
    assert backbone.resolve_speedups(Speedups(fuse_qkv=True), device="cuda").fuse_qkv is True


def test_the_full_kind_trains_fp32_weights_on_a_bf16_denoiser_and_restores_bf16(tiny_sd):
    backbone = fresh_backbone(tiny_sd)
    backbone.denoiser.to(torch.bfloat16)
    frozen = {name: t.clone() for name, t in backbone.denoiser.state_dict().items()}
    adapter = AttachedAdapter(backbone, "full", None)
    assert {p.dtype for p in adapter.parameters.values()} == {torch.float32}
    with torch.no_grad():
        next(iter(adapter.parameters.values())).add_(1.0)
    adapter.remove()
    for name, tensor in backbone.denoiser.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, frozen[name]), name
