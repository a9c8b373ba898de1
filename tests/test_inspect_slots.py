"""`dti inspect`: each tensor is attributed to the text encoder the file names (dti.slot metadata, the
clip_l / clip_g keys, the learned_embeds_N file name), never to whichever encoder has its width, with the
width only checked against --model; a file trained for another family is refused as `dti sample` refuses
it; the clients judged are the README's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import saved_token_table
from safetensors.torch import save_file

from dti.cli import main
from dti.errors import DtiError
from dti.export import diffusers_file, load_diffusers
from dti.inspect import CLIENTS, file_position, inspect_file, read_embedding_file, run_inspect
from dti.vocab import load_vocabularies

README = Path(__file__).resolve().parents[1] / "README.md"


def _write(path, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _word_row(model, slot: str, word: str) -> torch.Tensor:
    """The saved vocabulary row of `word` in the encoder `slot` of the model, as a [1, d] tensor."""
    token_id = load_vocabularies(model)[slot].tokens.index(f"{word}</w>")
    return saved_token_table(model, slot)[token_id][None].clone()


def _encoders(info: dict) -> dict[str, dict]:
    return {enc["encoder"]: enc for enc in info["encoders"]}


def _nearest(enc: dict) -> tuple[str, float]:
    best = enc["rows"][0]["nearest"][0]
    return best["token"], best["cosine"]


def _one_error_line(err: str) -> str:
    assert err.startswith("dti: error: ") and err.count("\n") == 1, err
    return err.removeprefix("dti: error: ").rstrip("\n")


# --- the clients are the README's ----------------------------------------------------------------------
def _readme_clients() -> set[str]:
    """The clients of the README's table of tools: the first cell of each row below the `| client |` head."""
    lines = README.read_text(encoding="utf-8").splitlines()
    head = next(i for i, line in enumerate(lines) if re.match(r"\|\s*client\s*\|", line))
    clients = set()
    for line in lines[head + 2:]:  # past the head and its | --- | line
        if not line.startswith("|"):
            break
        clients |= {name.strip() for name in line.split("|")[1].split(",")}
    return clients


def test_inspect_judges_exactly_the_clients_of_the_readme_table(tmp_path):
    assert _readme_clients() == set(CLIENTS)
    info = inspect_file(_write(tmp_path / "e.safetensors", {"emb_params": torch.randn(1, 768)}))
    for model in ("SD 1.x", "SD 2.x", "SDXL"):
        assert [c["client"] for c in info["clients"] if c["model"] == model] == list(CLIENTS)


# --- the file names the encoder --------------------------------------------------------------------
def test_tiny_sdxl_encoders_are_equally_wide(tiny_sdxl):
    """What the tests below rely on: only the file can tell the tiny SDXL's two encoders apart."""
    widths = {slot: vocab.table.shape[1] for slot, vocab in load_vocabularies(tiny_sdxl).items()}
    assert list(widths) == ["clip_l", "clip_g"] and widths["clip_l"] == widths["clip_g"]


def test_an_sdxl_pair_of_equal_widths_is_attributed_by_its_keys(tiny_sdxl, tmp_path):
    # "dog" of clip_l's vocabulary under clip_l, "cat" of clip_g's under clip_g: each is its own nearest token
    # only in the encoder its key names.
    path = _write(tmp_path / "pair.safetensors", {"clip_l": _word_row(tiny_sdxl, "clip_l", "dog"),
                                                  "clip_g": _word_row(tiny_sdxl, "clip_g", "cat")})
    encoders = _encoders(json.loads(run_inspect(str(path), model=str(tiny_sdxl), as_json=True)))
    assert {slot: enc["model_encoder"] for slot, enc in encoders.items()} == {"clip_l": "clip_l", "clip_g": "clip_g"}
    assert encoders["clip_g"]["named_by"] == "its key"
    for slot, word in (("clip_l", "dog"), ("clip_g", "cat")):
        token, cosine = _nearest(encoders[slot])
        assert token == word and cosine == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("step", [None, 7])
def test_learned_embeds_2_is_the_second_encoder_without_any_metadata(tiny_sdxl, tmp_path, step):
    """diffusers' SDXL training script writes {token: rows} per encoder and no dti.slot: the file name says
    which encoder (dti.export.diffusers_file), not the width."""
    first = _write(tmp_path / diffusers_file(0, step), {"<x>": _word_row(tiny_sdxl, "clip_l", "dog")})
    second = _write(tmp_path / diffusers_file(1, step), {"<x>": _word_row(tiny_sdxl, "clip_g", "cat")})
    assert read_embedding_file(second).metadata == {}
    vocabularies = load_vocabularies(tiny_sdxl)
    for path, slot, word in ((first, "clip_l", "dog"), (second, "clip_g", "cat")):
        (enc,) = inspect_file(path, vocabularies, model="tiny-sdxl")["encoders"]
        assert (enc["model_encoder"], enc["named_by"]) == (slot, "its file name")
        token, cosine = _nearest(enc)
        assert token == word and cosine == pytest.approx(1.0, abs=1e-6)
    # Without a model too: learned_embeds_2 is SDXL's clip_g, the only family with a second encoder.
    assert list(read_embedding_file(second).vectors) == ["clip_g"]
    # diffusers loads it into the encoder it names, though the other one is as wide; ComfyUI would give the
    # other encoder the same rows.
    clients = {c["client"]: c for c in inspect_file(second, vocabularies, model="tiny-sdxl")["clients"]}
    assert (clients["diffusers"]["loads"], clients["ComfyUI"]["loads"]) == ("partly", "partly")
    assert "into the clip_g encoder only" in clients["diffusers"]["note"]
    assert clients["ComfyUI"]["note"] == "the clip_l encoder takes clip_g's rows too (the file's first tensor)"


def test_our_sdxl_files_are_attributed_by_their_dti_slot(tiny_sdxl, trained_run):
    run = trained_run("sdxl", "dti")
    vocabularies = load_vocabularies(tiny_sdxl)
    for position, slot in enumerate(("clip_l", "clip_g")):
        (enc,) = inspect_file(run.out_dir / diffusers_file(position), vocabularies, model="tiny-sdxl")["encoders"]
        assert (enc["encoder"], enc["model_encoder"], enc["named_by"]) == (slot, slot, "its dti.slot metadata")


@pytest.mark.parametrize("position", [0, 1, 2, 3])
@pytest.mark.parametrize("step", [None, 5])
def test_file_position_reads_the_names_export_writes(position, step):
    assert file_position(Path("/somewhere") / diffusers_file(position, step)) == position


@pytest.mark.parametrize("name", ["learned_embeds_1.safetensors", "learned_embeds_2.bin", "my_learned_embeds.safetensors",
                                  "learned_embeds_2-steps-.safetensors", "dti-bear.safetensors"])
def test_other_file_names_name_no_encoder(name):
    assert file_position(name) is None


@pytest.mark.parametrize("case", ["pair key", "file name", "dti.slot metadata"])
def test_a_named_encoder_of_another_width_is_an_error_naming_file_key_and_widths(tiny_sdxl, tmp_path, capsys,
                                                                                 case):
    narrow = torch.randn(1, 16)  # the tiny SDXL's encoders are 32 wide
    if case == "pair key":
        path, key = _write(tmp_path / "pair.safetensors", {"clip_l": torch.randn(1, 32), "clip_g": narrow}), "clip_g"
    elif case == "file name":
        path, key = _write(tmp_path / "learned_embeds_2.safetensors", {"<x>": narrow}), "<x>"
    else:
        path, key = _write(tmp_path / "e.safetensors", {"<x>": narrow}, {"dti.slot": "clip_g"}), "<x>"
    assert main(["inspect", str(path), "--model", str(tiny_sdxl)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line and f"tensor '{key}'" in line and "clip_g" in line
    assert "16 wide" in line and "32 wide" in line
    with pytest.raises(DtiError, match="is 16 wide, but the clip_g encoder of tiny is 32 wide"):
        inspect_file(path, load_vocabularies(tiny_sdxl), model="tiny")


def test_an_encoder_the_model_lacks_is_not_matched_by_width(tiny_sd, tmp_path):
    """The tiny SD's one encoder is as wide as either tensor of the pair: clip_g is still not its."""
    path = _write(tmp_path / "pair.safetensors", {"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 32)})
    encoders = _encoders(inspect_file(path, load_vocabularies(tiny_sd), model="tiny-sd"))
    assert encoders["clip_l"]["model_encoder"] == "clip_l"
    assert "model_encoder" not in encoders["clip_g"] and "nearest" not in encoders["clip_g"]["rows"][0]
    assert encoders["clip_g"]["note"] == "tiny-sd has no clip_g text encoder (it has clip_l)"
    second = _write(tmp_path / "learned_embeds_2.safetensors", {"<x>": torch.randn(1, 32)})
    (enc,) = inspect_file(second, load_vocabularies(tiny_sd), model="tiny-sd")["encoders"]
    assert "model_encoder" not in enc and enc["note"] == "its file name is for text encoder 2; tiny-sd has 1"


def test_a_tensor_naming_no_encoder_goes_by_width_and_says_so(tiny_sdxl, tmp_path):
    path = _write(tmp_path / "e.safetensors", {"emb_params": torch.randn(1, 32)})
    (enc,) = inspect_file(path, load_vocabularies(tiny_sdxl), model="tiny-sdxl")["encoders"]
    assert enc["model_encoder"] == "clip_l" and "named_by" not in enc
    assert enc["note"] == "the file names no encoder, and clip_l, clip_g are all 32 wide: compared with clip_l"


# --- a file trained for another family ---------------------------------------------------------------
@pytest.mark.parametrize(("trained", "model"), [("sdxl", "sd"), ("sd", "sdxl")])
def test_a_file_of_another_family_gets_the_refusal_dti_sample_gives(tiny_models, trained_run, capsys, monkeypatch,
                                                                     trained, model):
    """SD's and SDXL's first encoders are equally wide (768, and 32 in the tiny models): only the dti.family
    metadata tells, and inspect refuses in the words of dti sample (dti.export.load_diffusers), before any
    vocabulary is read."""
    run = trained_run(trained, "dti")
    path = run.out_dir / "learned_embeds.safetensors"
    with pytest.raises(DtiError) as sample_refusal:
        load_diffusers(run.out_dir, ["clip_l"], family=model)

    def no_vocabularies(folder):
        raise AssertionError("the vocabularies were read before the family was checked")

    monkeypatch.setattr("dti.vocab.load_vocabularies", no_vocabularies)
    capsys.readouterr()  # what training printed
    assert main(["inspect", str(path), "--model", str(tiny_models[model])]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == str(sample_refusal.value)
    assert line == f"{path} was trained for the {trained!r} family; this model is a {model!r} one"
    monkeypatch.undo()
    single = next(p for p in run.out_dir.glob("*.safetensors") if not p.name.startswith("learned_embeds"))
    with pytest.raises(DtiError, match=f"trained for the '{trained}' family; this model is a '{model}' one"):
        inspect_file(single, load_vocabularies(tiny_models[model]), model=model, family=model)


def test_files_of_other_tools_carry_no_family_and_are_inspected(tiny_sd, tmp_path):
    path = _write(tmp_path / "e.safetensors", {"emb_params": torch.randn(1, 32)})
    info = json.loads(run_inspect(str(path), model=str(tiny_sd), as_json=True))
    assert info["family"] == "sd" and info["encoders"][0]["model_encoder"] == "clip_l"


# --- the new clients' rules --------------------------------------------------------------------------
def _verdicts(info, model):
    return {c["client"]: c["loads"] for c in info["clients"] if c["model"] == model}


def test_invokeai_reads_the_base_model_from_the_first_dimension_of_a_diffusers_tensor(tmp_path):
    rows = inspect_file(_write(tmp_path / "rows.safetensors", {"<x>": torch.randn(1, 768)}))
    assert {model: _verdicts(rows, model)["InvokeAI"] for model in ("SD 1.x", "SD 2.x", "SDXL")} == dict.fromkeys(
        ("SD 1.x", "SD 2.x", "SDXL"), "no")  # [1, 768]: it reads 1
    vector = inspect_file(_write(tmp_path / "vector.safetensors", {"<x>": torch.randn(768)}))
    assert _verdicts(vector, "SD 1.x")["InvokeAI"] == "yes"  # diffusers' old [768] layout
    assert _verdicts(vector, "SD 1.x")["SD.Next"] == "yes"
