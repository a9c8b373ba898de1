"""The `dti` command: a real train + sample round trip, and bad input reported with the culprit named."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import FAMILIES, FAST, REGISTRY, SLOTS, vocab_mean_norm
from PIL import Image
from safetensors.torch import load_file

from dti.cli import build_parser, main
from dti.methods import METHODS, trainable_methods


def _train_args(model, images, out, **overrides) -> list[str]:
    options = {"model": model, "images": images, "out": out, "initializer": FAST["initializer"],
               "steps": 2, "save-every": 2, "resolution": FAST["resolution"],
               "batch-size": FAST["batch_size"], **overrides}
    args = ["train", "--quiet"]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return args


def _nothing_written(out) -> bool:
    return not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("family", FAMILIES)
def test_train_then_sample_round_trip(tiny_models, subject_dir, tmp_path, capsys, family):
    model = tiny_models[family]
    out = tmp_path / "my bear"
    assert main(_train_args(model, subject_dir, out, magnitude="mean")) == 0
    # The single file is named after the method and the output folder, made a safe name, and printed.
    for name in ("learned_embeds.safetensors", "run.json", "dti-my-bear.safetensors", "train_log.jsonl",
                 "learned_embeds-steps-2.safetensors", "checkpoints/state.safetensors"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    single = out / "dti-my-bear.safetensors"
    if REGISTRY[family].textual_inversion_clients:
        assert f"copy only {single} into the embeddings folder, then write dti-my-bear" in printed
        assert "then write embedding:dti-my-bear" in printed and "then write <subject> in prompts" in printed
    else:  # SANA, Wan: only dti's own loader knows their text encoders
        assert f"dti sample --embeds {out}" in printed and "AUTOMATIC1111" in printed
        assert "copy only" not in printed
    rows = load_file(str(out / "learned_embeds.safetensors"))["<subject>"]
    assert rows.norm().item() == pytest.approx(vocab_mean_norm(model, SLOTS[family][0]), rel=1e-6)
    images = tmp_path / "images"
    # Wan renders a 64 x 96 one-frame video: --width sets a non-square image.
    code = main(["sample", "--quiet", "--model", str(model), "--embeds", str(out), "--prompt",
                 "a {} on a table", "--seeds", "0", "7", "--out", str(images), "--steps", "2",
                 "--resolution", "64", "--batch-size", "2", *(["--width", "96"] if family == "wan" else [])])
    assert code == 0, capsys.readouterr().err
    for name in ("0000.png", "0007.png"):
        with Image.open(images / name) as img:
            assert img.size == ((96, 64) if family == "wan" else (64, 64))


def test_a_second_stage_trains_from_the_run_given_by_start_from(tiny_sd, subject_dir, tmp_path, capsys):
    """core_unet from the command line: --start-from a core run's folder; the run says how to load both."""
    first, second = tmp_path / "core", tmp_path / "stage2"
    assert main(_train_args(tiny_sd, subject_dir, first, method="core")) == 0
    assert main(_train_args(tiny_sd, subject_dir, second, method="core_unet", **{"start-from": first})) == 0
    assert json.loads((second / "run.json").read_text())["settings"]["start_from"] == str(first)
    assert "with its full adapter" in capsys.readouterr().out and (second / "adapter").is_dir()
    assert main(_train_args(tiny_sd, subject_dir, tmp_path / "none", method="core_unet")) == 2
    assert "method 'core_unet' continues a 'core' run: give that run's folder" in capsys.readouterr().err
    assert _nothing_written(tmp_path / "none")


def test_hyper_parameter_flags_travel_as_one_dict(tiny_sd, subject_dir, tmp_path):
    """Every hyper-parameter has a flag (from dti.methods), and the ones given reach run.json as the overrides
    of the method's defaults."""
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "method")
    assert train.choices == trainable_methods() and "ti_rescaled" not in train.choices
    out = tmp_path / "ti"
    args = _train_args(tiny_sd, subject_dir, out, method="ti", **{"weight-decay": 0.5})
    args += ["--adam-betas", "0.8", "0.99"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    given = {"weight_decay": 0.5, "adam_betas": [0.8, 0.99]}
    assert run["settings"]["hyper_parameters"] == given
    assert run["hyper_parameters"] == {**METHODS["ti"].defaults, **given}


def test_an_ablation_with_its_own_flag_and_zero_pad_trains_from_the_cli(tiny_sd, subject_dir, tmp_path):
    out = tmp_path / "trained-norm"
    assert main(_train_args(tiny_sd, subject_dir, out, method="dti_trained_norm", **{"magnitude-lr": 0.01})
                + ["--zero-pad"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "dti_trained_norm" and run["settings"]["zero_pad"] is True
    assert run["hyper_parameters"]["magnitude_lr"] == 0.01 and run["hyper_parameters"]["kappa"] == 1e-4
    # A flag of another method is refused, naming it.
    assert main(_train_args(tiny_sd, subject_dir, tmp_path / "x", method="dti", **{"magnitude-lr": 0.01})) == 2


def test_an_adapter_method_trains_samples_and_says_how_to_load_both_from_the_cli(tiny_sd, subject_dir, tmp_path,
                                                                                  capsys):
    out = tmp_path / "oft"
    assert main(_train_args(tiny_sd, subject_dir, out, method="ti_oft", **{"adapter-rank": 2, "adapter-lr": 0.01})) == 0
    said = capsys.readouterr().out
    assert f"with its oft adapter, {out / 'adapter'}" in said and "dti.adapters.load_adapter" in said
    run = json.loads((out / "run.json").read_text())
    assert run["hyper_parameters"]["adapter_rank"] == 2 and run["cost"]["adapter"] == "oft"
    assert main(["sample", "--quiet", "--model", str(tiny_sd), "--embeds", str(out), "--prompt", "a photo of {}",
                 "--out", str(tmp_path / "images"), "--steps", "2", "--resolution", "64"]) == 0
    assert list((tmp_path / "images").glob("*.png"))


def _corrupt_folder(subject_dir, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(subject_dir, folder)
    (folder / "x.jpg").write_text("not an image")
    return folder, folder / "x.jpg"


@pytest.mark.parametrize("case", ["empty folder", "missing folder", "corrupt image", "empty initializer",
                                  "blank initializer", "placeholder in vocabulary", "missing model",
                                  "bad magnitude"])
def test_bad_training_input_is_named_and_nothing_is_written(tiny_sd, subject_dir, tmp_path, capsys, case):
    out = tmp_path / "out"
    model, images, extra = tiny_sd, subject_dir, {}
    if case == "empty folder":
        images = culprit = tmp_path / "empty"
        images.mkdir()
    elif case == "missing folder":
        images = culprit = tmp_path / "nowhere"
    elif case == "corrupt image":
        images, culprit = _corrupt_folder(subject_dir, tmp_path)
    elif case == "empty initializer":
        extra, culprit = {"initializer": ""}, "initializer ''"
    elif case == "blank initializer":
        extra, culprit = {"initializer": "   "}, "initializer '   '"
    elif case == "placeholder in vocabulary":
        extra, culprit = {"placeholder": "dog"}, "placeholder 'dog'"
    elif case == "missing model":
        model = culprit = tmp_path / "no-such-model"
    else:
        extra, culprit = {"magnitude": "biggest"}, "'biggest'"
    assert main(_train_args(model, images, out, **extra)) == 2
    err = capsys.readouterr().err
    assert "dti: error:" in err
    assert str(culprit) in err
    assert _nothing_written(out), sorted(p.name for p in out.rglob("*"))


def test_sample_reports_bad_prompt_and_missing_embeddings(tiny_sd, trained_run, tmp_path, capsys):
    embeds = trained_run("sd", "dti").out_dir
    base = ["sample", "--quiet", "--model", str(tiny_sd), "--out", str(tmp_path / "img"), "--steps", "1",
            "--resolution", "64", "--seeds", "0"]
    assert main(base + ["--embeds", str(embeds), "--prompt", "a photo without a slot"]) == 2
    assert "'a photo without a slot'" in capsys.readouterr().err
    assert main(base + ["--embeds", str(tmp_path), "--prompt", "a {}"]) == 2
    assert str(tmp_path / "learned_embeds.safetensors") in capsys.readouterr().err
    assert _nothing_written(tmp_path / "img")
