"""Norm and direction analysis: how the learned vectors move during training, against the vocabulary.

- Curves: every train_log.jsonl gives per step, encoder and vector the embedding's norm and its angle from
  the initialization; beside them the vocabulary's mean norm and spread from run.json. TI's norm grows
  away from the vocabulary; DTI's stays at m while only its direction turns.
- Histogram: the norms of every vocabulary row of each encoder, with the final learned norms marked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dti.errors import DtiError
from dti.model_record import read_model_record

CURVE_COLUMNS = ["backbone", "method", "subject", "encoder", "vector", "step", "norm", "angle_deg",
                 "vocab_norm_mean", "vocab_norm_std"]


def training_curves(runs: list[dict]) -> pd.DataFrame:
    """Long table of norm and angle per step from each run's train_log.jsonl.

    runs: [{"path": run.json, "backbone", "method", "subject"}] (the log sits beside run.json).
    """
    rows = []
    for run in runs:
        info = json.loads(Path(run["path"]).read_text())
        log = Path(run["path"]).with_name("train_log.jsonl")
        if not log.is_file():
            raise DtiError(f"training log missing: {log}")
        for line_no, line in enumerate(log.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                for encoder, norms in record["norm"].items():
                    stats = info["vocab_norms"][encoder]
                    for vector, (norm, angle) in enumerate(zip(norms, record["angle_from_init_deg"][encoder],
                                                               strict=True)):
                        rows.append((run["backbone"], run["method"], run["subject"], encoder, vector,
                                     int(record["step"]), float(norm), float(angle), float(stats["mean"]),
                                     float(stats["std"])))
            except (KeyError, TypeError, ValueError) as err:
                raise DtiError(f"{log}:{line_no}: not a training log record ({err})") from err
    if not rows:
        raise DtiError("no training log records found")
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def vocabulary_and_learned_norms(model_dir: str | Path, runs: list[dict]) -> pd.DataFrame:
    """Every vocabulary row's norm per encoder (kind "vocabulary") and every final learned vector's
    (kind "learned", with its method and subject)."""
    from dti.vocab import load_vocabularies

    frames = []
    for encoder, vocab in load_vocabularies(model_dir).items():
        norms = np.linalg.norm(vocab.table.astype(np.float64), axis=1)
        keep = norms > 0  # unused ids, as dti.tokens.vocab_norms drops them
        frames.append(pd.DataFrame({"kind": "vocabulary", "encoder": encoder, "method": None, "subject": None,
                                    "token": [vocab.tokens[i] for i in np.flatnonzero(keep)],
                                    "norm": norms[keep]}))
    learned = []
    for run in runs:
        for row in json.loads(Path(run["path"]).read_text())["norms"]:
            learned.append({"kind": "learned", "encoder": row["encoder"], "method": run["method"],
                            "subject": run["subject"], "token": f"vector {row['vector']}", "norm": row["norm"]})
    frames.append(pd.DataFrame(learned))
    return pd.concat(frames, ignore_index=True)


def write_norm_analysis(runs: list[dict], model_jsons: dict[str, str], out_dir: str) -> None:
    """Per backbone: curves and histogram, each as PNG + PDF with its numbers as Parquet beside it."""
    from dti.figures import save_figure
    from dti.figures.norms import curves_figure, histogram_figure
    from dti.io import write_parquet

    out = Path(out_dir)
    for backbone, model_json in model_jsons.items():
        own = [r for r in runs if r["backbone"] == backbone]
        curves = training_curves(own)
        write_parquet(out / "norm_curves" / f"{backbone}.parquet", curves)
        save_figure(curves_figure(curves, title=f"Learned token norm and direction during training, {backbone}"),
                    out / "norm_curves" / f"{backbone}.png", out / "norm_curves" / f"{backbone}.pdf")
        model_dir = read_model_record(model_json)["model"]
        norms = vocabulary_and_learned_norms(model_dir, own)
        write_parquet(out / "vocab_norms" / f"{backbone}.parquet", norms)
        save_figure(histogram_figure(norms, title=f"Vocabulary norms and learned tokens, {backbone}"),
                    out / "vocab_norms" / f"{backbone}.png", out / "vocab_norms" / f"{backbone}.pdf")
