"""Concept interpolation between two learned tokens, and how smoothly the images follow.

Paths, per text encoder and vector (row by row; both tokens need the same number of vectors):
- "slerp" for DTI: e(t) = m * slerp(a, b, t), the great-circle path between the two directions at the
  fixed norm m the tokens were trained at;
- "slerp" for TI and CrossInit: the same path of directions with the norm interpolated linearly,
  |e(t)| = (1 - t) |a| + t |b| (applying slerp to TI too keeps the comparison fair);
- "lerp" for TI and CrossInit: (1 - t) a + t b, the plain average, whose norm sags between two vectors
  that point apart.

Smoothness figures, per path (a pair, method, scheme, prompt and seed; t sorted, n steps between the
n + 1 values), with sim_a(t) and sim_b(t) the image's mean cosine similarity to the reference photos of
A and B, and progress(t) = sim_a(t) - sim_b(t):
- max_jump: the largest |progress(t_i+1) - progress(t_i)| as a share of their sum, the whole path's
  change. An even path gives 1/n, all of the change in one step gives 1. Lower is smoother.
- monotone_a / monotone_b: 1 if sim_a never rises (sim_b never falls) along t, else 0; their mean over
  paths is the share of monotone paths.
- text_dip: the mean text fidelity of the two ends minus the lowest text fidelity along the path: how
  much of the prompt the blends lose on the way (0 when no blend is worse than the ends).
- norm_mid: |e(t)| / (the vocabulary's mean norm) at the t nearest 0.5, averaged over encoders and
  vectors: where the path sits against the vocabulary half-way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dti.errors import DtiError

SCHEMES = ("lerp", "slerp")


def schemes_for(on_sphere: bool) -> tuple[str, ...]:
    """DTI tokens live on a sphere of radius m: slerp only. Free vectors get both paths."""
    return ("slerp",) if on_sphere else SCHEMES


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    methods: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.a}+{self.b}"  # "+" never occurs in a subject name, so the name splits back


@dataclass(frozen=True)
class InterpolationPlan:
    pairs: tuple[Pair, ...]
    t: tuple[float, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    neutral: str


def parse_interpolation(config: dict | None, subjects: Iterable[str], methods: Iterable[str]) -> InterpolationPlan:
    """Check the `interpolation` config against the subjects and trained methods; errors name the key."""
    from dti.methods import get_method, token_only
    from dti.prompts import analysis_prompts_and_seeds

    config = config or {}
    subjects, trained = list(subjects), list(methods)
    # A method that trains an adapter beside its token is not its token alone: a blend of two subjects'
    # tokens has no adapter to go with it, so such methods are not interpolated.
    methods = token_only(trained)

    def check(method: str, where: str) -> None:
        if method in trained and get_method(method).adapter is not None:
            raise DtiError(f"{where}: {method!r} trains an adapter beside its token; a blend of two subjects' "
                           "tokens has no adapter to go with it")
        if method not in methods:
            raise DtiError(f"{where}: unknown method {method!r}; trained methods: {methods}")

    default_methods = config.get("methods") or methods
    for i, method in enumerate(default_methods):
        check(method, f"interpolation.methods[{i}]")
    pairs, seen = [], set()
    for i, raw in enumerate(config.get("pairs") or []):
        where = f"interpolation.pairs[{i}]"
        for end in ("a", "b"):
            if raw.get(end) not in subjects:
                raise DtiError(f"{where}.{end}: unknown subject {raw.get(end)!r}; known: {sorted(subjects)}")
        if raw["a"] == raw["b"]:
            raise DtiError(f"{where}: a and b are both {raw['a']!r}; a pair needs two subjects")
        pair_methods = raw.get("methods") or default_methods
        for j, method in enumerate(pair_methods):
            check(method, f"{where}.methods[{j}]")
        pair = Pair(raw["a"], raw["b"], tuple(dict.fromkeys(pair_methods)))
        if pair.name in seen:
            raise DtiError(f"{where}: the pair {pair.name} appears twice")
        seen.add(pair.name)
        pairs.append(pair)
    t = [float(v) for v in config.get("t", (0.0, 0.25, 0.5, 0.75, 1.0))]
    for i, value in enumerate(t):
        if not 0.0 <= value <= 1.0:
            raise DtiError(f"interpolation.t[{i}]: {value} is outside [0, 1]")
    if len(set(t)) < 2:
        raise DtiError(f"interpolation.t: give at least two different values in [0, 1], got {t}")
    prompts, seeds = analysis_prompts_and_seeds(config, "interpolation")
    neutral = str(config.get("neutral", "thing")).strip()
    if not neutral:
        raise DtiError("interpolation.neutral: give a noun such as 'thing'")
    return InterpolationPlan(tuple(pairs), tuple(sorted(set(t))), tuple(prompts), tuple(seeds), neutral)


# --- the paths ---------------------------------------------------------------------------------------
def interpolate_rows(a, b, t: float, scheme: str, magnitude: float | None = None):
    """One encoder's rows [k, d] at t. `magnitude` (DTI's m) fixes the norm of the slerp path."""
    import torch

    from dti.sphere import lerp, slerp

    a, b = a.double(), b.double()
    if scheme == "lerp":
        return lerp(a, b, t).float()
    if scheme != "slerp":
        raise DtiError(f"unknown interpolation scheme {scheme!r}; known: {SCHEMES}")
    if magnitude is not None:
        norm = torch.full_like(a[:, :1], float(magnitude))
    else:
        norm = lerp(a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True), t)
    return (norm * slerp(a, b, t)).float()


def interpolate_token(a: dict, b: dict, t: float, scheme: str, magnitudes: dict | None = None, *,
                      what: str = "pair") -> dict:
    """Every encoder's rows of two tokens ({slot: [k, d]}) at t, row by row."""
    if set(a) != set(b):
        raise DtiError(f"{what}: the tokens have different text encoders ({sorted(a)} vs {sorted(b)})")
    out = {}
    for slot in a:
        if tuple(a[slot].shape) != tuple(b[slot].shape):
            raise DtiError(f"{what}: {slot} rows differ in shape ({list(a[slot].shape)} vs "
                           f"{list(b[slot].shape)}); interpolate tokens with the same number of vectors")
        m = (magnitudes or {}).get(slot)
        out[slot] = interpolate_rows(a[slot], b[slot], t, scheme, m)
    return out


def check_pair_runs(run_a: dict, run_b: dict, what: str) -> None:
    """Two training runs can be interpolated: the same base model and the same vectors per encoder."""
    for key in ("model", "family"):
        if run_a.get(key) != run_b.get(key):
            raise DtiError(f"{what}: the tokens come from different backbones ({run_a.get(key)} vs {run_b.get(key)})")
    counts_a = {slot: len(tokens) for slot, tokens in run_a["tokens"].items()}
    counts_b = {slot: len(tokens) for slot, tokens in run_b["tokens"].items()}
    if counts_a != counts_b:
        raise DtiError(f"{what}: the tokens have different numbers of vectors ({counts_a} vs {counts_b}); give "
                       "both subjects initializers of the same token length")


def t_label(t: float) -> str:
    return f"t{t:g}"  # t0, t0.25, t1


# --- rendering a pair (one GPU job) ------------------------------------------------------------------------
def render_pair(runs: dict[str, dict[str, str]], model_json: str, out_manifest: str, *, pair: str, labels: dict,
                schemes: dict[str, list[str]], t: list[float], prompts: list[str], seeds: list[int],
                sample: dict, neutral: str, device: str | None = None) -> None:
    """Write each method's and scheme's interpolated embeddings (diffusers and single-file formats) and
    render prompts x seeds at every t; the manifest, written last, lists every image.

    runs: {method: {"a": run.json of A, "b": run.json of B}}; schemes: {method: ["lerp", "slerp"] ...}.
    """
    from dti.export import load_diffusers, save_diffusers, save_single_file
    from dti.methods import get_method
    from dti.model_record import load_recorded_backbone
    from dti.prompts import render
    from dti.render_manifest import Shot, prompt_grid, render_manifest
    from dti.sample import SampleSettings, set_token_rows
    from dti.token_names import normalize_placeholder
    from dti.tokens import resolve_magnitude

    a_name, b_name = pair.split("+")
    infos = {m: {end: json.loads(Path(path).read_text()) for end, path in ends.items()} for m, ends in runs.items()}
    for method, info in infos.items():  # before the model loads: a bad pair fails in a second
        check_pair_runs(info["a"], info["b"], f"interpolation pair {pair} ({labels.get('backbone')}, {method})")
    backbone = load_recorded_backbone(model_json, device)
    slots = [s.name for s in backbone.slots]
    vocab_mean = {s.name: resolve_magnitude(s.encoder.get_input_embeddings().weight, "mean") for s in backbone.slots}
    out_dir = Path(out_manifest).parent
    placeholder = normalize_placeholder(f"<{pair}>")

    def path_shots():  # one group per method and scheme: its tokens' rows are set when the group is drawn
        for method, ends in runs.items():
            _, vec_a = load_diffusers(Path(ends["a"]).parent, slots)
            _, vec_b = load_diffusers(Path(ends["b"]).parent, slots)
            # The fixed norm m of a method that keeps it (DTI): its slerp stays at m. Others (TI, CrossInit, a
            # trained or drifting m) blend the norm linearly, whatever m they started from.
            magnitudes = (infos[method]["a"].get("magnitudes") or None) if get_method(method).on_sphere else None
            for scheme in schemes[method]:
                shots = []
                for value in t:
                    vectors = interpolate_token(vec_a, vec_b, value, scheme,
                                                magnitudes if scheme == "slerp" else None,
                                                what=f"interpolation pair {pair} ({method})")
                    folder = out_dir / "embeddings" / f"{method}-{scheme}" / t_label(value)
                    meta = {"dti.analysis.interpolation": json.dumps({"a": a_name, "b": b_name, "t": value, "scheme": scheme,
                                                             "method": method}),
                            "dti.method": method, "dti.base_model": infos[method]["a"]["model"],
                            "dti.family": infos[method]["a"]["family"]}
                    save_diffusers(folder, placeholder, vectors, meta)
                    save_single_file(folder / f"{a_name}-{b_name}-{method}-{scheme}-{t_label(value)}.safetensors",
                                     vectors, meta)
                    # One token per t, so a path's images render in shared batches; the rows (not the token's
                    # name) decide the image.
                    token = set_token_rows(backbone, f"<{pair}@{t_label(value)}>", vectors)
                    norm_ratio = float(np.mean([(r.norm(dim=-1) / vocab_mean[s]).mean().item()
                                                for s, r in vectors.items()]))
                    for prompt_id, template, seed in prompt_grid(prompts, seeds):
                        shots.append(Shot(render(template, token), {
                            **labels, "pair": pair, "a": a_name, "b": b_name, "method": method, "scheme": scheme,
                            "t": value, "prompt_id": prompt_id, "prompt": template,
                            "neutral_prompt": render(template, neutral), "seed": seed,
                            "image": f"{method}-{scheme}/{prompt_id:02d}_{seed}_{t_label(value)}.png",
                            "norm_ratio": norm_ratio,
                            "embedding": str((folder / "learned_embeds.safetensors").relative_to(out_dir))}))
                yield shots

    render_manifest(backbone, path_shots(), out_manifest, SampleSettings(**sample))


# --- scoring a pair ---------------------------------------------------------------------------------------
def score_pair(manifest_path: str, subject_a: str, subject_b: str, out_scores: str, *, metric_specs: dict,
               tiny_dirs: dict[str, str] | None = None, device: str | None = None) -> None:
    """Each image's similarity to A's and to B's reference photos, and its text fidelity to the neutral
    prompt (the template with a plain noun where the blend was)."""
    from dti.analysis.fidelity import Fidelity
    from dti.devices import default_device
    from dti.images import load_image
    from dti.io import write_parquet
    from dti.subjects import load_subject

    manifest = pd.read_parquet(manifest_path)
    refs = {}
    for end, subject_json in (("a", subject_a), ("b", subject_b)):
        folder = Path(subject_json).parent
        refs[end] = [load_image(folder / name) for name in load_subject(folder)["images"]]
    fidelity = Fidelity(metric_specs, device or default_device(), tiny_dirs=tiny_dirs)
    images = fidelity.open_images(Path(manifest_path).parent, manifest["image"])
    scores = manifest.copy()
    scores["sim_a"] = fidelity.subject(images, refs["a"])
    scores["sim_b"] = fidelity.subject(images, refs["b"])
    scores["text"] = fidelity.text(images, list(manifest["neutral_prompt"]))
    scores["image_metric"], scores["text_metric"] = fidelity.image_label, fidelity.text_label
    write_parquet(out_scores, scores)


# --- smoothness figures -------------------------------------------------------------------------------------
PATH_KEYS = ["backbone", "pair", "method", "scheme", "prompt_id", "seed"]
VARIANT_KEYS = ["backbone", "method", "scheme"]
SUMMARY_COLUMNS = ["sim_a_start", "sim_b_end", "max_jump", "monotone_a", "monotone_b", "text_mean", "text_dip",
                   "norm_mid"]


def path_figures(path: pd.DataFrame) -> dict:
    """The smoothness figures of one path (rows of one PATH_KEYS group), as defined in the module doc."""
    path = path.sort_values("t")
    progress = (path["sim_a"] - path["sim_b"]).to_numpy()
    steps = np.abs(np.diff(progress))
    total = steps.sum()
    text = path["text"].to_numpy()
    mid = path.iloc[int(np.argmin(np.abs(path["t"].to_numpy() - 0.5)))]
    return {"sim_a_start": float(path["sim_a"].iloc[0]), "sim_b_end": float(path["sim_b"].iloc[-1]),
            "max_jump": float(steps.max() / total) if total > 0 else float("nan"),
            "monotone_a": float(np.all(np.diff(path["sim_a"].to_numpy()) <= 0)),
            "monotone_b": float(np.all(np.diff(path["sim_b"].to_numpy()) >= 0)),
            "text_mean": float(text.mean()), "text_dip": float((text[0] + text[-1]) / 2 - text.min()),
            "norm_mid": float(mid["norm_ratio"]), "n_steps": len(path) - 1}


def interpolation_tables(scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """per_t: means along t per pair and variant (the curves); paths: each path's figures; summary: the
    figures averaged over pairs, prompts and seeds per backbone, method and scheme."""
    if scores.empty:
        raise DtiError("interpolation scores: no rows")
    per_t = (scores.groupby(["backbone", "pair", "method", "scheme", "t"], sort=True)
             .agg(sim_a=("sim_a", "mean"), sim_b=("sim_b", "mean"), text=("text", "mean"),
                  norm_ratio=("norm_ratio", "mean"), n_images=("image", "size")).reset_index())
    paths = pd.DataFrame([{**dict(zip(PATH_KEYS, key, strict=True)), **path_figures(group)}
                          for key, group in scores.groupby(PATH_KEYS, sort=True)])
    summary = paths.groupby(VARIANT_KEYS, sort=True)[SUMMARY_COLUMNS].mean().reset_index()
    summary["n_paths"] = paths.groupby(VARIANT_KEYS, sort=True).size().to_numpy()
    summary["n_steps"] = paths.groupby(VARIANT_KEYS, sort=True)["n_steps"].first().to_numpy()
    labels = scores[["image_metric", "text_metric"]].drop_duplicates()
    summary["image_metric"] = labels["image_metric"].iloc[0]
    summary["text_metric"] = labels["text_metric"].iloc[0]
    return {"per_t": per_t, "paths": paths, "summary": summary}


_LATEX_HEADERS = {"sim_a_start": r"Sim.\ A @0 $\uparrow$", "sim_b_end": r"Sim.\ B @1 $\uparrow$",
                  "max_jump": r"Max jump $\downarrow$", "monotone_a": r"Mono.\ A $\uparrow$",
                  "monotone_b": r"Mono.\ B $\uparrow$", "text_mean": r"Text $\uparrow$",
                  "text_dip": r"Text dip $\downarrow$", "norm_mid": r"$|e(0.5)|/m$"}


def summary_latex(summary: pd.DataFrame, *, label: str = "tab:interpolation") -> str:
    """Booktabs table of the summary (needs \\usepackage{booktabs})."""
    from dti.latex import render
    from dti.terms import display_name

    n_steps = sorted(summary["n_steps"].unique())
    caption = (f"Concept interpolation: mean over pairs, prompts and seeds ({int(summary['n_paths'].sum())} paths). "
               f"Sim. A/B: {summary['image_metric'].iloc[0]} similarity to the references of each end; "
               f"text: {summary['text_metric'].iloc[0]} fidelity to the prompt with a neutral noun. "
               f"Max jump: largest step of sim(A) - sim(B) as a share of the path's total change "
               f"(an even path of {n_steps[0]} steps gives {1 / n_steps[0]:.2f}); mono.: share of paths "
               "whose similarity to A only falls (to B only rises); text dip: mean of the ends minus the "
               "lowest text fidelity along the path; |e(0.5)|/m: norm half-way over the vocabulary mean.")
    rows = summary[["backbone", "method", "scheme"]].assign(method=summary["method"].map(display_name))
    cells = summary[SUMMARY_COLUMNS].map(lambda v: f"{v:.3f}" if np.isfinite(v) else None)
    return render(pd.DataFrame(cells.to_numpy(), columns=[_LATEX_HEADERS[c] for c in SUMMARY_COLUMNS],
                               index=pd.MultiIndex.from_frame(rows, names=["Backbone", "Method", "Path"])),
                  caption=caption, label=label)


# --- every pair's outputs (one local job) -------------------------------------------------------------------
def write_outputs(score_files: list[str], subject_jsons: dict[str, str], out_dir: str) -> None:
    """The summary table (Parquet + LaTeX), each path's figures, and per backbone and pair the curves and
    the strip of the first prompt and seed (PNG + PDF, their numbers as Parquet beside them)."""
    from dti.figures import save_figure
    from dti.figures.interpolation import curves_figure, strip_figure
    from dti.io import write_parquet, write_text

    frames = []
    for path in score_files:
        frame = pd.read_parquet(path)
        frames.append(frame.assign(image_dir=str(Path(path).parent)))
    scores = pd.concat(frames, ignore_index=True)
    tables = interpolation_tables(scores.drop(columns="image_dir"))
    latex = summary_latex(tables["summary"])  # rendered first: a failure leaves no half-written pair
    out = Path(out_dir)
    for name, table in tables.items():
        write_parquet(out / f"{name}.parquet", table)
    write_text(out / "summary.tex", latex)
    refs = {}
    for name, subject_json in subject_jsons.items():
        folder = Path(subject_json).parent
        refs[name] = [folder / image for image in json.loads(Path(subject_json).read_text())["images"]]
    image_metric, text_metric = tables["summary"][["image_metric", "text_metric"]].iloc[0]
    for (backbone, pair), part in scores.groupby(["backbone", "pair"], sort=True):
        folder = out / backbone / pair
        a, b = pair.split("+")
        curves = tables["per_t"][(tables["per_t"]["backbone"] == backbone) & (tables["per_t"]["pair"] == pair)]
        write_parquet(folder / "curves.parquet", curves)
        save_figure(curves_figure(curves, title=f"{a} -> {b} on {backbone}", image_metric=image_metric,
                                  text_metric=text_metric), folder / "curves.png", folder / "curves.pdf")
        first = part[(part["prompt_id"] == part["prompt_id"].min()) & (part["seed"] == part["seed"].min())]
        write_parquet(folder / "strip.parquet", first.drop(columns="image_dir"))
        prompt = first["prompt"].iloc[0].replace("{}", "<blend>")
        save_figure(strip_figure(first, Path(first["image_dir"].iloc[0]), refs[a], refs[b],
                                 title=f"{a} -> {b} on {backbone}: \"{prompt}\", seed {first['seed'].iloc[0]}"),
                    folder / "strip.png", folder / "strip.pdf")
