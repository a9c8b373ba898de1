"""One function per benchmark step, taking plain paths and settings.

The Snakemake scripts are one call each (dti.jobs.run_job) over these; nothing here knows about
Snakemake, so every step can be run and tested from Python.

Each step writes only inside the top folder of its output path (dti.io.output_root: results/ or
resources/ of the working directory for the workflow's relative paths; an absolute path's own folder): that
folder may be a link to other storage, but a symbolic link below it is refused, naming it, before the
step's work (dti.io). What a step reads from a checksummed download is checked again where it is used:
the DTI authors' prompt lists (dti.dti_prompts.read_extracted) and the DreamBooth photos
(dti.dreambooth.verify_used_files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dti.devices import default_device
from dti.errors import DtiError
from dti.io import (
    check_target,
    ensure_folder,
    output_root,
    save_image,
    settle_future_times,
    write_json,
    write_parquet,
)
from dti.model_files import local_path
from dti.model_record import load_recorded_backbone, write_model_record


# --- data -------------------------------------------------------------------------------------------
def synthesize_subject(out_paths: list[str], *, name: str, kind: str, size: int, seed: int) -> None:
    from dti.synthetic import make_synthetic_subject

    for path in out_paths:
        check_target(path, root=output_root(path))
    for path, image in zip(out_paths, make_synthetic_subject(name, kind, len(out_paths), size, seed), strict=True):
        save_image(path, image, root=output_root(path))


def fetch_dataset(out_marker: str, *, source: str | None, dest: str) -> None:
    """Verify a local DreamBooth copy or download the pinned release; record where it lives and the checksum
    manifest it was verified against (dti.dreambooth.marker_record; checked where the photos are used)."""
    from dti.dreambooth import fetch_dreambooth, marker_record

    check_target(out_marker, root=output_root(out_marker))
    path = fetch_dreambooth(dest, source=source)
    write_json(out_marker, marker_record(path, downloaded=source is None), root=output_root(out_marker))


def prepare(image_paths: list[str], out_json: str, *, name: str, class_noun: str, kind: str, initializer: str,
            source: str, dataset: str | None = None) -> None:
    """Normalize one subject's photos; DreamBooth photos are first checked against the pinned checksums
    (`dataset`: fetch_dreambooth's marker), so a photo changed after the fetch is never used."""
    from dti.subjects import prepare_subject

    if source == "dreambooth":
        from dti.dreambooth import verify_used_files

        verify_used_files(image_paths, marker=dataset)
    ensure_folder(Path(out_json).parent, root=output_root(out_json))
    prepare_subject(image_paths, Path(out_json).parent, name=name, class_noun=class_noun, kind=kind,
                    initializer=initializer, source=source)


# --- models -----------------------------------------------------------------------------------------
def fetch_model(out_json: str, *, model: str, family: str, revision: str | None, tiny_dir: str | None) -> None:
    """Make the backbone available offline (login node) and record the folder GPU jobs load from."""
    if tiny_dir is not None:  # built in the working folder: recorded relative to the record, so a moved or
        path = os.path.relpath(Path(tiny_dir).resolve(), Path(out_json).resolve().parent)  # copied folder works
    elif (folder := local_path(model)) is not None:
        from dti.backbones.base import check_model_exists  # imports torch: only where a folder is checked

        check_model_exists(model)
        path = str(folder.resolve())
    else:
        from huggingface_hub import snapshot_download

        try:  # only what the pipelines read: configs, tokenizers and safetensors weights
            path = snapshot_download(model, revision=revision, allow_patterns=[
                "model_index.json", "*/config.json", "*/*.json", "*/*.txt", "*/*.safetensors"],
                ignore_patterns=["*.fp16.safetensors", "*/diffusion_pytorch_model.fp16*"])
        except Exception as exc:
            raise DtiError(f"cannot fetch model {model!r} (revision {revision}): {exc}") from exc
    if tiny_dir is None:  # a hub model not cached while planning is checked here, once fetched
        from dti.model_files import check_declared_family

        check_declared_family(path, family)
    check_target(out_json, root=output_root(out_json))
    write_model_record(out_json, model=path, family=family, revision=revision, source=model)


def fetch_metrics(out_json: str, *, metric_specs: dict, tiny_dirs: dict | None = None) -> None:
    """Validate the metric specs and, on the login node, build once each model whose weights come from the
    hub, which downloads them into the cache (random-weight and local-file models need nothing fetched).
    transformers models are downloaded whole first (weights, processor, tokenizer), then built offline."""
    from dti.metrics import load_metric_models, parse_metric_specs

    specs = parse_metric_specs(metric_specs, tiny_dirs)
    from_hub = {key: spec for key, spec in specs.items() if spec.needs_hub}
    labels = {key: spec.metric_model for key, spec in specs.items()}
    if from_hub:
        from dti.metrics.hf import fetch_transformers_model

        for spec in from_hub.values():
            if spec.backend == "transformers":
                fetch_transformers_model(spec)
        labels.update({key: model.metric_model for key, model in load_metric_models(from_hub, "cpu").items()})
    write_json(out_json, labels, root=output_root(out_json))


# --- training ---------------------------------------------------------------------------------------
def train_subject(subject_json: str, model_json: str, out_dir: str, *, method: str, hyper_parameters: dict,
                  train: dict, seed: int, placeholder: str, initializer: str, device: str | None = None,
                  start_from: str | None = None) -> dict:
    from dti.export import how_to_use
    from dti.images import load_image
    from dti.subjects import load_subject
    from dti.train import TrainSettings
    from dti.train import train as run_training

    subject = load_subject(Path(subject_json).parent)
    images = [load_image(Path(subject_json).parent / name) for name in subject["images"]]
    # The single file's name is its trigger word in AUTOMATIC1111 and the like: method and subject, never a word
    # that occurs in prompts by chance, and each method's file can share a client's folder with the others'.
    settings = TrainSettings(method=method, hyper_parameters=hyper_parameters, placeholder=placeholder,
                             initializer=initializer, seed=seed, name=f"{method}-{subject['name']}",
                             start_from=start_from, **train)
    run = run_training(load_recorded_backbone(model_json, device), images, settings, out_dir, progress=False,
                       root=output_root(out_dir))
    print(how_to_use(out_dir, settings.placeholder, settings.export_name, run["family"]))
    return run


# --- sampling ---------------------------------------------------------------------------------------
def resolve_prompt_sets(prompt_sets: dict, dti_prompts: str | None) -> dict[str, list[str]]:
    """{set: templates}: lists pass through; the authors' sets (references) are read from `dti_prompts`,
    the JSON that fetch_dti_prompts extracted."""
    from dti.dti_prompts import resolve_reference

    return {name: resolve_reference(value, dti_prompts) if isinstance(value, dict) else list(value)
            for name, value in prompt_sets.items()}


def sample_subject(embeds_dir: str, model_json: str, subject_json: str, out_manifest: str, *, labels: dict,
                   prompt_sets: dict, seeds: list[int], sample: dict, step: int,
                   rescale_to: str | None = None, dti_prompts: str | None = None,
                   device: str | None = None) -> None:
    """Render every (prompt set, prompt, seed) of one subject with the embedding training saved at `step`,
    in one model load; PNGs go to {prompt_set}/{prompt_id:03d}_{seed}.png beside the manifest, which is
    written last, atomically."""
    from dti.names import check_name

    for prompt_set in prompt_sets:  # each names a folder of images; checked before the model load
        check_name(prompt_set, "prompt set")
        ensure_folder(Path(out_manifest).parent / prompt_set, root=output_root(out_manifest))
    check_target(out_manifest, root=output_root(out_manifest))
    prompt_sets = resolve_prompt_sets(prompt_sets, dti_prompts)
    backbone = load_recorded_backbone(model_json, device)
    render_subject(backbone, embeds_dir, subject_json, out_manifest, labels=labels, prompt_sets=prompt_sets,
                   seeds=seeds, sample=sample, step=step, rescale_to=rescale_to)


def render_subject(backbone, embeds_dir: str, subject_json: str, out_manifest: str, *, labels: dict,
                   prompt_sets: dict[str, list[str]], seeds: list[int], sample: dict, step: int | None = None,
                   rescale_to: str | None = None) -> None:
    """`sample_subject` with the backbone already loaded and the prompt sets resolved (the benchmark
    times loading apart). Images and manifest are written inside output_root(out_manifest), never through
    a link: each image's folder and name are checked before the first image renders."""
    from dti.prompts import eval_prompt, render
    from dti.render_manifest import Shot, prompt_grid, render_manifest
    from dti.sample import SampleSettings, load_learned_token
    from dti.subjects import load_subject

    subject = load_subject(Path(subject_json).parent, verify_images=False)
    placeholder = load_learned_token(backbone, Path(embeds_dir), rescale_to=rescale_to, step=step)
    shots = []
    for prompt_set, templates in prompt_sets.items():
        for prompt_id, template, seed in prompt_grid(templates, seeds):
            prompt = render(template, placeholder)
            # The columns of dti.metrics.spec.MANIFEST_COLUMNS, the labels (backbone, method, subject) first.
            shots.append(Shot(prompt, {**labels, "step": step, "subject_kind": subject["kind"],
                                       "prompt_set": prompt_set, "prompt_id": prompt_id, "prompt": prompt,
                                       "eval_prompt": eval_prompt(template, subject["class"]), "seed": seed,
                                       "image": f"{prompt_set}/{prompt_id:03d}_{seed}.png"}))
    render_manifest(backbone, [shots], out_manifest, SampleSettings(**sample), root=output_root(out_manifest))


# --- scoring ----------------------------------------------------------------------------------------
def score_subject(manifest_path: str, subject_json: str, out_scores: str, *, metric_specs: dict,
                  tiny_dirs: dict | None = None, mask_dir: str | None = None, device: str | None = None) -> None:
    """Score one manifest's images; with `mask_dir`, each reference is first multiplied by its mask
    (mask_dir/{image stem}.png)."""
    import pandas as pd

    from dti.images import load_image
    from dti.masks import mask_references
    from dti.metrics import score_samples
    from dti.subjects import load_subject

    check_target(out_scores, root=output_root(out_scores))
    subject_dir = Path(subject_json).parent
    subject = load_subject(subject_dir)
    references = [load_image(subject_dir / name) for name in subject["images"]]
    if mask_dir is not None:
        references = mask_references(references, subject["images"], mask_dir)
    manifest = pd.read_parquet(manifest_path)
    scores = score_samples(manifest, Path(manifest_path).parent, references, metric_specs,
                           device=device or default_device(), tiny_dirs=tiny_dirs)
    write_parquet(out_scores, scores, root=output_root(out_scores))


# --- aggregation ------------------------------------------------------------------------------------
def aggregate(score_files: list[str], runs: list[dict], out_dir: str, *, n_boot: int, seed: int,
              summary_prompt_set: str | None = None, summary_step: int | dict | None = None) -> None:
    """Tables from every score file; `runs` = [{"path": run.json, "backbone", "method", "subject"}], whose
    run.json files give the norms table and the cost table (dti.tables.run_cost: a run.json written before
    runs recorded their cost gives unknown parameters and memory, never an error).

    `summary_prompt_set` / `summary_step` choose the headline prompt set and checkpoint (dti.tables).
    An input dated in the future (a node's clock ahead of this one's) is re-dated to now, naming it
    (dti.io.settle_future_times): otherwise Snakemake fails this step after it wrote the tables, finding
    them older than that input, and deletes them."""
    import pandas as pd

    from dti.tables import build_tables, caption_for, run_cost, write_tables

    settle_future_times([*score_files, *(run["path"] for run in runs)])
    ensure_folder(out_dir, root=output_root(out_dir))

    scores = pd.concat([pd.read_parquet(f) for f in score_files], ignore_index=True)
    norm_rows, cost_rows = [], []
    for run in runs:
        info = json.loads(Path(run["path"]).read_text())
        labels = {"backbone": run["backbone"], "method": run["method"], "subject": run["subject"]}
        for row in info["norms"]:
            norm_rows.append({**labels, "step": info["steps"], **row})
        cost_rows.append({**labels, **run_cost(info)})
    norms = pd.DataFrame(norm_rows) if norm_rows else None
    costs = pd.DataFrame(cost_rows) if cost_rows else None
    tables = build_tables(scores, norms, n_boot=n_boot, seed=seed, summary_prompt_set=summary_prompt_set,
                          summary_step=summary_step, runs=costs)
    captions = {name: caption_for(scores, name, n_boot=n_boot, table=table) for name, table in tables.items()}
    write_tables(tables, out_dir, captions=captions)
