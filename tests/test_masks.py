"""Reference masks: multiplied into the references before the image metrics; a missing one is named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dti.errors import DtiError
from dti.io import save_image, write_parquet
from dti.masks import mask_references
from dti.metrics.tiny import write_tiny_metric_model
from dti.pipeline import score_subject
from dti.subjects import prepare_subject
from dti.synthetic import make_synthetic_subject

SIZE = 48


def _mask(path, left_white: bool = True, value: int = 255) -> None:
    pixels = np.zeros((SIZE, SIZE), np.uint8)
    if left_white:
        pixels[:, : SIZE // 2] = value
    else:
        pixels[:] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path)


def _photo(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(1, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def test_masks_multiply_each_reference(tmp_path):
    _mask(tmp_path / "00.png")  # left half kept
    _mask(tmp_path / "01.png", left_white=False, value=128)  # everything at about half
    photos = [_photo(0), _photo(1)]
    half, grey = (np.asarray(m, np.float32) for m in mask_references(photos, ["00.png", "01.png"], tmp_path))
    original = np.asarray(photos[0], np.float32)
    np.testing.assert_array_equal(half[:, : SIZE // 2], original[:, : SIZE // 2])
    assert not half[:, SIZE // 2:].any()
    np.testing.assert_allclose(grey, np.rint(np.asarray(photos[1], np.float32) * 128 / 255), atol=0.5)


def test_missing_or_mismatched_masks_are_named(tmp_path):
    _mask(tmp_path / "00.png")
    with pytest.raises(DtiError, match="01.png") as info:
        mask_references([_photo(0), _photo(1)], ["00.png", "01.png"], tmp_path)
    assert str(tmp_path / "01.png") in str(info.value)
    big = _photo(2).resize((SIZE * 2, SIZE))
    with pytest.raises(DtiError, match="00.png.*48x48.*96x48"):
        mask_references([big], ["00.png"], tmp_path)


@pytest.fixture()
def scored_subject(tmp_path):
    """A prepared subject whose first two references are also the 'generated' images, and a manifest."""
    subject_dir = tmp_path / "subject"
    sources = []
    for i, image in enumerate(make_synthetic_subject("box", "object", 3, SIZE, seed=1)):
        save_image(tmp_path / "raw" / f"{i}.png", image)
        sources.append(tmp_path / "raw" / f"{i}.png")
    prepare_subject(sources, subject_dir, name="box", class_noun="box", kind="object")
    samples = tmp_path / "samples"
    for i in range(2):
        save_image(samples / f"{i}.png", Image.open(subject_dir / f"{i:02d}.png"))
    write_parquet(samples / "manifest.parquet", pd.DataFrame({
        "backbone": "tiny", "method": "dti", "step": 12, "subject": "box", "subject_kind": "object",
        "prompt_set": "p", "prompt_id": [0, 1], "prompt": "a {} box", "seed": 0, "image": ["0.png", "1.png"],
        "eval_prompt": "a box"}))
    return subject_dir, samples


def test_score_subject_scores_against_masked_references(scored_subject, tmp_path):
    subject_dir, samples = scored_subject
    specs = {"dinov2": {"backend": "transformers", "model": "tiny"}}
    tiny_dirs = {"dinov2": write_tiny_metric_model("dinov2", tmp_path / "tiny-dinov2")}

    def dinov2(mask_dir=None):
        out = tmp_path / f"scores-{len(list(tmp_path.glob('scores-*')))}.parquet"
        score_subject(str(samples / "manifest.parquet"), str(subject_dir / "subject.json"), str(out),
                      metric_specs=specs, tiny_dirs=tiny_dirs, mask_dir=None if mask_dir is None else str(mask_dir))
        return pd.read_parquet(out)["value"].to_numpy()

    plain = dinov2()
    white, halves = tmp_path / "white", tmp_path / "halves"
    for i in range(3):
        _mask(white / f"{i:02d}.png", left_white=False)
        _mask(halves / f"{i:02d}.png")
    np.testing.assert_allclose(dinov2(white), plain, rtol=0, atol=1e-6)  # an all-white mask changes nothing
    assert np.abs(dinov2(halves) - plain).min() > 1e-3
    (halves / "02.png").unlink()
    with pytest.raises(DtiError, match="02.png"):
        dinov2(halves)
