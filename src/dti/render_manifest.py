"""Images rendered with learned tokens, and the manifest that lists them: the one loop behind the sample job
(dti.pipeline.render_subject), the interpolation paths (dti.analysis.interpolation.render_pair) and the magnitude
sweep (dti.analysis.magnitude.render_sweep).

A caller describes each image as a `Shot`: the prompt the pipeline reads and the image's manifest row, whose
`seed` and `image` (a path relative to the manifest's folder) say how and where it is rendered. The rows,
in the order given, are the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dti.io import check_target, write_parquet


@dataclass(frozen=True)
class Shot:
    prompt: str  # what the pipeline reads: a template with the learned token written in
    row: dict  # the image's manifest row, naming its "seed" and "image"


def prompt_grid(templates: Sequence[str], seeds: Sequence[int]) -> Iterator[tuple[int, str, int]]:
    """(prompt id, template, seed) of every template and seed, prompt by prompt: the manifests' row order.
    A template's prompt id is its position in `templates`."""
    for prompt_id, template in enumerate(templates):
        for seed in seeds:
            yield prompt_id, template, seed


def render_manifest(backbone, groups: Iterable[list[Shot]], out_manifest: str | os.PathLike, settings, *,
                    root: str | os.PathLike | None = None) -> None:
    """Render every shot's image beside `out_manifest` (dti.sample.generate with `settings`), then write the
    manifest: one row per shot, in order.

    A group's images share batches, and each group is rendered before the next is drawn from `groups`: a
    generator may give a token new rows between groups (the next interpolation scheme, the next run of a
    norm sweep). The manifest's path is checked before the first image renders and the manifest is written
    last, atomically; nothing is written outside `root` (dti.io; default: each file's own folder).
    """
    import pandas as pd

    from dti.sample import SampleJob, generate

    out_dir = Path(out_manifest).parent
    check_target(out_manifest, root=root)
    rows = []
    for shots in groups:
        jobs = [SampleJob(shot.prompt, shot.row["seed"], out_dir / shot.row["image"]) for shot in shots]
        generate(backbone, jobs, settings, progress=False, root=root)
        rows.extend(shot.row for shot in shots)
    write_parquet(out_manifest, pd.DataFrame(rows), root=root)
