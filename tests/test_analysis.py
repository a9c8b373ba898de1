"""The analyses and the report's files, in-process: training curves and vocabulary norms, the magnitude
sweep on a tiny model, sample grids, checkpoint and HTML tables, and every figure written as PNG and PDF."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILIES, SLOTS, saved_token_table, vocab_mean_norm
from PIL import Image
from safetensors.torch import save_file

from dti.analysis.magnitude import check_sweep, render_sweep, score_sweep, sweep_table
from dti.analysis.norms import training_curves, vocabulary_and_learned_norms
from dti.errors import DtiError
from dti.report import grid_cells, table_html, write_sample_grids
from dti.vocab import load_vocabularies, read_token_strings, read_token_table, readable

METRICS = {"dino": {"backend": "timm", "model": "vit_small_patch16_224.dino", "pretrained": False, "image_size": 64},
           "clip": {"backend": "open_clip", "model": "ViT-B-32", "pretrained": None}}
SAMPLE = {"steps": 2, "resolution": 64, "batch_size": 8, "guidance_scale": 5.0}


def _record(run, family, method):
    return {"path": str(run.out_dir / "run.json"), "backbone": family, "method": method, "subject": "toy"}


# --- vocabulary ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_vocabulary_is_read_from_the_folder_as_the_encoder_holds_it(family, tiny_models):
    model = tiny_models[family]
    vocabularies = load_vocabularies(model)
    assert sorted(vocabularies) == sorted(SLOTS[family])
    for slot, vocab in vocabularies.items():
        np.testing.assert_array_equal(vocab.table, saved_token_table(model, slot).numpy())
        assert vocab.mean_norm() == pytest.approx(vocab_mean_norm(model, slot), rel=1e-6)
        assert None not in vocab.tokens  # every row kept is an id the tokenizer can produce
    if family == "sdxl":
        assert readable(vocabularies["clip_l"].tokens[vocabularies["clip_l"].tokens.index("dog</w>")]) == "dog"


def test_tokens_read_as_words():
    assert [readable(t) for t in ("dog</w>", "plu", "<|endoftext|>", None)] == ["dog", "plu-", "<|endoftext|>", "?"]
    assert [readable(t, byte_level=False) for t in ("\u2581dog", "gie", "<pad>")] == ["dog", "-gie", "<pad>"]


def test_sharded_encoder_and_vocab_json_are_read(tmp_path):
    table = torch.randn(10, 4)
    encoder = tmp_path / "text_encoder"
    encoder.mkdir()
    save_file({"other.weight": torch.zeros(2)}, str(encoder / "model-00001-of-00002.safetensors"))
    save_file({"text_model.embeddings.token_embedding.weight": table}, str(encoder / "model-00002-of-00002.safetensors"))
    (encoder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "other.weight": "model-00001-of-00002.safetensors",
        "text_model.embeddings.token_embedding.weight": "model-00002-of-00002.safetensors"}}))
    np.testing.assert_array_equal(read_token_table(encoder), table.numpy())
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.json").write_text(json.dumps({"a</w>": 0, "b": 3}))
    assert read_token_strings(tokenizer, 5) == ["a</w>", None, None, "b", None]


def test_a_folder_without_weights_is_named(tmp_path):
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(DtiError, match="text_encoder"):
        read_token_table(tmp_path / "text_encoder")


# --- norm and direction analysis ------------------------------------------------------------------------
def test_curves_follow_the_training_logs(trained_run, tiny_sdxl):
    dti, ti = trained_run("sdxl", "dti"), trained_run("sdxl", "ti")
    curves = training_curves([_record(dti, "tiny_sdxl", "dti"), _record(ti, "tiny_sdxl", "ti")])
    steps = dti.settings.steps
    assert len(curves) == 2 * steps * 2  # 2 methods x steps x (clip_l, clip_g) x 1 vector
    for slot in ("clip_l", "clip_g"):
        part = curves[(curves["method"] == "dti") & (curves["encoder"] == slot)]
        np.testing.assert_allclose(part["norm"], vocab_mean_norm(tiny_sdxl, slot), rtol=1e-5)
        assert part["vocab_norm_mean"].iloc[0] == pytest.approx(vocab_mean_norm(tiny_sdxl, slot), rel=1e-5)
        last = curves[(curves["method"] == "ti") & (curves["encoder"] == slot) & (curves["step"] == steps)]
        assert last["norm"].iloc[0] == pytest.approx(
            next(n["norm"] for n in ti.run["norms"] if n["encoder"] == slot), rel=1e-5)
        assert last["angle_deg"].iloc[0] == pytest.approx(ti.run["final"]["angle_from_init_deg"][slot][0], rel=1e-5)


def test_a_broken_log_line_is_named(trained_run, tmp_path):
    import shutil

    run = trained_run("sd", "dti")
    copy = tmp_path / "run"
    shutil.copytree(run.out_dir, copy)
    with open(copy / "train_log.jsonl", "a") as log:
        log.write('{"step": 99}\n')
    lines = len((copy / "train_log.jsonl").read_text().splitlines())
    with pytest.raises(DtiError, match=f"train_log.jsonl:{lines}"):
        training_curves([{"path": str(copy / "run.json"), "backbone": "b", "method": "dti", "subject": "s"}])


def test_histogram_data_holds_every_vocabulary_row_and_the_learned_vectors(trained_run, tiny_sd):
    run = trained_run("sd", "ti")
    norms = vocabulary_and_learned_norms(tiny_sd, [_record(run, "tiny_sd", "ti")])
    vocab = norms[norms["kind"] == "vocabulary"]
    table = saved_token_table(tiny_sd, "clip_l").double().norm(dim=-1)
    assert len(vocab) == int((table > 0).sum())
    assert vocab["norm"].mean() == pytest.approx(vocab_mean_norm(tiny_sd, "clip_l"), rel=1e-9)
    learned = norms[norms["kind"] == "learned"]
    assert learned["norm"].tolist() == pytest.approx([n["norm"] for n in run.run["norms"]])


# --- magnitude sweep ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "needle"), [
    ({"scales": []}, "analysis.magnitude.scales: the list is empty"),
    ({"scales": [1, -2]}, "analysis.magnitude.scales[1]"),
    ({"prompts": []}, "analysis.magnitude.prompts: the list is empty"),
    ({"prompts": ["no slot"]}, "analysis.magnitude.prompts[0]"),
])
def test_bad_sweep_settings_are_named(config, needle):
    with pytest.raises(DtiError) as err:
        check_sweep(config)
    assert needle in str(err.value)


@pytest.fixture(scope="module")
def sweep(tiny_sd, trained_run, subject_dir, tmp_path_factory):
    from dti.subjects import prepare_subject

    out = tmp_path_factory.mktemp("sweep")
    prepare_subject(sorted(subject_dir.glob("*.png")), out / "toy", name="toy", class_noun="toy", kind="object")
    (out / "model.json").write_text(json.dumps({"model": str(tiny_sd), "family": "sd"}))
    runs = [{"path": str(trained_run("sd", m).out_dir / "run.json"), "method": m, "subject": "toy"} for m in ("dti", "ti")]
    subjects = {"toy": str(out / "toy" / "subject.json")}
    manifest = out / "sweep" / "manifest.parquet"
    render_sweep(runs, subjects, str(out / "model.json"), str(manifest), labels={"backbone": "tiny_sd"},
                 scales=[0.5, 1.0, 4.0], prompts=["a photo of a {}"], seeds=[2], sample=SAMPLE, device="cpu")
    return runs, subjects, manifest


def test_sweep_renders_every_token_at_every_scale(sweep, tiny_sd, trained_run):
    runs, _, manifest_path = sweep
    manifest = pd.read_parquet(manifest_path)
    assert len(manifest) == 2 * 3
    assert set(manifest["eval_prompt"]) == {"a photo of a toy"}
    ti_ratio = trained_run("sd", "ti").run["norms"][0]["norm"] / vocab_mean_norm(tiny_sd, "clip_l")
    assert manifest.loc[manifest["method"] == "ti", "trained_ratio"].iloc[0] == pytest.approx(ti_ratio, rel=1e-5)
    assert manifest.loc[manifest["method"] == "dti", "trained_ratio"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_sweep_at_m_is_the_token_as_trained_for_dti_and_rescaled_for_ti(sweep, tiny_sd, tmp_path):
    """DTI's token already has norm m, and TI's rescaled to m is the ti_rescaled ablation: at scale 1 the
    sweep must render exactly the benchmark's images of those two."""
    from conftest import fresh_backbone

    from dti.prompts import render
    from dti.sample import SampleJob, SampleSettings, generate, load_learned_token

    runs, _, manifest_path = sweep
    manifest = pd.read_parquet(manifest_path)
    for run, rescale in zip(runs, (None, "mean"), strict=True):
        row = manifest[(manifest["method"] == run["method"]) & (manifest["scale"] == 1.0)].iloc[0]
        backbone = fresh_backbone(tiny_sd)
        placeholder = load_learned_token(backbone, str(run["path"]).removesuffix("run.json"), rescale_to=rescale)
        target = tmp_path / f"{run['method']}.png"
        generate(backbone, [SampleJob(render(row.prompt, placeholder), int(row.seed), target)],
                 SampleSettings(**SAMPLE), progress=False)
        ours = np.asarray(Image.open(manifest_path.parent / row.image), dtype=np.int16)
        assert np.abs(ours - np.asarray(Image.open(target), dtype=np.int16)).max() <= 1, run["method"]


def test_sweep_scores_and_table(sweep, tmp_path):
    runs, subjects, manifest_path = sweep
    out = tmp_path / "scores.parquet"
    score_sweep(str(manifest_path), subjects, str(out), metric_specs=METRICS, device="cpu")
    scores = pd.read_parquet(out)
    assert len(scores) == len(pd.read_parquet(manifest_path))
    assert scores[["subject_fidelity", "text_fidelity"]].notna().all().all()
    table = sweep_table(scores)
    assert sorted(table["method"].unique()) == ["dti", "ti"] and sorted(table["scale"].unique()) == [0.5, 1.0, 4.0]
    assert (table["n_subjects"] == 1).all()
    one = scores[(scores["method"] == "ti") & (scores["scale"] == 4.0)]
    assert table.loc[(table["method"] == "ti") & (table["scale"] == 4.0), "text_mean"].iloc[0] == pytest.approx(
        one["text_fidelity"].mean())


def test_sweep_table_averages_subjects_after_their_own_images():
    rows = []
    for subject, values in (("a", [0.1, 0.3]), ("b", [0.5])):
        for seed, v in enumerate(values):
            rows.append({"backbone": "x", "method": "ti", "subject": subject, "scale": 2.0, "seed": seed,
                         "subject_fidelity": v, "text_fidelity": 1 - v, "trained_ratio": 4.0})
    table = sweep_table(pd.DataFrame(rows))
    assert table["subject_mean"].iloc[0] == pytest.approx((0.2 + 0.5) / 2)
    assert table["subject_std"].iloc[0] == pytest.approx(np.std([0.2, 0.5], ddof=1))


# --- report files -------------------------------------------------------------------------------------------
def _manifest(folder, method, steps=(None,)):
    rows = []
    for step in steps:
        for prompt_set in ("simple", "hard"):
            for prompt_id in range(3):
                for seed in range(3):
                    image = f"{prompt_set}/{prompt_id:03d}_{seed}_{step}.png"
                    (folder / image).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (32, 32), (prompt_id * 80, seed * 80, 100)).save(folder / image)
                    rows.append({"prompt_set": prompt_set, "prompt_id": prompt_id, "prompt": f"a <s> {prompt_id}",
                                 "seed": seed, "image": image, "step": step})
    frame = pd.DataFrame(rows)
    if steps == (None,):
        frame = frame.drop(columns="step")
    frame.to_parquet(folder / "manifest.parquet")
    return {"path": str(folder / "manifest.parquet"), "method": method}


def test_grid_shows_the_first_prompts_and_seeds_of_the_last_checkpoint(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cells = grid_cells([_manifest(tmp_path / "a", "dti"), _manifest(tmp_path / "b", "ti", steps=(50, 100))],
                       prompts_per_set=2, seeds=2)
    assert len(cells) == 2 * 2 * 2 * 2  # methods x prompt sets x prompts x seeds
    assert set(cells["prompt_id"]) == {0, 1} and set(cells["seed"]) == {0, 1}
    assert all(p.endswith("_100.png") for p in cells.loc[cells["method"] == "ti", "path"])


def test_sample_grids_are_written_as_png_and_pdf(tmp_path, subject_dir):
    from dti.subjects import prepare_subject

    prepare_subject(sorted(subject_dir.glob("*.png")), tmp_path / "toy", name="toy", class_noun="toy", kind="object")
    manifests = []
    for method in ("dti", "ti"):
        (tmp_path / method).mkdir()
        manifests.append({**_manifest(tmp_path / method, method), "backbone": "sd", "subject": "toy"})
    write_sample_grids(manifests, {"toy": str(tmp_path / "toy" / "subject.json")}, str(tmp_path / "grids"),
                       methods=["ti", "dti", "crossinit"], prompts_per_set=1, seeds=2, thumb=64)
    with Image.open(tmp_path / "grids" / "sd" / "toy.png") as grid:
        assert grid.width > 300 and len(np.unique(np.asarray(grid.convert("L")))) > 10
    assert (tmp_path / "grids" / "sd" / "toy.pdf").read_bytes().startswith(b"%PDF")
    assert not list((tmp_path / "grids").rglob("*.tmp"))


def test_checkpoint_figure_is_drawn_from_the_over_steps_table(tmp_path):
    """The report's figure over checkpoints reads aggregate's over_steps table: one home for those numbers."""
    from dti.report import write_checkpoint_sweep
    from dti.tables import build_tables

    scores = pd.DataFrame([{"backbone": "sd", "method": m, "step": step, "subject": s, "subject_kind": "object",
                            "prompt_set": p, "prompt_id": 0, "seed": 0, "image": f"{m}{step}{s}{p}.png",
                            "metric": "dino", "metric_model": "m", "value": v + step / 1000}
                           for m in ("dti", "ti") for step in (50, 100) for s, v in (("a", 0.1), ("b", 0.3))
                           for p in ("simple", "complex")])
    over_steps = build_tables(scores, None, summary_prompt_set="simple")["over_steps"]
    over_steps.to_parquet(tmp_path / "over_steps.parquet")
    write_checkpoint_sweep(str(tmp_path / "over_steps.parquet"), str(tmp_path / "checkpoints"))
    with Image.open(tmp_path / "checkpoints.png") as image:
        assert image.width > 200 and len(np.unique(np.asarray(image.convert("L")))) > 5
    assert (tmp_path / "checkpoints.pdf").read_bytes().startswith(b"%PDF")
    # What it draws: one panel per backbone, prompt set and metric, a line per method, a point per step.
    from dti.figures.report import checkpoint_figure

    fig = checkpoint_figure(over_steps, title="k")
    axes = [ax for ax in fig.axes if ax.lines]
    assert sorted(ax.get_title() for ax in axes) == ["sd, complex: DINO", "sd, simple: DINO"]
    for ax in axes:
        assert sorted(line.get_label() for line in ax.lines) == ["DTI", "TI"]
        assert all(list(line.get_xdata()) == [50, 100] for line in ax.lines)


def test_html_table_is_wide_with_intervals():
    table = pd.DataFrame({"backbone": ["sd"] * 2, "method": ["dti"] * 2, "metric": ["dino", "clip_t"],
                          "metric_model": ["m1", "m2"], "mean": [0.5, 0.25], "ci_low": [0.4, 0.2],
                          "ci_high": [0.6, 0.3], "n_subjects": [2, 2], "n_images": [8, 8]})
    page = table_html(table, title="summary & co", note="note <b>")
    assert "<table" in page and "summary &amp; co" in page and "note &lt;b&gt;" in page
    # each cell is mean ± half-width of its interval, as in the LaTeX; the bounds are in the cell's title
    assert "0.500 ± 0.100" in page and "0.250 ± 0.050" in page
    assert 'title="95% interval [0.400, 0.600]"' in page and 'title="95% interval [0.200, 0.300]"' in page
    assert page.count("<tr") == 2  # header + one row: the two metrics are columns
    assert "<td>DTI</td>" in page and "<th>DINO</th>" in page and "<th>CLIP-T</th>" in page  # display names


# --- figures ------------------------------------------------------------------------------------------------
def test_every_analysis_figure_is_written_as_png_and_pdf(tmp_path):
    from dti.figures import save_figure
    from dti.figures.interpolation import curves_figure
    from dti.figures.norms import curves_figure as norm_curves
    from dti.figures.norms import histogram_figure, magnitude_figure
    from dti.figures.report import checkpoint_figure

    ts = [0.0, 0.5, 1.0]
    per_t = pd.DataFrame([{"method": m, "scheme": s, "t": t, "sim_a": 0.9 - t / 2, "sim_b": 0.4 + t / 2,
                           "text": 0.3, "norm_ratio": 1.0 if m == "dti" else 5 - t}
                          for m, s in (("dti", "slerp"), ("ti", "lerp")) for t in ts])
    curves = pd.DataFrame([{"method": m, "encoder": "clip_l", "subject": "a", "vector": 0, "step": k,
                            "norm": 0.39 * (1 + k * (m == "ti")), "angle_deg": 3.0 * k, "vocab_norm_mean": 0.39,
                            "vocab_norm_std": 0.02} for m in ("dti", "ti") for k in range(1, 5)])
    norms = pd.DataFrame([{"kind": "vocabulary", "encoder": "clip_l", "method": None, "norm": v}
                          for v in np.random.default_rng(0).normal(0.39, 0.02, 500)]
                         + [{"kind": "learned", "encoder": "clip_l", "method": "ti", "norm": 2.0}])
    sweep = pd.DataFrame([{"method": m, "scale": s, "subject_mean": 0.5, "subject_std": 0.1, "text_mean": 0.3,
                           "text_std": 0.05, "trained_ratio": 1.0 if m == "dti" else 5.0}
                          for m in ("dti", "ti") for s in (0.5, 1, 2)])
    steps = pd.DataFrame([{"backbone": "sd", "prompt_set": "simple", "method": "dti", "step": k, "metric": "dino",
                           "metric_model": "m", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6} for k in (50, 100)])
    figures = {"interp": curves_figure(per_t, title="t", image_metric="dino (m)", text_metric="clip_t (m)"),
               "curves": norm_curves(curves, title="c"), "hist": histogram_figure(norms, title="h"),
               "sweep": magnitude_figure(sweep, title="s", image_metric="dino (m)", text_metric="clip_t (m)"),
               "steps": checkpoint_figure(steps, title="k")}
    for name, fig in figures.items():
        save_figure(fig, tmp_path / f"{name}.png", tmp_path / f"{name}.pdf")
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.width > 200 and len(np.unique(np.asarray(image.convert("L")))) > 5, name
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF"), name
    assert not list(tmp_path.glob(".*.tmp"))
