"""`dti inspect`: every layout read, norms and nearest tokens against the model's own vocabulary, the
loaders each file fits, pickles refused without being opened, and bad files named in one line."""

from __future__ import annotations

import json
import math
import pickle
import zipfile

import numpy as np
import pytest
import torch
from conftest import saved_token_table, vocab_mean_norm
from safetensors.torch import save_file

from dti.cli import main
from dti.errors import DtiError
from dti.inspect import CLIENTS, inspect_file, read_embedding_file, run_inspect
from dti.vocab import load_vocabularies


def _write(path, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _row(model, slot, token_id):
    return saved_token_table(model, slot)[token_id]


def test_dti_file_sits_at_the_vocabulary_mean_next_to_its_initializer(tiny_sdxl, trained_run):
    run = trained_run("sdxl", "dti")
    info = json.loads(run_inspect(str(run.out_dir / "learned_embeds_2.safetensors"), model=str(tiny_sdxl),
                                  as_json=True))
    (encoder,) = info["encoders"]
    assert encoder["encoder"] == encoder["model_encoder"] == "clip_g"  # from the file's dti.slot metadata
    assert encoder["vocab_norm_mean"] == pytest.approx(vocab_mean_norm(tiny_sdxl, "clip_g"), rel=1e-6)
    (row,) = encoder["rows"]
    assert row["ratio_to_vocab_mean"] == pytest.approx(1.0, abs=1e-5)
    # Three small DTI steps from "dog": the initializer is still the nearest token, and the angle to it is
    # the angle from initialization that training logged.
    assert row["nearest"][0]["token"] == "dog"
    assert row["angle_to_nearest_deg"] == pytest.approx(run.run["final"]["angle_from_init_deg"]["clip_g"][0],
                                                        abs=1e-2)
    assert len(row["nearest"]) == 5
    cosines = [n["cosine"] for n in row["nearest"]]
    assert cosines == sorted(cosines, reverse=True)


def test_ti_file_shows_its_norm_inflation(tiny_sd, trained_run):
    run = trained_run("sd", "ti")
    info = inspect_file(run.out_dir / "learned_embeds.safetensors", load_vocabularies(tiny_sd), model="tiny")
    (row,) = info["encoders"][0]["rows"]
    expected = run.run["norms"][0]["norm"] / vocab_mean_norm(tiny_sd, "clip_l")
    assert row["ratio_to_vocab_mean"] == pytest.approx(expected, rel=1e-5)
    assert row["ratio_to_vocab_mean"] > 1.5


def test_nearest_token_of_a_vocabulary_row_is_itself(tiny_sd, tmp_path):
    dog = load_vocabularies(tiny_sd)["clip_l"].tokens.index("dog</w>")
    path = _write(tmp_path / "dog.safetensors", {"emb_params": 3 * _row(tiny_sd, "clip_l", dog)[None]})
    info = inspect_file(path, load_vocabularies(tiny_sd), model="tiny")
    (row,) = info["encoders"][0]["rows"]
    assert row["nearest"][0]["token"] == "dog"
    assert row["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert row["angle_to_nearest_deg"] == pytest.approx(0.0, abs=0.1)
    assert row["ratio_to_vocab_mean"] == pytest.approx(
        3 * _row(tiny_sd, "clip_l", dog).norm().item() / vocab_mean_norm(tiny_sd, "clip_l"), rel=1e-5)


@pytest.mark.parametrize(("tensors", "layout", "slots"), [
    ({"<cat-toy>": torch.randn(2, 768)}, "diffusers", {"clip_l": 2}),
    ({"emb_params": torch.randn(3, 1024)}, "emb_params", {"clip_h": 3}),
    ({"string_to_param.*": torch.randn(1, 768)}, "string_to_param", {"clip_l": 1}),
    ({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, "sdxl", {"clip_l": 2, "clip_g": 2}),
    ({"<one>": torch.randn(768)}, "diffusers", {"clip_l": 1}),  # a 1-D tensor is one vector
])
def test_every_layout_is_read_with_its_norms(tmp_path, tensors, layout, slots):
    emb = read_embedding_file(_write(tmp_path / "e.safetensors", tensors))
    assert emb.layout == layout
    assert {slot: rows.shape[0] for slot, rows in emb.vectors.items()} == slots
    info = inspect_file(emb.path)
    for encoder in info["encoders"]:
        key = next(iter(tensors)) if len(tensors) == 1 else encoder["encoder"]
        expected = tensors[key].reshape(-1, tensors[key].shape[-1]).double().norm(dim=-1).tolist()
        assert [r["norm"] for r in encoder["rows"]] == pytest.approx(expected, rel=1e-6)


def test_bfloat16_file_is_read(tmp_path):
    rows = torch.randn(2, 768).bfloat16()
    emb = read_embedding_file(_write(tmp_path / "bf16.safetensors", {"<x>": rows}))
    np.testing.assert_allclose(emb.vectors["clip_l"], rows.float().numpy())


def _verdicts(info):
    return {(c["model"], c["client"]): c["loads"] for c in info["clients"]}


def test_loaders_follow_the_layout_and_widths(tmp_path):
    pair = inspect_file(_write(tmp_path / "xl.safetensors", {"clip_l": torch.randn(1, 768),
                                                             "clip_g": torch.randn(1, 1280)}))
    assert {k[1]: v for k, v in _verdicts(pair).items() if k[0] == "SDXL"} == dict.fromkeys(CLIENTS, "yes")
    # On SD 1.x diffusers and ComfyUI take its clip_l tensor; the web UIs want one tensor there, and InvokeAI
    # reads the pair's base model (SDXL) from clip_g's width.
    assert {k[1]: v for k, v in _verdicts(pair).items() if k[0] == "SD 1.x"} == {
        "diffusers": "yes", "AUTOMATIC1111": "no", "Forge": "no", "SD.Next": "no", "ComfyUI": "yes",
        "InvokeAI": "no"}
    single = inspect_file(_write(tmp_path / "sd.safetensors", {"emb_params": torch.randn(1, 768)}))
    verdicts = _verdicts(single)
    assert [verdicts[("SD 1.x", c)] for c in CLIENTS] == ["yes"] * len(CLIENTS)
    assert [verdicts[("SD 2.x", c)] for c in CLIENTS] == ["no"] * len(CLIENTS)
    assert {c: verdicts[("SDXL", c)] for c in CLIENTS} == {
        "diffusers": "partly", "AUTOMATIC1111": "no", "Forge": "no", "SD.Next": "no", "ComfyUI": "partly",
        "InvokeAI": "no"}


def test_our_exports_load_on_their_own_model(tiny_sdxl, trained_run):
    run = trained_run("sdxl", "dti")
    single = next(p for p in run.out_dir.glob("*.safetensors") if not p.name.startswith("learned_embeds"))
    info = inspect_file(single, load_vocabularies(tiny_sdxl), model="tiny-sdxl")
    # The tiny SDXL's two encoders are equally wide: the clients that take clip_l and clip_g by their keys
    # load the pair; SD.Next and InvokeAI match tensors to encoders by width and mix them up.
    assert {c: v for (_, c), v in _verdicts(info).items()} == {
        "diffusers": "yes", "AUTOMATIC1111": "yes", "Forge": "yes", "SD.Next": "partly", "ComfyUI": "yes",
        "InvokeAI": "partly"}
    half = inspect_file(run.out_dir / "learned_embeds.safetensors", load_vocabularies(tiny_sdxl), model="tiny-sdxl")
    assert _verdicts(half)[("tiny-sdxl", "diffusers")] == "partly"  # one encoder's file of an SDXL pair


class _Trap:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["pt suffix", "bin suffix", "ckpt suffix", "pickle bytes", "torch zip"])
def test_pickles_are_refused_without_being_opened(tmp_path, kind, capsys):
    marker = tmp_path / "unpickled"
    if kind.endswith("suffix"):
        path = tmp_path / f"embedding.{kind.split()[0]}"
        path.write_bytes(pickle.dumps({"string_to_param": {"*": _Trap(marker)}}))
    elif kind == "pickle bytes":
        path = tmp_path / "looks-safe.safetensors"
        path.write_bytes(pickle.dumps(_Trap(marker)))
    else:
        path = tmp_path / "saved-by-torch.safetensors"
        torch.save({"emb_params": torch.zeros(1, 8)}, path)
        assert zipfile.is_zipfile(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "never unpickles" in err and err.count("\n") == 1
    assert not marker.exists()


def test_a_safetensors_header_starting_like_a_pickle_is_read(tmp_path):
    """A header of 128 + 256 n bytes makes a safetensors file's first byte 0x80, a pickle's first byte."""
    path = tmp_path / "e.safetensors"
    for pad in range(300):
        _write(path, {"emb_params": torch.randn(1, 768)}, metadata={"note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert read_embedding_file(path).vectors["clip_l"].shape == (1, 768)


@pytest.mark.parametrize("case", ["missing", "truncated", "not safetensors", "many tensors", "3-d tensor"])
def test_unreadable_files_fail_in_one_line_naming_the_file(tmp_path, capsys, case):
    path = tmp_path / "bad.safetensors"
    if case == "truncated":
        _write(path, {"emb_params": torch.randn(2, 768)})
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "not safetensors":
        path.write_text("hello, I am a text file")
    elif case == "many tensors":
        _write(path, {"a": torch.zeros(1, 4), "b": torch.zeros(1, 4), "c": torch.zeros(1, 4)})
    elif case == "3-d tensor":
        _write(path, {"emb_params": torch.zeros(1, 2, 4)})
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dti: error: ") and str(path) in err and err.count("\n") == 1
    with pytest.raises(DtiError, match="bad.safetensors"):
        read_embedding_file(path)


def test_cli_prints_a_readable_report_and_json(tiny_sd, trained_run, capsys):
    run = trained_run("sd", "dti")
    path = str(run.out_dir / "learned_embeds.safetensors")
    assert main(["inspect", path, "--model", str(tiny_sd), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "x vocabulary mean" in out and "nearest: dog" in out and "loads in:" in out
    assert main(["inspect", path, "--model", str(tiny_sd), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "diffusers" and info["token"] == "<subject>"
    assert len(info["encoders"][0]["rows"][0]["nearest"]) == 5
    assert info["metadata"]["dti.method"] == "dti"
    assert math.isfinite(info["encoders"][0]["rows"][0]["angle_to_nearest_deg"])


def test_a_bad_model_is_named(tmp_path, trained_run, capsys):
    run = trained_run("sd", "dti")
    assert main(["inspect", str(run.out_dir / "learned_embeds.safetensors"), "--model",
                 str(tmp_path / "no-such-model")]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and err.count("\n") == 1


@pytest.mark.parametrize("family", ["sana", "wan"])
def test_tokens_of_families_without_client_loaders_say_so(family, tiny_models, trained_run):
    """SANA's and Wan's text encoders are not CLIP: only dti's own loader takes their tokens, and the
    distances are measured in their own vocabularies."""
    run = trained_run(family, "dti")
    single = next(p for p in run.out_dir.glob("*.safetensors") if not p.name.startswith("learned_embeds"))
    for path, model in ((run.out_dir / "learned_embeds.safetensors", str(tiny_models[family])), (single, None)):
        info = json.loads(run_inspect(str(path), model=model, as_json=True))
        assert info["family"] == family
        assert {c["client"]: c["loads"] for c in info["clients"]} == {"dti": "yes", **dict.fromkeys(CLIENTS, "no")}
    (encoder,) = json.loads(run_inspect(str(run.out_dir / "learned_embeds.safetensors"),
                                        model=str(tiny_models[family]), as_json=True))["encoders"]
    assert encoder["rows"][0]["ratio_to_vocab_mean"] == pytest.approx(1.0, rel=1e-5)  # DTI sits at m
