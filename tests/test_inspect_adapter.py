"""`dti inspect` on adapters: a LoRA (DCO) and an OFT run trained for real on the tiny SDXL, each adapter
described by kind, rank, size and update norm checked against its saved tensors (OFT's rotations as peft
itself builds them), a run folder with its token files and final adapter, and damaged weights or a folder
that is no adapter's named in one line."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import fast_settings
from safetensors.torch import load_file, save_file

from dti import __version__
from dti.adapters import ADAPTER_NAME, LORA_FILE, PEFT_WEIGHTS, load_adapter
from dti.cli import main
from dti.errors import DtiError
from dti.inspect import run_inspect


def _train(method, model, images, tmp_path_factory):
    """Two steps of `method`, a checkpoint (token files and adapter-steps-N/) at each."""
    from dti.backbones.catalog import load_backbone
    from dti.train import train

    folder = tmp_path_factory.mktemp(f"run-{method}")
    train(load_backbone(str(model)), images, fast_settings(method=method, steps=2, save_every=1), folder,
          progress=False)
    return folder


@pytest.fixture(scope="module")
def lora_run(tiny_sdxl, subject_images, tmp_path_factory):
    return _train("dco", tiny_sdxl, subject_images, tmp_path_factory)


@pytest.fixture(scope="module")
def oft_run(tiny_sdxl, subject_images, tmp_path_factory):
    return _train("oft", tiny_sdxl, subject_images, tmp_path_factory)


def _inspect(path, capsys, *flags) -> str:
    assert main(["inspect", str(path), *flags]) == 0
    return capsys.readouterr().out


def _update_norm(out: str) -> float:
    return float(re.search(r"^  update norm: (\S+) ", out, re.M).group(1))


def test_lora_adapter_is_described_from_its_tensors(lora_run, tiny_sdxl, capsys):
    folder = lora_run / "adapter"
    weights = load_file(str(folder / LORA_FILE))
    downs = {key.removesuffix("lora.down.weight"): t for key, t in weights.items() if key.endswith("lora.down.weight")}
    assert len(downs) * 2 == len(weights)  # a down and an up per layer, nothing else
    (rank,) = {down.shape[0] for down in downs.values()}
    parameters = sum(t.numel() for t in weights.values())
    update = sum((weights[stem + "lora.up.weight"].double() @ down.double()).norm() ** 2
                 for stem, down in downs.items()).sqrt().item()
    assert update > 0  # two steps moved B off zero: the comparison below is not 0 == 0
    targets = sorted({stem.split(".")[-2] for stem in downs})
    assert targets == ["to_k", "to_q", "to_v"]

    out = _inspect(folder, capsys)
    assert out.startswith(f"{folder}\n  adapter: LoRA ({LORA_FILE}), rank {rank}\n")
    assert f"  targets: to_q, to_k, to_v; {len(downs)} adapted layers, {parameters} trainable parameters\n" in out
    assert _update_norm(out) == pytest.approx(update, rel=1e-5)  # printed to 6 significant digits
    assert (f"  trained by dti: method=dco, base_model={tiny_sdxl.name}, steps=2, code_version={__version__}\n"
            in out)
    assert "pipe.load_lora_weights(FOLDER)" in out

    info = json.loads(_inspect(folder, capsys, "--json"))
    assert (info["kind"], info["rank"], info["layers"], info["parameters"]) == ("lora", rank, len(downs), parameters)
    assert info["update_norm"] == pytest.approx(update, rel=1e-6)
    assert info["metadata"]["dti.method"] == "dco" and info["metadata_problems"] == {}


def test_oft_update_norm_is_the_distance_of_peft_rotations_from_identity(oft_run, tiny_sdxl, capsys):
    from dti.backbones.catalog import load_backbone

    folder = oft_run / "adapter"
    weights = load_file(str(folder / PEFT_WEIGHTS))
    assert all(key.endswith(".oft_R.weight") for key in weights)
    (rank,) = {t.shape[0] for t in weights.values()}  # OFT's r: the number of blocks of each rotation
    parameters = sum(t.numel() for t in weights.values())
    # The rotations peft itself applies, with the saved adapter loaded on a fresh denoiser: per projection its
    # block-diagonal R (OFTLayer.get_delta_weight), the matrix the projection's input is multiplied by.
    backbone = load_backbone(str(tiny_sdxl))
    assert load_adapter(backbone, folder) == "oft"
    rotations = [module.get_delta_weight(ADAPTER_NAME).double() for module in backbone.denoiser.modules()
                 if ADAPTER_NAME in getattr(module, "oft_R", {})]
    assert len(rotations) == len(weights)
    update = sum((r - torch.eye(len(r), dtype=r.dtype)).norm() ** 2 for r in rotations).sqrt().item()
    assert update > 0

    out = _inspect(folder, capsys)
    assert out.startswith(f"{folder}\n  adapter: OFT ({PEFT_WEIGHTS}), rank {rank}\n")
    assert f"  targets: to_q, to_k, to_v; {len(weights)} adapted layers, {parameters} trainable parameters\n" in out
    assert _update_norm(out) == pytest.approx(update, rel=1e-5)
    assert (f"  trained by dti: method=oft, base_model={tiny_sdxl.name}, steps=2, code_version={__version__}\n"
            in out)
    assert "dti.adapters.load_adapter(backbone, FOLDER)" in out and "OFTConfig.from_pretrained(FOLDER)" in out


@pytest.mark.parametrize("kind", ["lora", "oft"])
def test_a_run_folder_shows_its_token_files_and_final_adapter(kind, lora_run, oft_run, capsys):
    run = lora_run if kind == "lora" else oft_run
    out = _inspect(run, capsys)
    heads = [line for line in out.splitlines() if not line.startswith(" ")]
    assert heads == [str(run / "learned_embeds.safetensors"), str(run / "learned_embeds_2.safetensors"),
                     str(run / "adapter")]
    assert ("pipe.load_lora_weights(FOLDER)" in out) == (kind == "lora")
    assert ("dti.adapters.load_adapter(backbone, FOLDER)" in out) == (kind == "oft")

    info = json.loads(_inspect(run, capsys, "--json"))
    assert [f["token"] for f in info["files"]] == ["<subject>", "<subject>"]
    assert info["adapter"] == json.loads(_inspect(run / "adapter", capsys, "--json"))
    # A checkpoint's folder is an adapter folder too, with its own step.
    step = json.loads(_inspect(run / "adapter-steps-1", capsys, "--json"))
    assert step["kind"] == kind and step["metadata"]["dti.steps"] == "1"


def test_a_run_folder_without_an_adapter_shows_its_token_files(lora_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(lora_run / "learned_embeds.safetensors", run)
    out = _inspect(run, capsys)
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [str(run / "learned_embeds.safetensors")]
    assert "update norm" not in out


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _drop_ups(path):
    save_file({k: v for k, v in load_file(str(path)).items() if not k.endswith("up.weight")}, str(path))


def _garble(path):
    path.write_text("not a safetensors file")


def _cut_a_block(path):
    tensors = load_file(str(path))
    key = next(iter(tensors))
    tensors[key] = tensors[key][:, :-1].contiguous()  # no longer a block's upper triangle
    save_file(tensors, str(path))


@pytest.mark.parametrize(("kind", "damage", "in_run"), [
    ("lora", _truncate, False), ("lora", _drop_ups, False), ("oft", _cut_a_block, False),
    ("oft", _garble, False), ("lora", _truncate, True)])
def test_damaged_adapter_fails_in_one_line_naming_the_file(kind, damage, in_run, lora_run, oft_run, tmp_path,
                                                           capsys):
    run = lora_run if kind == "lora" else oft_run
    target = tmp_path / "run"
    shutil.copytree(run / "adapter", target / "adapter")
    if in_run:
        shutil.copy(run / "learned_embeds.safetensors", target)
    weights = target / "adapter" / (LORA_FILE if kind == "lora" else PEFT_WEIGHTS)
    damage(weights)
    path = target if in_run else target / "adapter"
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dti: error: ") and str(weights) in err and err.count("\n") == 1
    with pytest.raises(DtiError, match=re.escape(str(weights))):
        run_inspect(str(path))


@pytest.mark.parametrize("contents", [[], ["adapter_config.json"], ["learned_embeds-steps-1.safetensors"]])
def test_a_folder_that_is_neither_a_run_nor_an_adapter_is_named(contents, tmp_path, capsys):
    for name in contents:
        (tmp_path / name).write_text("{}")
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: neither a run folder" in err and err.count("\n") == 1


def test_an_adapter_for_another_family_is_refused_against_a_model(lora_run, tiny_sd, capsys):
    assert main(["inspect", str(lora_run / "adapter"), "--model", str(tiny_sd)]) == 2
    err = capsys.readouterr().err
    assert str(lora_run / "adapter" / LORA_FILE) in err and "'sdxl' family" in err and err.count("\n") == 1
