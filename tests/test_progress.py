"""Progress lines in a job's log: counts, rate and time left at a steady interval, and a closing line."""

from __future__ import annotations

import functools
import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dti import progress
from dti.metrics import scoring
from dti.progress import ProgressLog, duration
from dti.render_manifest import Shot, render_manifest
from dti.sample import SampleSettings, batches

LOGGER = "dti.progress"
RUNNING = re.compile(r"(\w+) ([\d,]+)/([\d,]+) images \(([\d.,]+) images/s, about (.+) left\)")
CLOSING = re.compile(r"(\w+) ([\d,]+)/([\d,]+) images in (.+) \(([\d.,]+) images/s\)")


class FakeClock:
    def __init__(self):
        self.now = 1000.0  # a monotonic clock starts anywhere

    def __call__(self) -> float:
        return self.now


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _seconds(text: str) -> float:
    """Back from duration()'s words: '1 h 5 min', '9 min 2 s', '8 min', '42 s'."""
    units = {"h": 3600, "min": 60, "s": 1}
    parts = text.split()
    return sum(float(value) * units[unit] for value, unit in zip(parts[::2], parts[1::2], strict=True))


@pytest.mark.parametrize("step_s, every_s", [(7.0, 30.0), (30.0, 30.0), (1.0, 0.0), (50.0, 30.0)])
def test_lines_come_at_most_once_per_interval_and_the_closing_line_always(caplog, step_s, every_s):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, total = FakeClock(), 40
    log = ProgressLog("sampled", total, every_s=every_s, clock=clock)
    for _ in range(total):  # one image every step_s seconds
        clock.now += step_s
        log.advance()
    lines = _lines(caplog)
    # A line comes at the first advance at least every_s after the last one: every ceil(every_s / step_s)
    # images (every image with every_s 0), except at the last, which gets the closing line instead.
    per_line = max(1, math.ceil(every_s / step_s))
    assert len(lines) == (total - 1) // per_line + 1
    assert all(RUNNING.fullmatch(line) for line in lines[:-1])
    assert [int(RUNNING.fullmatch(line)[2]) for line in lines[:-1]] == list(range(per_line, total, per_line))
    assert CLOSING.fullmatch(lines[-1]).groups()[1:3] == (str(total), str(total))


def test_rate_and_time_left_follow_the_counts_and_the_clock(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, total, batch, batch_s = FakeClock(), 2624, 16, 3.3
    log = ProgressLog("sampled", total, clock=clock)
    for _ in range(total // batch):
        clock.now += batch_s
        log.advance(batch)
    lines = _lines(caplog)
    assert len(lines) > 2
    for line in lines[:-1]:
        verb, done, of, rate, left = RUNNING.fullmatch(line).groups()
        done, expected_rate = _number(done), batch / batch_s
        assert (verb, _number(of)) == ("sampled", total)
        assert _number(rate) == pytest.approx(expected_rate, abs=0.05)  # two significant digits
        expected_left = (total - done) / expected_rate
        assert _seconds(left) == pytest.approx(expected_left, abs=30 if expected_left >= 60 else 0.5)
    verb, done, of, took, rate = CLOSING.fullmatch(lines[-1]).groups()
    elapsed = total // batch * batch_s
    assert (verb, _number(done), _number(of)) == ("sampled", total, total)
    assert _seconds(took) == pytest.approx(elapsed, abs=0.5)
    assert _number(rate) == pytest.approx(total / elapsed, abs=0.05)


def test_counts_have_thousands_separators_and_quiet_advances_log_nothing(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    log = ProgressLog("scored", 12_345, every_s=0, clock=clock)
    clock.now += 100
    log.advance(0)  # a batch whose images are still being written: nothing new to tell
    assert _lines(caplog) == []
    log.advance(1_234)
    assert _lines(caplog)[-1].startswith("scored 1,234/12,345 images (12 images/s, about ")


def test_a_clock_that_did_not_move_gives_counts_without_a_rate(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = ProgressLog("sampled", 3, every_s=0, clock=FakeClock())
    log.advance(2)
    log.advance(1)
    assert _lines(caplog) == ["sampled 2/3 images", "sampled 3/3 images in 0 s"]


@pytest.mark.parametrize("seconds, rough, text", [
    (42.4, False, "42 s"), (9 * 60 + 2, False, "9 min 2 s"), (9 * 60 + 2, True, "9 min"),
    (8 * 60 + 40, True, "9 min"), (3 * 3600 + 5 * 60 + 10, False, "3 h 5 min"), (3590, True, "1 h 0 min"),
])  # fmt: skip
def test_durations_read_as_words(seconds, rough, text):
    assert duration(seconds, rough=rough) == text


@pytest.mark.parametrize("png_workers", [0, 2])
def test_sampling_logs_the_images_it_saved(caplog, monkeypatch, tmp_path, tiny_sd, png_workers):
    from dti.backbones.catalog import load_backbone

    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setattr(progress, "ProgressLog", functools.partial(ProgressLog, every_s=0))  # every batch
    n_images, batch_size = 5, 2
    shots = [Shot("a photo of a dog", {"seed": seed, "image": f"{seed}.png"}) for seed in range(n_images)]
    manifest = tmp_path / "manifest.parquet"
    settings = SampleSettings(steps=1, resolution=64, batch_size=batch_size, png_workers=png_workers)
    render_manifest(load_backbone(str(tiny_sd)), [shots], manifest, settings)
    written = len(list(tmp_path.glob("*.png")))
    assert written == n_images
    lines = _lines(caplog)
    assert len(lines) == len(batches(n_images, batch_size))
    assert [RUNNING.fullmatch(line)[1] for line in lines[:-1]] == ["sampled"] * (len(lines) - 1)
    assert CLOSING.fullmatch(lines[-1]).groups()[:3] == ("sampled", str(written), str(n_images))


class FakeEncoder:
    """An image encoder of fixed unit features: scoring's loop without a model to build."""

    metric_model = "fake"

    def encode_images(self, images):
        return torch.nn.functional.normalize(torch.ones(len(images), 4), dim=1)


def test_scoring_logs_the_images_it_scored(caplog, monkeypatch, tmp_path):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setattr(scoring, "ProgressLog", functools.partial(ProgressLog, every_s=0))  # every batch
    n_images, batch_size = 5, 2
    for i in range(n_images):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    manifest = pd.DataFrame({
        "backbone": "sd15", "method": "dti", "step": 1, "subject": "dog", "subject_kind": "live",
        "prompt_set": "test", "prompt_id": 0, "prompt": "a <s>", "eval_prompt": "a dog",
        "seed": range(n_images), "image": [f"{i}.png" for i in range(n_images)],
    })  # fmt: skip
    dino = {"enabled": True, "backend": "timm", "model": "vit_small_patch16_224.dino", "pretrained": False,
            "weights": None, "image_size": 224}
    frame = scoring.score_samples(manifest, tmp_path, [Image.new("RGB", (8, 8))], {"dino": dino},
                                  batch_size=batch_size, models={"dino": FakeEncoder()})
    scored = frame["image"].nunique()
    assert scored == n_images
    lines = _lines(caplog)
    assert len(lines) == math.ceil(n_images / batch_size)
    done = [int(RUNNING.fullmatch(line)[2]) for line in lines[:-1]]
    assert done == list(range(batch_size, n_images, batch_size))
    assert CLOSING.fullmatch(lines[-1]).groups()[:3] == ("scored", str(scored), str(n_images))
