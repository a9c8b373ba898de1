"""The mechanism analyses as jobs: every trained token of one backbone measured inside its text encoder(s).

Each function here is one workflow job's work (rules/mechanism.smk; definitions in docs/analysis.md,
"Mechanism"): it loads the backbone once, installs every run's learned rows, measures, and writes a Parquet
table with its figure (PNG + PDF). The measurements themselves live in dti.analysis.positional,
dti.analysis.residual, dti.analysis.directions, dti.analysis.attention and dti.analysis.decoding.

Tokens. A run's rows are installed under a name of their own (`<mechanism-{method}-{subject}>`), since every
method's token of a subject shares the subject's placeholder. Beside the methods, a reference token named
"vocabulary" per subject holds the vocabulary rows of the subject's initializer (its class noun, unless
the run started elsewhere), installed the same way: an ordinary word measured by the same code path.

Pooling. A method's numbers pool its subjects: the probe scores every row of every subject's token at
every position; the residual ratio and the contextualization distance are bootstrapped over (subject,
prompt) units, and a distance compares two prompts of the same subject only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dti.errors import DtiError

SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
VOCABULARY = "vocabulary"  # the reference token's method label: the initializer's own vocabulary rows
PROBE_DEFAULTS = {"steps": 1000, "batch_size": 32, "seed": 0}
DIRECTIONS_DEFAULTS = {"sample": 2000, "nearest": 5}
ATTENTION_DEFAULTS = {"prompts": ["a photo of a {}"], "scales": [4.0], "seeds": [0]}
N_BOOT = 1000


# --- settings -------------------------------------------------------------------------------------------
def _positive_scales(values, key: str) -> list[float]:
    scales = [float(s) for s in values]
    if not scales:
        raise DtiError(f"{key}: the list is empty")
    for i, scale in enumerate(scales):
        if not (scale > 0 and math.isfinite(scale)):
            raise DtiError(f"{key}[{i}]: {scale} is not a positive number")
    return sorted(set(scales))


def check_mechanism(config: dict) -> dict:
    """The `analysis.mechanism` settings, checked, with defaults; errors name the key."""
    from dti.prompts import analysis_prompts_and_seeds, check_template

    key = "analysis.mechanism"
    scales = _positive_scales(config.get("scales", SCALES), f"{key}.scales")
    prompts = config.get("prompts")
    if prompts is not None:
        if len(prompts) < 2:
            raise DtiError(f"{key}.prompts: give at least two templates (contextualization compares prompts)")
        for i, prompt in enumerate(prompts):
            check_template(prompt, f"{key}.prompts[{i}]")
    probe = {**PROBE_DEFAULTS, **(config.get("probe") or {})}
    for name in ("steps", "batch_size"):
        if int(probe[name]) < 1:
            raise DtiError(f"{key}.probe.{name}: {probe[name]} is not at least 1")
    directions = {**DIRECTIONS_DEFAULTS, **(config.get("directions") or {})}
    for name in ("sample", "nearest"):
        if int(directions[name]) < 1:
            raise DtiError(f"{key}.directions.{name}: {directions[name]} is not at least 1")
    attention = {**ATTENTION_DEFAULTS, **(config.get("attention") or {})}
    attention_prompts, seeds = analysis_prompts_and_seeds(attention, f"{key}.attention")
    attention = {"prompts": attention_prompts, "seeds": seeds, "subjects": attention.get("subjects"),
                 "scales": _positive_scales(attention["scales"], f"{key}.attention.scales")}
    return {"scales": scales, "prompts": prompts, "probe": probe, "directions": directions,
            "attention": attention}


def measured_templates(templates: Sequence[str] | None) -> list[str]:
    """The templates the residual and contextualization jobs fill with each token: the given ones, or the
    project's mechanism prompts (src/dti/data/mechanism_prompts.txt), which put the token after a clause
    that varies. CLIP's encoders (and Gemma) attend causally: the output at the token depends only on the
    words before it, so prompts that all begin "a {}" (as the complex prompt set does) would measure no
    contextualization at all, whatever the token."""
    from dti.data import DATA_DIR
    from dti.prompts import read_prompt_file

    return list(templates) if templates else read_prompt_file(DATA_DIR / "mechanism_prompts.txt")


# --- tokens ---------------------------------------------------------------------------------------------
def run_tokens(runs: list[dict], slots: Sequence[str]) -> list[dict]:
    """Per run ({"path": run.json, "method", "subject"}): its method, subject, initializer and final rows
    {slot: [k, d] fp32}."""
    from dti.export import load_diffusers

    tokens = []
    for run in runs:
        record = json.loads(Path(run["path"]).read_text())
        _, vectors = load_diffusers(Path(run["path"]).parent, list(slots))
        tokens.append({"method": run["method"], "subject": run["subject"],
                       "initializer": record["settings"]["initializer"],
                       "vectors": {s: v.detach().float().cpu() for s, v in vectors.items()}})
    if not tokens:
        raise DtiError("no trained run to measure on this backbone")
    return tokens


def vocabulary_tokens(backbone, tokens: list[dict]) -> list[dict]:
    """One reference token per subject: the vocabulary rows of its initializer, in every slot."""
    from dti.tokens import initializer_ids

    seen, out = set(), []
    for token in tokens:
        if token["subject"] in seen:
            continue
        seen.add(token["subject"])
        vectors = {}
        for slot in backbone.slots:
            ids = initializer_ids(slot.tokenizer, token["initializer"])
            table = slot.encoder.get_input_embeddings().weight
            vectors[slot.name] = table[ids].detach().float().cpu()
        out.append({"method": VOCABULARY, "subject": token["subject"], "initializer": token["initializer"],
                    "vectors": vectors})
    return out


def install(backbone, token: dict) -> str:
    """Install the token's rows under its own name; returns its name (what dti.analysis.residual resolves)."""
    from dti.sample import set_token_rows

    name = f"<mechanism-{token['method']}-{token['subject']}>"
    set_token_rows(backbone, name, token["vectors"])
    return name


def token_text(backbone, name: str, k: int) -> str:
    """How the installed token's k pieces are written in a prompt (each piece its own tokenizer entry)."""
    from dti.token_names import placeholder_tokens

    return backbone.prompt_text(placeholder_tokens(name, k))


# --- 1. positional attenuation --------------------------------------------------------------------------
def probe_slots(backbone) -> list:
    """The backbone's text encoders that add a learned position row to each token (family table)."""
    from dti.families import check_family

    kinds = {s.name: s.positions for s in check_family(backbone.family).slots}
    return [slot for slot in backbone.slots if kinds[slot.name] == "absolute"]


def write_probes(model_json: str, out_file: str, *, steps: int, batch_size: int, seed: int,
                 device: str | None = None) -> None:
    """Train one position probe per text encoder with absolute positions (dti.analysis.positional), on the
    project's corpus (`probe_corpus`), seeded; all of them in one safetensors file, their recipes in its
    metadata."""
    import torch

    from dti.analysis.positional import probe_corpus, train_probe
    from dti.model_record import load_recorded_backbone
    from dti.tensor_files import write_safetensors

    backbone = load_recorded_backbone(model_json, device)
    slots = probe_slots(backbone)
    if not slots:
        raise DtiError(f"backbone family {backbone.family}: no text encoder adds absolute positions, so the "
                       "position probe does not apply (docs/analysis.md)")
    corpus = probe_corpus()
    tensors, meta = {}, {}
    for slot in slots:
        with torch.enable_grad():
            probe = train_probe(slot.encoder, slot.tokenizer, corpus, seed=seed, steps=steps, batch_size=batch_size)
        tensors.update({f"{slot.name}.{k}": v.contiguous() for k, v in probe.state.items()})
        meta[slot.name] = probe.meta
    write_safetensors(out_file, tensors, {"dti.probes": json.dumps(meta, sort_keys=True)}, as_float=True)


def read_probes(path: str) -> dict:
    """{slot: Probe} from write_probes' file."""
    from safetensors import safe_open

    from dti.analysis.positional import Probe

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["dti.probes"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return {slot: Probe({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == slot}, info)
            for slot, info in meta.items()}


def positional_table(backbone, probes: dict, tokens: list[dict], scales: Sequence[float], *,
                     labels: dict) -> pd.DataFrame:
    """Probe accuracy per encoder: the vocabulary's own tokens as they are and rescaled to k x m, and every
    method's learned rows (all subjects pooled) at every real position, as trained and rescaled."""
    import torch

    from dti.analysis.positional import HELD_OUT_NOUNS, _tokenize, probe_corpus, scale_sweep
    from dti.analysis.residual import vocab_mean_norm

    prompts = probe_corpus(HELD_OUT_NOUNS)
    frames = []
    for slot in probe_slots(backbone):
        m = vocab_mean_norm(slot.encoder)
        learned = {}
        for token in tokens:
            learned.setdefault(token["method"], []).append(token["vectors"][slot.name])
        learned = {method: torch.cat(rows) for method, rows in learned.items()}
        table = scale_sweep(probes[slot.name], slot.encoder, slot.tokenizer, prompts, scales=scales,
                            learned=learned)
        ids, real = _tokenize(slot.encoder, slot.tokenizer, prompts)
        rows = slot.encoder.get_input_embeddings().weight.detach().float().cpu()
        as_is = {"vocabulary": rows[ids[real]].norm(dim=-1).mean().item() / m,
                 **{method: r.norm(dim=-1).mean().item() / m for method, r in learned.items()}}
        table = table.rename(columns={"token": "method"})
        table["norm_ratio"] = [s if not np.isnan(s) else as_is[t] for t, s in zip(table["method"], table["scale"],
                                                                                    strict=True)]
        frames.append(table.assign(**labels, encoder=slot.name))
    if not frames:
        raise DtiError(f"backbone family {backbone.family}: no text encoder for the position probe")
    table = pd.concat(frames, ignore_index=True)
    first = [*labels, "encoder", "method", "scale", "norm_ratio"]
    return table[first + [c for c in table.columns if c not in first]]


def write_positional(probe_file: str, model_json: str, runs: list[dict], out_stem: str, *, labels: dict,
                     scales: Sequence[float], device: str | None = None) -> None:
    """The positional-attenuation table and figure of one backbone (out_stem.parquet, .png, .pdf)."""
    from dti.model_record import load_recorded_backbone

    backbone = load_recorded_backbone(model_json, device)
    tokens = run_tokens(runs, [s.name for s in backbone.slots])
    table = positional_table(backbone, read_probes(probe_file), tokens, scales, labels=labels)
    _write(table, out_stem, "positional_figure",
           f"Position left after the first LayerNorm: {_named(backbone, labels)}")


# --- 2 and 3. residual updates and contextualization ----------------------------------------------------
def encoder_sweeps(backbone, tokens: list[dict], templates: Sequence[str], scales: Sequence[float],
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """dti.analysis.residual.norm_sweep of every token (the vocabulary references included) in every text
    encoder, as trained and at each k x m: the raw residual and distance tables, with `encoder`, `method`,
    `subject` and prompt ids made unique per subject (so a bootstrap over prompts resamples (subject,
    prompt) units and a distance never pairs two subjects)."""
    from dti.analysis.residual import FEATURES, norm_sweep, vocab_mean_norm
    from dti.prompts import render

    residual, context = [], []
    m = {slot.name: vocab_mean_norm(slot.encoder) for slot in backbone.slots}  # before any install grows the tables
    everything = [*tokens, *vocabulary_tokens(backbone, tokens)]
    subjects = {s: i for i, s in enumerate(dict.fromkeys(t["subject"] for t in everything))}
    for token in everything:
        name = install(backbone, token)
        k = next(iter(token["vectors"].values())).shape[0]
        prompts = [render(t, token_text(backbone, name, k)) for t in templates]
        offset = subjects[token["subject"]] * len(prompts)
        for slot in backbone.slots:
            r, c = norm_sweep(slot.encoder, slot.tokenizer, prompts, name, [None, *scales],
                              features=FEATURES[backbone.family], vocab_norm=m[slot.name])
            who = {"encoder": slot.name, "method": token["method"], "subject": token["subject"]}
            residual.append(r.assign(**who, prompt_id=r["prompt_id"] + offset))
            context.append(c.assign(**who, prompt_a=c["prompt_a"] + offset, prompt_b=c["prompt_b"] + offset))
    return pd.concat(residual, ignore_index=True), pd.concat(context, ignore_index=True)


def _method_order(methods) -> list[str]:
    from dti.methods import METHODS

    names = list(dict.fromkeys(methods))
    return ([VOCABULARY] if VOCABULARY in names else []) + [m for m in METHODS if m in names]


def _ratio_of(raw: pd.DataFrame, keys: list[str]) -> pd.Series:
    return raw.groupby(keys, sort=True, dropna=False)["norm_ratio"].mean()


def residual_summary(raw: pd.DataFrame, *, labels: dict, seed: int = 0) -> pd.DataFrame:
    """Per encoder, method and scale (NaN: as trained): the mean residual-update ratio per block (`layer`)
    and over all blocks (`layer` <NA>), with 95% bootstrap intervals over (subject, prompt)."""
    from dti.analysis.residual import summarize

    keys = ["encoder", "method", "scale"]
    per_layer = summarize(raw, "ratio", [*keys, "layer"], n_boot=N_BOOT, seed=seed)
    overall = summarize(raw, "ratio", keys, n_boot=N_BOOT, seed=seed).assign(layer=pd.NA)
    table = pd.concat([per_layer, overall], ignore_index=True)
    table["layer"] = table["layer"].astype("Int64")
    table = table.join(_ratio_of(raw, keys), on=keys)
    return _labelled(table, labels, ["encoder", "method", "scale", "norm_ratio", "layer"])


def context_summary(raw: pd.DataFrame, *, labels: dict, seed: int = 0) -> pd.DataFrame:
    """Per encoder, method and scale: the mean contextualization distance over prompt pairs, with its 95%
    bootstrap interval over (subject, prompt)."""
    from dti.analysis.residual import summarize_pairs

    keys = ["encoder", "method", "scale"]
    table = summarize_pairs(raw, keys, n_boot=N_BOOT, seed=seed).join(_ratio_of(raw, keys), on=keys)
    return _labelled(table, labels, ["encoder", "method", "scale", "norm_ratio"])


def _labelled(table: pd.DataFrame, labels: dict, first: list[str]) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(_method_order(table["method"]))}
    table = table.assign(_rank=table["method"].map(order)).sort_values(
        ["encoder", "_rank", "scale"], kind="stable", na_position="first").drop(columns="_rank")
    table = table.assign(**labels)
    lead = [*labels, *first]
    return table[lead + [c for c in table.columns if c not in lead]].reset_index(drop=True)


def write_encoder_measures(model_json: str, runs: list[dict], residual_stem: str, context_stem: str, *,
                           labels: dict, scales: Sequence[float], templates: Sequence[str] | None,
                           device: str | None = None) -> None:
    """The residual-update ratio (residual_stem.parquet, .png, .pdf) and the contextualization distance
    (context_stem.*) of every method's tokens on one backbone, from one sweep of its text encoders: both
    read the same encoder passes."""
    from dti.model_record import load_recorded_backbone

    backbone = load_recorded_backbone(model_json, device)
    tokens = run_tokens(runs, [s.name for s in backbone.slots])
    residual, context = encoder_sweeps(backbone, tokens, measured_templates(templates), scales)
    name = _named(backbone, labels)
    _write(residual_summary(residual, labels=labels), residual_stem, "residual_figure",
           f"Residual-update ratio at the token: {name}")
    _write(context_summary(context, labels=labels), context_stem, "context_figure",
           f"How much the token's output changes with its prompt: {name}")


def _named(backbone, labels: dict) -> str:
    """The backbone as a figure's title names it: its config name and its model (a hub id, never a path)."""
    from dti.model_files import public_model

    model, _ = public_model(backbone.model_id, backbone.revision)
    return f"{labels.get('backbone', backbone.family)} ({model})"


def _write(table: pd.DataFrame, out_stem: str, figure: str, title: str) -> None:
    """The table, then its figure (PNG + PDF), each written atomically."""
    from dti.figures import mechanism, save_figure
    from dti.io import write_parquet

    write_parquet(f"{out_stem}.parquet", table)
    save_figure(getattr(mechanism, figure)(table, title=title), f"{out_stem}.png", f"{out_stem}.pdf")


# --- 4. semantic directions -----------------------------------------------------------------------------
def write_directions(model_json: str, runs: list[dict], out_dir: str, *, labels: dict, sample: int, nearest: int,
                     device: str | None = None) -> None:
    """Per subject, every method's learned rows and the initializer's among the vocabulary's unit directions
    (dti.analysis.directions), one panel per text encoder: out_dir/{subject}.png and .pdf; every point of
    every panel in out_dir/points.parquet, and each token's nearest vocabulary words, by direction and by
    vector, in out_dir/nearest.parquet."""
    from dti.analysis.directions import direction_projection, nearest_words_table
    from dti.figures import save_figure
    from dti.figures.directions import directions_panels
    from dti.io import write_parquet, write_text
    from dti.model_record import load_recorded_backbone
    from dti.report import table_html
    from dti.tokens import initializer_ids

    backbone = load_recorded_backbone(model_json, device)
    tokens = run_tokens(runs, [s.name for s in backbone.slots])
    tables = {slot.name: slot.encoder.get_input_embeddings().weight.detach().float().cpu() for slot in backbone.slots}
    out = Path(out_dir)
    points, words = [], []
    for subject in dict.fromkeys(t["subject"] for t in tokens):
        mine = [t for t in tokens if t["subject"] == subject]
        initializer = mine[0]["initializer"]
        projections = {}
        for slot in backbone.slots:
            ids = initializer_ids(slot.tokenizer, initializer)
            rows = {t["method"]: t["vectors"][slot.name] for t in mine}
            rows[f"initializer/{initializer}"] = tables[slot.name][ids]
            projections[slot.name] = direction_projection(tables[slot.name], rows, sample=sample, include_ids=ids,
                                                          tokenizer=slot.tokenizer)
            who = {**labels, "encoder": slot.name, "subject": subject}
            points.append(projections[slot.name].points.assign(**who))
            words.append(nearest_words_table(tables[slot.name], slot.tokenizer, rows, k=nearest).assign(**who))
        name = _named(backbone, labels)
        fig = directions_panels(projections, title=f"{subject} ({initializer}) on {name}: unit directions of "
                                                   "the learned tokens among the vocabulary")
        save_figure(fig, out / f"{subject}.png", out / f"{subject}.pdf")
    nearest_table = pd.concat(words, ignore_index=True)
    write_parquet(out / "nearest.parquet", nearest_table)
    write_parquet(out / "points.parquet", pd.concat(points, ignore_index=True))
    write_text(out / "nearest.html", table_html(
        nearest_words_summary(nearest_table), title=f"Nearest vocabulary words: {_named(backbone, labels)}",
        note="Per subject, text encoder and token (each method's learned token, and its initializer's words): "
             "the nearest vocabulary words of each vector by direction (cosine, in brackets) and by raw vector "
             "(Euclidean distance). Every number: directions/nearest.parquet."))


def _token_label(label: str) -> str:
    """'dti' -> 'DTI'; 'initializer/stuffed animal' -> 'initializer (stuffed animal)'."""
    from dti.terms import display_name

    method, _, detail = label.partition("/")
    return f"initializer ({detail})" if method == "initializer" else display_name(method)


def nearest_words_summary(nearest: pd.DataFrame) -> pd.DataFrame:
    """nearest_words_table's rows folded to one line per subject, encoder, token and vector: its words by
    direction (with the cosine) and by vector (with the distance), nearest first."""
    rows = []
    for (subject, encoder, label, vector), part in nearest.groupby(["subject", "encoder", "label", "vector"],
                                                                   sort=False):
        by = {kind: part[part["by"] == kind].sort_values("rank") for kind in ("direction", "vector")}
        rows.append({"subject": subject, "encoder": encoder, "Token": _token_label(label), "Vector": str(vector),
                     "Nearest by direction (cosine)": ", ".join(f"{w} ({c:.2f})" for w, c in zip(by["direction"]["token"],
                                                                               by["direction"]["cosine"],
                                                                               strict=True)),
                     "Nearest by vector (distance)": ", ".join(f"{w} ({d:.2f})" for w, d in zip(by["vector"]["token"],
                                                                            by["vector"]["distance"], strict=True))})
    return pd.DataFrame(rows)


# --- 5. attention ----------------------------------------------------------------------------------------
def write_attention(model_json: str, runs: list[dict], out_stem: str, *, labels: dict, prompts: Sequence[str],
                    scales: Sequence[float], seeds: Sequence[int], sample: dict, device: str | None = None) -> None:
    """Cross-attention maps of every run's token (dti.analysis.attention), as trained and at each k x m, for
    each prompt and seed: one image grid (rows: method and norm; columns: subject and prompt) in
    out_stem.png/.pdf, and every map with its numbers in out_stem.parquet (`mean_attention`: the map's
    mean over the image, the share of the image's attention the token draws)."""
    from dti.analysis.attention import token_attention_maps
    from dti.figures import save_figure
    from dti.figures.attention import attention_caption, attention_grid
    from dti.io import write_parquet
    from dti.model_record import load_recorded_backbone
    from dti.prompts import render
    from dti.sample import SampleSettings

    settings = SampleSettings(**sample)
    backbone = load_recorded_backbone(model_json, device)
    tokens = run_tokens(runs, [s.name for s in backbone.slots])
    cells, records = [], []
    for token in tokens:
        k = next(iter(token["vectors"].values())).shape[0]
        # One name per vector count, its rows overwritten per run: the vocabulary the maps' m is taken
        # over then holds at most a couple of added rows.
        name = install(backbone, {**token, "method": "attention", "subject": f"k{k}"})
        for template in prompts:
            prompt = render(template, token_text(backbone, name, k))
            label = f"{token['subject']}: {template}"
            for seed in seeds:
                for result in token_attention_maps(backbone, prompt, name, seed=seed, steps=settings.steps,
                                                   guidance_scale=settings.guidance_scale,
                                                   resolution=settings.resolution, scales=[None, *scales]):
                    scale = result["scale"]
                    cells.append({"method": token["method"], "scale": scale, "prompt": label,
                                  "image": result["image"], "map": result["map"], "norm_ratio": result["norm_ratio"]})
                    records.append({**labels, "method": token["method"], "subject": token["subject"],
                                    "prompt": template, "seed": int(seed),
                                    "scale": np.nan if scale is None else float(scale),
                                    "norm_ratio": result["norm_ratio"], "positions": list(result["positions"]),
                                    "mean_attention": float(np.mean(result["map"])),
                                    "peak_attention": float(np.max(result["map"])),
                                    "map_rows": result["map"].shape[0], "map_cols": result["map"].shape[1],
                                    "map": result["map"].astype("float32").ravel().tolist()})
    name = _named(backbone, labels)
    fig = attention_grid(cells, title=f"Cross-attention to the learned token: {name}",
                         caption=attention_caption(steps=settings.steps, guidance_scale=settings.guidance_scale))
    write_parquet(f"{out_stem}.parquet", pd.DataFrame.from_records(records))
    save_figure(fig, f"{out_stem}.png", f"{out_stem}.pdf")


# --- 4b. decoding by the text encoder's language model ----------------------------------------------------
def decoding_slots(backbone) -> list:
    """The backbone's text encoders that are language models (family table)."""
    from dti.families import check_family

    kinds = {s.name: s.language_model for s in check_family(backbone.family).slots}
    return [slot for slot in backbone.slots if kinds[slot.name]]


def write_decoding(model_json: str, runs: list[dict], out_file: str, *, labels: dict, max_new_tokens: int = 32,
                   top_k: int = 10, device: str | None = None) -> None:
    """What each text encoder that is a language model says about every run's token and about its
    initializer's own words (dti.analysis.decoding: greedy answers to questions, next-token and lens top-k),
    one table (out_file, Parquet)."""
    from dti.analysis.decoding import causal_lm_from_encoder, decode_token
    from dti.io import write_parquet, write_text
    from dti.model_record import load_recorded_backbone
    from dti.report import table_html
    from dti.tokens import initializer_ids

    backbone = load_recorded_backbone(model_json, device)
    slots = decoding_slots(backbone)
    if not slots:
        raise DtiError(f"backbone family {backbone.family}: no text encoder is a language model, so there is "
                       "nothing to decode with (docs/analysis.md)")
    tokens = run_tokens(runs, [s.name for s in backbone.slots])
    frames = []
    for slot in slots:
        lm = causal_lm_from_encoder(slot.encoder)
        for subject, initializer in dict.fromkeys((t["subject"], t["initializer"]) for t in tokens):
            word = decode_token(lm, slot.tokenizer, initializer_ids(slot.tokenizer, initializer),
                                max_new_tokens=max_new_tokens, top_k=top_k)
            frames.append(word.assign(method=VOCABULARY, subject=subject, encoder=slot.name))
        for token in tokens:
            name = install(backbone, token)
            table = decode_token(lm, slot.tokenizer, name, max_new_tokens=max_new_tokens, top_k=top_k)
            frames.append(table.assign(method=token["method"], subject=token["subject"], encoder=slot.name))
    table = pd.concat(frames, ignore_index=True).assign(**labels)
    lead = [*labels, "encoder", "method", "subject"]
    write_parquet(out_file, table[lead + [c for c in table.columns if c not in lead]])
    write_text(Path(out_file).with_suffix(".html"), table_html(
        decoding_summary(table), title=f"The text encoder's language model on each token: {_named(backbone, labels)}",
        note="Per subject and token (each method's, and its initializer's words as the reference): the greedy "
             "answer to each question and the most likely next words (probability in brackets); for the "
             "token alone (the lens), the words its own position predicts. Every number: decoding.parquet."))


def decoding_summary(decoding: pd.DataFrame) -> pd.DataFrame:
    """decode_token's rows folded to one line per subject, encoder, token and input: the greedy answer and
    the top words with their probabilities."""
    from dti.terms import display_name

    rows = []
    for (subject, encoder, method), part in decoding.groupby(["subject", "encoder", "method"], sort=False):
        token = "vocabulary (initializer)" if method == VOCABULARY else display_name(method)
        for kind, key in (("next", "question_id"), ("lens", "vector")):
            for _, one in part[part["kind"] == kind].groupby(key, sort=True):
                one = one.sort_values("rank")
                first = one.iloc[0]
                asked = first["question"] if kind == "next" else f"the token alone, vector {int(first['vector'])}"
                rows.append({"subject": subject, "encoder": encoder, "Token": token, "Input": str(asked),
                             "Answer": str(first["continuation"]) if kind == "next" else "",
                             "Top words (probability)": ", ".join(f"{w} ({p:.2f})" for w, p in zip(one["token"],
                                                                                     one["probability"],
                                                                                     strict=True))})
    return pd.DataFrame(rows)
