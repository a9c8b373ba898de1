"""The magnitude sweep: does a learned token's meaning live in its direction or in its norm?

Each trained token is rescaled to s x m for every s in `scales` (m: its encoder's vocabulary mean norm;
the direction of every vector is kept) and a few prompts are sampled; subject fidelity (against the
subject's photos) and text fidelity (against the prompt with the class noun) are then measured per scale.
DTI's and TI's directions go through the same sweep, so the figure shows how fidelity moves with the
norm alone, and where each method's trained norm sits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dti.errors import DtiError


def check_sweep(config: dict) -> dict:
    """The `analysis.magnitude` settings, checked; errors name the key."""
    from dti.prompts import analysis_prompts_and_seeds

    scales = [float(s) for s in config.get("scales", (0.5, 1, 2, 4, 8))]
    if not scales:
        raise DtiError("analysis.magnitude.scales: the list is empty")
    for i, scale in enumerate(scales):
        if not (scale > 0 and np.isfinite(scale)):
            raise DtiError(f"analysis.magnitude.scales[{i}]: {scale} is not a positive number")
    prompts, seeds = analysis_prompts_and_seeds(config, "analysis.magnitude")
    return {"scales": sorted(set(scales)), "prompts": prompts, "seeds": seeds}


def render_sweep(runs: list[dict], subject_jsons: dict[str, str], model_json: str, out_manifest: str, *,
                 labels: dict, scales: list[float], prompts: list[str], seeds: list[int], sample: dict,
                 device: str | None = None) -> None:
    """Render every run's token at every scale (one model load); the manifest is written last.

    runs: [{"path": run.json, "method", "subject"}] of one backbone.
    """
    from dti.export import load_diffusers
    from dti.model_record import load_recorded_backbone
    from dti.prompts import eval_prompt, render
    from dti.render_manifest import Shot, prompt_grid, render_manifest
    from dti.sample import SampleSettings, set_token_rows
    from dti.sphere import normalize
    from dti.tokens import resolve_magnitude

    backbone = load_recorded_backbone(model_json, device)
    slots = [s.name for s in backbone.slots]
    m = {s.name: resolve_magnitude(s.encoder.get_input_embeddings().weight, "mean") for s in backbone.slots}

    def run_shots():  # one group per run: its tokens' rows are set when the group is drawn
        for run in runs:
            subject = json.loads(Path(subject_jsons[run["subject"]]).read_text())
            _, vectors = load_diffusers(Path(run["path"]).parent, slots)
            trained = float(np.mean([(r.norm(dim=-1) / m[s]).mean().item() for s, r in vectors.items()]))
            shots = []
            for scale in scales:
                # One token per subject and scale, so all scales render in shared batches; every method's
                # token of this subject has the same number of vectors and reuses it.
                token = set_token_rows(backbone, f"<{run['subject']}@{scale:g}>",
                                       {s: scale * m[s] * normalize(r.float()) for s, r in vectors.items()})
                for prompt_id, template, seed in prompt_grid(prompts, seeds):
                    shots.append(Shot(render(template, token), {
                        **labels, "method": run["method"], "subject": run["subject"], "subject_kind": subject["kind"],
                        "scale": scale, "trained_ratio": trained, "prompt_id": prompt_id, "prompt": template,
                        "eval_prompt": eval_prompt(template, subject["class"]), "seed": seed,
                        "image": f"{run['method']}/{run['subject']}/s{scale:g}_{prompt_id:02d}_{seed}.png"}))
            yield shots

    render_manifest(backbone, run_shots(), out_manifest, SampleSettings(**sample))


def score_sweep(manifest_path: str, subject_jsons: dict[str, str], out_scores: str, *, metric_specs: dict,
                tiny_dirs: dict[str, str] | None = None, device: str | None = None) -> None:
    """Subject fidelity (each image against its own subject's photos) and text fidelity of every image."""
    from dti.analysis.fidelity import Fidelity
    from dti.devices import default_device
    from dti.images import load_image
    from dti.io import write_parquet

    manifest = pd.read_parquet(manifest_path)
    fidelity = Fidelity(metric_specs, device or default_device(), tiny_dirs=tiny_dirs)
    images = fidelity.open_images(Path(manifest_path).parent, manifest["image"])
    features = fidelity.image_features(images)
    import torch

    subject = np.empty(len(manifest))
    for name, index in manifest.groupby("subject").indices.items():
        folder = Path(subject_jsons[name]).parent
        refs = [load_image(folder / f) for f in json.loads((folder / "subject.json").read_text())["images"]]
        subject[index] = fidelity.similarity(features[torch.as_tensor(index)], fidelity.image_features(refs))
    scores = manifest.assign(subject_fidelity=subject, text_fidelity=fidelity.text(images, list(manifest["eval_prompt"])),
                             image_metric=fidelity.image_label, text_metric=fidelity.text_label)
    write_parquet(out_scores, scores)


def sweep_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per method and scale: each subject's mean over prompts and seeds, then mean and std over subjects."""
    per_subject = scores.groupby(["backbone", "method", "subject", "scale"], sort=True).agg(
        subject=("subject_fidelity", "mean"), text=("text_fidelity", "mean"), trained_ratio=("trained_ratio", "first"))
    table = per_subject.groupby(["backbone", "method", "scale"], sort=True).agg(
        subject_mean=("subject", "mean"), subject_std=("subject", "std"), text_mean=("text", "mean"),
        text_std=("text", "std"), trained_ratio=("trained_ratio", "mean"), n_subjects=("subject", "size"))
    return table.fillna({"subject_std": 0.0, "text_std": 0.0}).reset_index()


def write_sweep_outputs(score_files: dict[str, str], out_dir: str) -> None:
    """Per backbone ({backbone: fidelity.parquet}): the figure (PNG + PDF) and its numbers (Parquet)."""
    from dti.figures import save_figure
    from dti.figures.norms import magnitude_figure
    from dti.io import write_parquet

    out = Path(out_dir)
    for backbone, path in score_files.items():
        scores = pd.read_parquet(path)
        table = sweep_table(scores)
        write_parquet(out / f"{backbone}.parquet", table)
        save_figure(magnitude_figure(table, title=f"Fidelity against the token's norm, direction kept: {backbone}",
                                     image_metric=scores["image_metric"].iloc[0],
                                     text_metric=scores["text_metric"].iloc[0]),
                    out / f"{backbone}.png", out / f"{backbone}.pdf")
