"""Concept interpolation: the paths' geometry, the config checks, the smoothness figures, and a real
render + score of a pair on a tiny model whose blends load back and reproduce their endpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dti.analysis.interpolation import (
    check_pair_runs,
    interpolate_rows,
    interpolate_token,
    interpolation_tables,
    parse_interpolation,
    path_figures,
    render_pair,
    score_pair,
    summary_latex,
)
from dti.errors import DtiError
from dti.export import load_diffusers
from dti.sphere import angle, normalize

TS = [0.0, 0.2, 0.5, 0.9, 1.0]


def _pair(k=2, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=gen), 3 * torch.randn(k, d, generator=gen)


def _cos(x, y):
    """Cosine per row (compared instead of angles: arccos near 1 loses half the float32 digits)."""
    return (normalize(x.double()) * normalize(y.double())).sum(-1).float()


def test_dti_slerp_keeps_the_norm_and_turns_at_constant_speed():
    a, b = _pair()
    m = 0.39
    omega = angle(a, b)
    for t in TS:
        e = interpolate_rows(m * normalize(a), m * normalize(b), t, "slerp", magnitude=m)
        torch.testing.assert_close(e.norm(dim=-1), torch.full((2,), m), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(_cos(e, a), torch.cos(t * omega), rtol=0, atol=1e-6)
    torch.testing.assert_close(interpolate_rows(a, b, 0.0, "slerp", magnitude=m), m * normalize(a))
    torch.testing.assert_close(interpolate_rows(a, b, 1.0, "slerp", magnitude=m), m * normalize(b))


def test_ti_slerp_interpolates_the_norm_linearly_and_lerp_is_the_plain_average():
    a, b = _pair()
    for t in TS:
        e = interpolate_rows(a, b, t, "slerp")
        torch.testing.assert_close(e.norm(dim=-1), (1 - t) * a.norm(dim=-1) + t * b.norm(dim=-1), rtol=1e-5, atol=0)
        torch.testing.assert_close(_cos(e, a), torch.cos(t * angle(a, b)), rtol=0, atol=1e-6)
        torch.testing.assert_close(interpolate_rows(a, b, t, "lerp"), (1 - t) * a + t * b)
    torch.testing.assert_close(interpolate_rows(a, b, 0.0, "slerp"), a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(interpolate_rows(a, b, 1.0, "slerp"), b, rtol=1e-5, atol=1e-6)
    # lerp between vectors that point apart is shorter half-way than slerp's interpolated norm
    assert (interpolate_rows(a, b, 0.5, "lerp").norm(dim=-1) < interpolate_rows(a, b, 0.5, "slerp").norm(dim=-1)).all()


def test_tokens_interpolate_row_by_row_per_encoder():
    a = {"clip_l": _pair(3, 8, 1)[0], "clip_g": _pair(3, 12, 2)[0]}
    b = {"clip_l": _pair(3, 8, 3)[1], "clip_g": _pair(3, 12, 4)[1]}
    out = interpolate_token(a, b, 0.3, "slerp")
    for slot in a:
        for i in range(3):
            torch.testing.assert_close(out[slot][i], interpolate_rows(a[slot][i : i + 1], b[slot][i : i + 1], 0.3,
                                                                      "slerp")[0])


def test_mismatched_tokens_are_refused_naming_the_pair():
    a, b = _pair(2, 8)
    with pytest.raises(DtiError, match="pair x\\+y.*number of vectors"):
        interpolate_token({"clip_l": a}, {"clip_l": b[:1]}, 0.5, "lerp", what="pair x+y")
    with pytest.raises(DtiError, match="pair x\\+y.*encoders"):
        interpolate_token({"clip_l": a}, {"clip_g": b}, 0.5, "lerp", what="pair x+y")
    run = {"model": "m", "family": "sdxl", "tokens": {"clip_l": ["<a>"], "clip_g": ["<a>"]}}
    two = {**run, "tokens": {"clip_l": ["<b>", "<b>_1"], "clip_g": ["<b>", "<b>_1"]}}
    with pytest.raises(DtiError, match="pair box\\+bear.*different numbers of vectors"):
        check_pair_runs(run, two, "interpolation pair box+bear")
    with pytest.raises(DtiError, match="pair box\\+bear.*different backbones"):
        check_pair_runs(run, {**run, "model": "other"}, "interpolation pair box+bear")


SUBJECTS, METHODS = ["box", "dog", "bear"], ["crossinit", "dti", "ti"]


@pytest.mark.parametrize(("config", "needle"), [
    ({"pairs": [{"a": "box", "b": "cat"}]}, "interpolation.pairs[0].b: unknown subject 'cat'"),
    ({"pairs": [{"a": "box", "b": "dog", "methods": ["magic"]}]}, "interpolation.pairs[0].methods[0]: unknown method 'magic'"),
    ({"pairs": [{"a": "box", "b": "dog"}], "methods": ["ti_rescaled"]}, "interpolation.methods[0]: unknown method"),
    ({"pairs": [{"a": "box", "b": "box"}]}, "interpolation.pairs[0]: a and b are both 'box'"),
    ({"pairs": [{"a": "box", "b": "dog"}, {"a": "box", "b": "dog"}]}, "interpolation.pairs[1]: the pair box+dog appears twice"),
    ({"t": [0, 0.5, 1.5]}, "interpolation.t[2]: 1.5 is outside [0, 1]"),
    ({"t": [-0.1, 1]}, "interpolation.t[0]: -0.1 is outside [0, 1]"),
    ({"t": [0.5]}, "interpolation.t: give at least two"),
    ({"prompts": []}, "interpolation.prompts: the list is empty"),
    ({"prompts": ["a photo"]}, "interpolation.prompts[0]"),
])
def test_bad_interpolation_config_is_one_line_naming_it(config, needle):
    with pytest.raises(DtiError) as err:
        parse_interpolation(config, SUBJECTS, METHODS)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_good_config_gives_pairs_with_their_methods():
    plan = parse_interpolation({"pairs": [{"a": "box", "b": "dog"}, {"a": "dog", "b": "bear", "methods": ["dti"]}],
                                "t": [1, 0, 0.5], "methods": ["dti", "ti"]}, SUBJECTS, METHODS)
    assert [(p.name, p.methods) for p in plan.pairs] == [("box+dog", ("dti", "ti")), ("dog+bear", ("dti",))]
    assert plan.t == (0.0, 0.5, 1.0)


def _path(sim_a, sim_b, text, ts=None):
    ts = ts or list(np.linspace(0, 1, len(sim_a)))
    return pd.DataFrame({"t": ts, "sim_a": sim_a, "sim_b": sim_b, "text": text, "norm_ratio": np.ones(len(ts))})


def test_an_even_path_has_the_smallest_jump_and_a_step_the_largest():
    n = 4
    even = path_figures(_path(list(np.linspace(0.9, 0.5, n + 1)), list(np.linspace(0.4, 0.8, n + 1)), [0.3] * (n + 1)))
    assert even["max_jump"] == pytest.approx(1 / n)
    assert even["monotone_a"] == even["monotone_b"] == 1.0
    assert even["text_dip"] == pytest.approx(0.0)
    step = path_figures(_path([0.9, 0.9, 0.9, 0.5, 0.5], [0.4, 0.4, 0.4, 0.8, 0.8], [0.3, 0.3, 0.1, 0.3, 0.3]))
    assert step["max_jump"] == pytest.approx(1.0)
    assert step["text_dip"] == pytest.approx(0.2)
    bumpy = path_figures(_path([0.9, 0.7, 0.8, 0.6, 0.5], [0.4, 0.5, 0.6, 0.7, 0.8], [0.3] * 5))
    assert bumpy["monotone_a"] == 0.0 and bumpy["monotone_b"] == 1.0
    # |diff(progress)|: progress = 0.5, 0.2, 0.2, -0.1, -0.3
    assert bumpy["max_jump"] == pytest.approx(0.3 / 0.8)


def test_tables_average_paths_and_render_latex():
    rows = []
    for method, scheme, drop in [("dti", "slerp", 0.1), ("ti", "lerp", 0.4)]:
        for seed in (0, 1):
            for i, t in enumerate([0.0, 0.5, 1.0]):
                rows.append({"backbone": "sd", "pair": "a+b", "method": method, "scheme": scheme, "prompt_id": 0,
                             "seed": seed, "t": t, "sim_a": 0.9 - drop * i, "sim_b": 0.5 + 0.1 * i, "text": 0.3,
                             "norm_ratio": 1.0, "image": f"{method}{seed}{i}.png", "image_metric": "dino (x)",
                             "text_metric": "clip_t (y)"})
    tables = interpolation_tables(pd.DataFrame(rows))
    summary = tables["summary"].set_index("method")
    assert summary.loc["dti", "n_paths"] == 2 and summary.loc["ti", "n_steps"] == 2
    assert summary.loc["dti", "max_jump"] == pytest.approx(0.5)
    assert len(tables["per_t"]) == 2 * 3
    latex = summary_latex(tables["summary"])
    assert "\\toprule" in latex and "dino (x)" in latex and "0.500" in latex


# --- a real pair on a tiny model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered_pair(tiny_sd, trained_run, subject_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("interp")
    model_json = out / "model.json"
    model_json.write_text(json.dumps({"model": str(tiny_sd), "family": "sd"}))
    runs = {m: {"a": str(trained_run("sd", m).out_dir / "run.json"),
                "b": str(trained_run("sd", m, initializer="cat", seed=5).out_dir / "run.json")}
            for m in ("dti", "ti")}
    manifest = out / "pair" / "manifest.parquet"
    render_pair(runs, str(model_json), str(manifest), pair="toy+kitty", labels={"backbone": "tiny_sd"},
                schemes={"dti": ["slerp"], "ti": ["lerp", "slerp"]}, t=[0.0, 0.5, 1.0], prompts=["a photo of a {}"],
                seeds=[3], sample={"steps": 2, "resolution": 64, "batch_size": 4, "guidance_scale": 5.0},
                neutral="object", device="cpu")
    return runs, manifest


def test_blends_are_written_loadable_and_sampled(rendered_pair, tiny_sd):
    runs, manifest_path = rendered_pair
    manifest = pd.read_parquet(manifest_path)
    assert len(manifest) == 3 * 3  # (dti slerp, ti lerp, ti slerp) x 3 t x 1 prompt x 1 seed
    assert set(manifest["neutral_prompt"]) == {"a photo of a object"}
    for row in manifest.itertuples():
        folder = manifest_path.parent / row.embedding
        placeholder, vectors = load_diffusers(folder.parent, ["clip_l"])
        assert placeholder == "<toy+kitty>"
        _, a = load_diffusers(str(runs[row.method]["a"]).removesuffix("run.json"), ["clip_l"])
        _, b = load_diffusers(str(runs[row.method]["b"]).removesuffix("run.json"), ["clip_l"])
        m = json.loads(open(runs["dti"]["a"]).read())["magnitudes"].get("clip_l") if row.method == "dti" else None
        torch.testing.assert_close(vectors["clip_l"], interpolate_rows(a["clip_l"], b["clip_l"], row.t, row.scheme, m))
        singles = [p for p in folder.parent.glob("*.safetensors") if not p.name.startswith("learned_embeds")]
        assert len(singles) == 1
        with Image.open(manifest_path.parent / row.image) as image:
            assert image.size == (64, 64)
        expected_ratio = vectors["clip_l"].norm(dim=-1).mean().item() / json.loads(
            open(runs["dti"]["a"]).read())["vocab_norms"]["clip_l"]["mean"]
        assert row.norm_ratio == pytest.approx(expected_ratio, rel=1e-5)
    dti = manifest[manifest["method"] == "dti"]
    assert dti["norm_ratio"].to_numpy() == pytest.approx(np.ones(3), abs=1e-5)


def test_blend_at_t0_renders_the_same_image_as_token_a(rendered_pair, tiny_sd, tmp_path):
    """The blend path loads rows the way the benchmark does: at t = 0 a lerp IS token A, so the image must
    be A's own image for the same prompt and seed."""
    from conftest import fresh_backbone

    from dti.prompts import render
    from dti.sample import SampleJob, SampleSettings, generate, load_learned_token

    runs, manifest_path = rendered_pair
    manifest = pd.read_parquet(manifest_path)
    row = manifest[(manifest["method"] == "ti") & (manifest["scheme"] == "lerp") & (manifest["t"] == 0.0)].iloc[0]
    backbone = fresh_backbone(tiny_sd)
    placeholder = load_learned_token(backbone, str(runs["ti"]["a"]).removesuffix("run.json"))
    generate(backbone, [SampleJob(render(row.prompt, placeholder), int(row.seed), tmp_path / "a.png")],
             SampleSettings(steps=2, resolution=64, batch_size=4, guidance_scale=5.0), progress=False)
    ours = np.asarray(Image.open(manifest_path.parent / row.image), dtype=np.int16)
    reference = np.asarray(Image.open(tmp_path / "a.png"), dtype=np.int16)
    assert np.abs(ours - reference).max() <= 1  # same embedding, same seed: the same picture


def test_scores_compare_each_image_with_both_subjects(rendered_pair, subject_dir, tmp_path):
    from dti.subjects import prepare_subject

    _, manifest_path = rendered_pair
    photos = sorted(subject_dir.glob("*.png"))
    prepare_subject(photos[:2], tmp_path / "a", name="toy", class_noun="toy", kind="object")
    prepare_subject(photos[2:], tmp_path / "b", name="kitty", class_noun="cat", kind="live")
    out = tmp_path / "scores.parquet"
    metrics = {"dino": {"backend": "timm", "model": "vit_small_patch16_224.dino", "pretrained": False,
                        "image_size": 64},
               "clip": {"backend": "open_clip", "model": "ViT-B-32", "pretrained": None}}
    score_pair(str(manifest_path), str(tmp_path / "a/subject.json"), str(tmp_path / "b/subject.json"), str(out),
               metric_specs=metrics, device="cpu")
    scores = pd.read_parquet(out)
    assert len(scores) == len(pd.read_parquet(manifest_path))
    for column in ("sim_a", "sim_b", "text"):
        assert scores[column].between(-1, 1).all() and scores[column].notna().all()
    assert (scores["sim_a"] != scores["sim_b"]).any()  # two different reference sets
    assert scores["image_metric"].iloc[0].startswith("dino (timm:vit_small_patch16_224.dino")
    assert not math.isnan(interpolation_tables(scores)["summary"]["text_mean"].iloc[0])
