"""The render-to-manifest loop shared by the sample job, the interpolation paths and the magnitude sweep."""

from __future__ import annotations

import pandas as pd

from dti import sample
from dti.render_manifest import Shot, prompt_grid, render_manifest


def test_prompt_grid_goes_prompt_by_prompt():
    assert list(prompt_grid(["a {}", "b {}"], [3, 1])) == [(0, "a {}", 3), (0, "a {}", 1), (1, "b {}", 3),
                                                          (1, "b {}", 1)]


def test_each_group_renders_before_the_next_is_drawn_and_rows_keep_their_order(tmp_path, monkeypatch):
    events = []

    def fake_generate(backbone, jobs, settings, *, progress, root):
        events.append(("render", [(job.prompt, job.seed, job.path) for job in jobs]))

    def groups():  # as the analyses do: a group's token rows are set while it is drawn
        for token in ("<x>", "<y>"):
            events.append(("draw", token))
            yield [Shot(template.replace("{}", token), {"token": token, "prompt_id": prompt_id, "seed": seed,
                                                         "image": f"{token[1]}/{prompt_id}_{seed}.png"})
                   for prompt_id, template, seed in prompt_grid(["a {}", "b {}"], [0, 1])]

    monkeypatch.setattr(sample, "generate", fake_generate)
    manifest = tmp_path / "out" / "manifest.parquet"
    render_manifest("backbone", groups(), manifest, "settings")
    assert [kind for kind, _ in events] == ["draw", "render", "draw", "render"]
    assert events[1][1][:2] == [("a <x>", 0, manifest.parent / "x/0_0.png"), ("a <x>", 1, manifest.parent / "x/0_1.png")]
    frame = pd.read_parquet(manifest)
    assert list(frame.columns) == ["token", "prompt_id", "seed", "image"]
    assert list(frame["image"]) == [f"{t}/{p}_{s}.png" for t in "xy" for p in (0, 1) for s in (0, 1)]
