"""DINOv2 and SigLIP through transformers, as the DTI authors compute them, on tiny random models of the
real classes saved with save_pretrained (dti.metrics.tiny) and loaded through the scoring code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dti.errors import DtiError
from dti.metrics import load_metric_models, parse_metric_spec, score_samples
from dti.metrics.hf import SIGLIP_MAX_LENGTH, ProcessorTransform
from dti.metrics.tiny import write_tiny_metric_model

REPO = Path(__file__).resolve().parents[1]
# facebook/dinov2-base's preprocessor_config.json, as published with the model.
DINOV2_BASE_PROCESSOR = {
    "do_resize": True, "size": {"shortest_edge": 256}, "resample": 3, "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 0.00392156862745098,
    "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
}  # fmt: skip


def _dreambooth() -> Path | None:
    for candidate in (REPO.parent / "shared" / "dreambooth", Path("/work/shared/dreambooth")):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-metrics")
    return {family: write_tiny_metric_model(family, root / family) for family in ("dinov2", "siglip")}


@pytest.fixture(scope="module")
def models(tiny_dirs):
    return load_metric_models({k: {"backend": "transformers", "model": "tiny"} for k in tiny_dirs},
                              tiny_dirs=tiny_dirs)


def _noise(seed: int, size=(72, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))


@pytest.mark.skipif(_dreambooth() is None, reason="the DreamBooth dataset folder is not here")
def test_dinov2_transform_gives_the_processors_pixels_on_a_dreambooth_photo(tiny_dirs):
    from transformers import AutoImageProcessor, BitImageProcessor

    from dti.images import load_image

    processor = BitImageProcessor(**DINOV2_BASE_PROCESSOR)
    transform = ProcessorTransform.from_processor(processor, "dinov2-base")
    assert transform.describe() == "short256-bicubic-crop224-norm-imagenet"
    photo = load_image(_dreambooth() / "backpack" / "00.jpg")
    # The photo, and a landscape crop of it whose centre-crop offset is odd (floor, not round).
    landscape = photo.crop((0, 0, photo.width, int(photo.width * 256 / 327)))
    for image in (photo, landscape):
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        ours = transform(image)
        assert ours.shape == expected.shape == (3, 224, 224)
        assert (ours - expected).abs().max().item() < 1e-5
    # The embedded default's tiny DINOv2 carries the same processor settings, so it runs this transform.
    assert ProcessorTransform.from_processor(AutoImageProcessor.from_pretrained(tiny_dirs["dinov2"]), "t") == transform


def test_dinov2_features_are_the_cls_token_after_the_final_norm(models):
    encoder = models["dinov2"]
    images = [_noise(0), _noise(1)]
    pixels = torch.stack([encoder.transform(im) for im in images])
    with torch.no_grad():
        hidden = encoder.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        after_norm = F.normalize(encoder.model.layernorm(hidden)[:, 0], dim=-1)
    features = encoder.encode_images(images)
    torch.testing.assert_close(features, after_norm, rtol=0, atol=1e-6)
    assert not torch.allclose(features, F.normalize(hidden[:, 0], dim=-1), atol=1e-3)


def test_siglip_scores_as_the_model_computes_them(tiny_dirs, models, tmp_path):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    for i in range(3):
        _noise(i, (64, 64)).save(tmp_path / f"{i}.png")
    prompts = ["a stuffed animal in the snow", "a dog on the beach", "a stuffed animal in the snow"]
    manifest = pd.DataFrame({"backbone": "sdxl", "method": "dti", "step": 400, "subject": "bear",
                             "subject_kind": "object", "prompt_set": "dti_simple", "prompt_id": [0, 1, 0],
                             "prompt": prompts, "seed": [0, 0, 1], "image": [f"{i}.png" for i in range(3)],
                             "eval_prompt": prompts})
    specs = {"siglip": {"backend": "transformers", "model": str(tiny_dirs["siglip"])}}  # a local folder
    scores = score_samples(manifest, tmp_path, [_noise(9)], specs, batch_size=2)
    assert list(scores["metric"]) == ["siglip_t"] * 3
    assert set(scores["metric_model"]) == {
        f"transformers:{tiny_dirs['siglip']}@local/64x64-bicubic-norm-0.5/text{SIGLIP_MAX_LENGTH}"}

    # The reference: the saved model, tokenizer and processor called directly, the model's own logit.
    model = AutoModel.from_pretrained(tiny_dirs["siglip"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["siglip"])
    processor = AutoImageProcessor.from_pretrained(tiny_dirs["siglip"])
    for row, value in zip(manifest.itertuples(), scores["value"], strict=True):
        text = tokenizer([row.eval_prompt + "."], padding="max_length", max_length=64, return_tensors="pt")
        assert text["input_ids"].shape == (1, 64)
        with Image.open(tmp_path / row.image) as image:
            pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logit = model(**text, pixel_values=pixels).logits_per_image[0, 0]
        assert value == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)
    # The tiny model's scale and bias are not the trivial 1 and 0, so both are exercised.
    assert (models["siglip"].model.logit_scale.exp().item(), models["siglip"].model.logit_bias.item()) != (1.0, 0.0)


def test_tiny_models_are_rebuilt_identically(tiny_dirs, tmp_path):
    from safetensors.torch import load_file

    again = write_tiny_metric_model("siglip", tmp_path / "siglip")
    assert (again / "spiece.model").read_bytes() == (tiny_dirs["siglip"] / "spiece.model").read_bytes()
    first, second = (load_file(d / "model.safetensors") for d in (tiny_dirs["siglip"], again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_metric_model_labels_name_weights_and_transform(models):
    assert models["dinov2"].metric_model == "transformers:tiny-dinov2@random/short256-bicubic-crop224-norm-imagenet"
    hub = parse_metric_spec("siglip", {"backend": "transformers", "model": "google/siglip-base-patch16-512"})
    assert hub.needs_hub and hub.metric_model == "transformers:google/siglip-base-patch16-512@hub"
    pinned = parse_metric_spec("dinov2", {"backend": "transformers", "model": "facebook/dinov2-base",
                                          "revision": "abc123"})
    assert pinned.metric_model == "transformers:facebook/dinov2-base@hub:abc123"


@pytest.mark.parametrize(("raw", "named"), [
    ({"backend": "transformers", "model": "tiny"}, "tiny"),
    ({"backend": "transformers", "model": "no-slash-here"}, "no-slash-here"),
    ({"backend": "transformers", "model": "facebook/dinov2-base", "image_size": 224}, "image_size"),
    ({"backend": "transformers", "model": "facebook/dinov2-base", "revision": ""}, "revision"),
])
def test_bad_transformers_specs_are_named(raw, named):
    with pytest.raises(DtiError, match="metrics.dinov2") as info:
        parse_metric_spec("dinov2", raw)
    assert named in str(info.value)
    with pytest.raises(DtiError, match="clip"):
        parse_metric_spec("clip", {"backend": "transformers", "model": "openai/clip-vit-base-patch32"})


def test_an_unfetched_hub_model_fails_naming_it(monkeypatch):
    import huggingface_hub.constants

    from dti.metrics.hf import Dinov2Encoder

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = parse_metric_spec("dinov2", {"backend": "transformers", "model": "dti-tests/not-fetched"})
    with pytest.raises(DtiError, match="dti-tests/not-fetched") as info:
        Dinov2Encoder(spec)
    assert "fetch_metrics" in str(info.value)
