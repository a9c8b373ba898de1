"""Metrics on random-weight backbones: scores follow the contract and the cosine definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dti.errors import DtiError
from dti.metrics import load_metric_models, metric_names, parse_metric_spec, parse_metric_specs, score_samples
from dti.metrics.encoders import OpenClipEncoder, TimmImageEncoder

# The Scores columns as written in the data contract.
CONTRACT_COLUMNS = [
    "backbone", "method", "step", "subject", "subject_kind", "prompt_set", "prompt_id", "seed", "image",
    "metric", "metric_model", "value",
]  # fmt: skip

SPECS = {
    "dino": {"enabled": True, "backend": "timm", "model": "vit_small_patch16_224.dino", "pretrained": False,
             "weights": None, "image_size": 224},
    # ViT-S/14 at 112 px keeps the tests fast and exercises a non-native img_size; the real default
    # (DINOv2-B at 224 px) is built once in test_default_dinov2_builds_at_the_configured_size.
    "dinov2": {"enabled": True, "backend": "timm", "model": "vit_small_patch14_dinov2.lvd142m", "pretrained": False,
               "weights": None, "image_size": 112},
    "clip": {"enabled": True, "backend": "open_clip", "model": "ViT-B-32", "pretrained": None, "weights": None},
    "siglip": {"enabled": False, "backend": "open_clip", "model": "ViT-B-16-SigLIP-512", "pretrained": "webli",
               "weights": None, "tokenizer": None},
}  # fmt: skip


def _noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8))


def _gradient() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(
        np.stack(
            [np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 90, np.uint8)], -1
        )
    )


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    for name, image in {"same.png": _noise(0), "other.png": _noise(1), "ramp.png": _gradient()}.items():
        image.save(folder / name)
    return folder


@pytest.fixture(scope="module")
def reference(image_dir):
    with Image.open(image_dir / "same.png") as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def manifest():
    prompts = ["a photo of <s> on the beach", "a painting of <s> in a forest", "a photo of <s> on the beach"]
    eval_prompts = [p.replace("<s>", "a stuffed animal") for p in prompts]
    return pd.DataFrame(
        {
            "backbone": "sd15", "method": "dti", "step": 400, "subject": "bear_plushie", "subject_kind": "object",
            "prompt_set": "test", "prompt_id": [0, 1, 0], "prompt": prompts, "eval_prompt": eval_prompts,
            "seed": [0, 0, 1], "image": ["same.png", "other.png", "ramp.png"],
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def models():
    return load_metric_models(SPECS)


@pytest.fixture(scope="module")
def scores(manifest, image_dir, reference, models):
    # batch_size 2 over 3 images exercises a full and a partial batch.
    return score_samples(manifest, image_dir, [reference], SPECS, batch_size=2, models=models)


def _value(frame: pd.DataFrame, image: str, metric: str) -> float:
    hit = frame[(frame["image"] == image) & (frame["metric"] == metric)]
    assert len(hit) == 1
    return float(hit["value"].iloc[0])


def test_metric_names_follow_enabled_families():
    assert metric_names(SPECS) == ["dino", "dinov2", "clip_i", "clip_t"]
    with_siglip = {**SPECS, "siglip": {**SPECS["siglip"], "enabled": True}}
    assert metric_names(with_siglip) == ["dino", "dinov2", "clip_i", "clip_t", "siglip_t"]
    # A disabled family is not built, so its model is not validated either.
    assert list(parse_metric_specs({**SPECS, "siglip": {"enabled": False, "model": "no-such-model"}})) == [
        "dino", "dinov2", "clip"]  # fmt: skip
    with pytest.raises(DtiError, match="lpips"):
        metric_names({"lpips": {"enabled": True}})


def test_scores_follow_the_contract(scores, manifest):
    assert list(scores.columns) == CONTRACT_COLUMNS
    assert len(scores) == len(manifest) * 4
    assert scores.groupby(["image", "metric"]).size().eq(1).all()
    assert set(scores["metric"]) == {"dino", "dinov2", "clip_i", "clip_t"}
    assert scores["value"].dtype == np.float64
    assert scores["prompt_id"].dtype == np.int64 and scores["seed"].dtype == np.int64
    assert scores["step"].dtype == np.int64 and set(scores["step"]) == {400}
    labels = scores.groupby("metric")["metric_model"].unique().map(list).to_dict()
    assert labels == {
        "dino": ["timm:vit_small_patch16_224.dino@random/224px"],
        "dinov2": ["timm:vit_small_patch14_dinov2.lvd142m@random/112px"],
        "clip_i": ["open_clip:ViT-B-32@random"],
        "clip_t": ["open_clip:ViT-B-32@random"],
    }
    # Manifest keys are carried through unchanged.
    ramp = scores[scores["image"] == "ramp.png"]
    assert (
        set(ramp["seed"]) == {1}
        and set(ramp["prompt_id"]) == {0}
        and set(ramp["subject"]) == {"bear_plushie"}
    )


def test_identical_image_scores_one_and_different_images_less(scores):
    for metric in ("dino", "clip_i"):
        assert _value(scores, "same.png", metric) == pytest.approx(1.0, abs=1e-5)
        assert _value(scores, "other.png", metric) < 0.999
        assert _value(scores, "ramp.png", metric) < 0.999


def test_default_dinov2_builds_at_the_configured_size(models):
    assert tuple(models["dinov2"].model.patch_embed.img_size) == (112, 112)
    spec = parse_metric_spec(
        "dinov2", {**SPECS["dinov2"], "model": "vit_base_patch14_dinov2.lvd142m", "image_size": 224}
    )
    assert spec.metric_model == "timm:vit_base_patch14_dinov2.lvd142m@random/224px"
    encoder = TimmImageEncoder(spec)  # timm's native size for this model is 518 px
    assert tuple(encoder.model.patch_embed.img_size) == (224, 224)
    assert encoder.encode_images([_gradient()]).shape == (1, 768)


def test_image_metrics_average_over_references(manifest, image_dir, reference, models, scores):
    # dino stands for both timm metrics (dinov2 shares its code path); clip covers open_clip.
    specs = {key: SPECS[key] for key in ("dino", "clip")}
    subset = {key: models[key] for key in specs}
    second = _gradient()
    # Different batch sizes on purpose: a batching slip would misalign images and break the average.
    both = score_samples(manifest, image_dir, [reference, second], specs, batch_size=1, models=subset)
    only_second = score_samples(manifest, image_dir, [second], specs, models=subset)
    for metric in ("dino", "clip_i"):
        for image in manifest["image"]:
            expected = (_value(scores, image, metric) + _value(only_second, image, metric)) / 2
            assert _value(both, image, metric) == pytest.approx(expected, abs=1e-5)
    # Text scores do not depend on the references or the batch size.
    np.testing.assert_allclose(
        both[both["metric"] == "clip_t"]["value"], scores[scores["metric"] == "clip_t"]["value"], atol=1e-5
    )


def test_clip_t_compares_with_eval_prompt(scores, manifest, image_dir, models):
    clip = models["clip"]
    for row in manifest.itertuples():
        with Image.open(image_dir / row.image) as image:
            features = clip.encode_images([image])[0]
        with_eval = float(features @ clip.encode_texts([row.eval_prompt])[0])
        with_placeholder = float(features @ clip.encode_texts([row.prompt])[0])
        value = _value(scores, row.image, "clip_t")
        assert value == pytest.approx(with_eval, abs=1e-5)
        assert abs(value - with_placeholder) > 1e-4


def test_random_init_is_reproducible_and_leaves_global_rng_alone(models):
    for key in ("dino", "clip"):
        torch.rand(1000)  # a global RNG state unlike the fixture's must not change the seeded init
        before = torch.random.get_rng_state()
        rebuilt = load_metric_models({key: SPECS[key]})[key]
        assert torch.equal(torch.random.get_rng_state(), before)
        rebuilt_state = rebuilt.model.state_dict()
        for name, tensor in models[key].model.state_dict().items():
            assert torch.equal(tensor, rebuilt_state[name]), name


@pytest.mark.parametrize(
    ("key", "raw", "named"),
    [
        ("dino", {"backend": "timm", "model": "vit_nonexistent_patch16"}, "vit_nonexistent_patch16"),
        (
            "dino",
            {"backend": "timm", "model": "vit_small_patch16_224.nosuchtag"},
            "vit_small_patch16_224.nosuchtag",
        ),
        ("clip", {"backend": "open_clip", "model": "ViT-Q-99"}, "ViT-Q-99"),
        ("clip", {"backend": "open_clip", "model": "ViT-B-32", "pretrained": "not-a-tag"}, "not-a-tag"),
        ("clip", {"backend": "keras", "model": "ViT-B-32"}, "keras"),
        ("clip", {"backend": "timm", "model": "vit_small_patch16_224"}, "timm"),
        ("dino", {"backend": "timm", "model": "vit_small_patch16_224", "image_size": "big"}, "big"),
        ("dino", {"backend": "timm", "model": "vit_small_patch16_224", "img_size": 224}, "img_size"),
    ],
)
def test_bad_spec_names_key_and_value(key, raw, named):
    with pytest.raises(DtiError) as info:
        parse_metric_specs({key: raw})
    assert f"metrics.{key}" in str(info.value) and named in str(info.value)


@pytest.mark.parametrize("key", ["dino", "clip"])
def test_missing_weights_file_is_named(key, tmp_path):
    missing = tmp_path / "absent" / "weights.safetensors"
    with pytest.raises(DtiError, match="weights") as info:
        parse_metric_specs({key: {**SPECS[key], "weights": str(missing)}})
    assert str(missing) in str(info.value)


def test_timm_weights_file_loads(tmp_path, image_dir, models):
    from safetensors.torch import save_file

    spec = parse_metric_spec("dino", SPECS["dino"])
    source = TimmImageEncoder(spec)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():  # move away from the seeded init, so a file that fails to load is noticed
        for param in source.model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    path = tmp_path / "dino.safetensors"
    save_file(state, path)

    loaded_spec = parse_metric_spec("dino", {**SPECS["dino"], "weights": str(path)})
    assert loaded_spec.metric_model == f"timm:vit_small_patch16_224.dino@{path}/224px"
    loaded = TimmImageEncoder(loaded_spec)
    images = [Image.open(image_dir / name).convert("RGB") for name in ("same.png", "ramp.png")]
    torch.testing.assert_close(loaded.encode_images(images), source.encode_images(images), rtol=0, atol=1e-6)
    assert not torch.allclose(loaded.encode_images(images), models["dino"].encode_images(images), atol=1e-3)


def _word_tokenizer(folder) -> None:
    """A tiny Hugging Face tokenizer folder, standing in for SigLIP's SentencePiece one offline."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "</s>", "a", "photo", "painting", "of", "stuffed", "animal", "on", "the",
             "beach", "in", "forest"]  # fmt: skip
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def test_siglip_scores_with_local_tokenizer(tmp_path, manifest, image_dir, reference):
    _word_tokenizer(tmp_path / "tok")
    specs = {"siglip": {"backend": "open_clip", "model": "ViT-B-16-SigLIP", "pretrained": None,
                        "tokenizer": str(tmp_path / "tok")}}  # fmt: skip
    encoder = load_metric_models(specs)["siglip"]
    two_prompts = manifest.iloc[:2]
    frame = score_samples(two_prompts, image_dir, [reference], specs, models={"siglip": encoder})
    assert list(frame["metric"]) == ["siglip_t"] * len(two_prompts)
    assert set(frame["metric_model"]) == {"open_clip:ViT-B-16-SigLIP@random"}
    scale, bias = encoder.model.logit_scale.exp().item(), encoder.model.logit_bias.item()
    for row in two_prompts.itertuples():
        with Image.open(image_dir / row.image) as image:
            cosine = float(encoder.encode_images([image])[0] @ encoder.encode_texts([row.eval_prompt])[0])
        expected = 1 / (1 + np.exp(-(scale * cosine + bias)))
        assert _value(frame, row.image, "siglip_t") == pytest.approx(expected, rel=1e-4)


def test_missing_tokenizer_folder_is_named(tmp_path):
    missing = tmp_path / "no-tokenizer"
    with pytest.raises(DtiError, match="tokenizer") as info:
        parse_metric_specs({"siglip": {**SPECS["siglip"], "enabled": True, "tokenizer": str(missing)}})
    assert str(missing) in str(info.value)


def test_unavailable_hub_tokenizer_becomes_dti_error(monkeypatch):
    import open_clip

    def offline(name):
        raise OSError(f"cannot reach the hub for {name}")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    spec = parse_metric_spec("siglip", {**SPECS["siglip"], "pretrained": None})
    from dti.metrics.encoders import _open_clip_tokenizer

    with pytest.raises(DtiError, match="metrics.siglip.tokenizer"):
        _open_clip_tokenizer(spec)


def test_bad_manifest_and_missing_image(manifest, image_dir, reference, models):
    dino_only = {"dino": SPECS["dino"]}
    with pytest.raises(DtiError, match="eval_prompt"):
        score_samples(
            manifest.drop(columns="eval_prompt"),
            image_dir,
            [reference],
            dino_only,
            models={"dino": models["dino"]},
        )
    broken = manifest.assign(image=["same.png", "gone.png", "ramp.png"])
    with pytest.raises(DtiError, match="gone.png"):
        score_samples(broken, image_dir, [reference], dino_only, models={"dino": models["dino"]})
    with pytest.raises(DtiError, match="reference"):
        score_samples(manifest, image_dir, [], dino_only, models={"dino": models["dino"]})


def test_open_clip_weights_with_tag_take_the_tag_preprocessing(tmp_path, models):
    # A local copy of 'openai' weights must run with OpenAI's QuickGELU, as the tag would.
    path = tmp_path / "clip.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in models["clip"].model.state_dict().items()}, path)
    spec = parse_metric_spec("clip", {**SPECS["clip"], "pretrained": "openai", "weights": str(path)})
    assert spec.metric_model == f"open_clip:ViT-B-32@{path}"
    encoder = OpenClipEncoder(spec)
    activation = type(encoder.model.visual.transformer.resblocks[0].mlp.gelu).__name__
    assert activation == "QuickGELU"
    # Without the tag, ViT-B-32 uses plain GELU (the random-init fixture model).
    assert type(models["clip"].model.visual.transformer.resblocks[0].mlp.gelu).__name__ != "QuickGELU"


def test_needs_hub_names_exactly_the_models_the_login_node_must_fetch(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    cases = {
        ("dino", "random"): ({**SPECS["dino"]}, False),
        ("dino", "hub"): ({**SPECS["dino"], "pretrained": True}, True),
        ("dino", "file"): ({**SPECS["dino"], "weights": str(weights)}, False),
        ("clip", "random"): ({**SPECS["clip"]}, False),  # CLIP's BPE ships with open_clip
        ("clip", "tag"): ({**SPECS["clip"], "pretrained": "openai"}, True),
        ("clip", "tagged file"): ({**SPECS["clip"], "pretrained": "openai", "weights": str(weights)}, False),
        ("siglip", "random, hub tokenizer"): ({**SPECS["siglip"], "pretrained": None}, True),
        ("siglip", "random, local tokenizer"): (
            {**SPECS["siglip"], "pretrained": None, "tokenizer": str(tokenizer)}, False),
    }
    for (key, case), (raw, expected) in cases.items():
        assert parse_metric_spec(key, raw).needs_hub is expected, (key, case)


# --- the embedded default's tiny CLIP: an open_clip model folder --------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from dti.metrics.tiny import write_tiny_metric_model

    return write_tiny_metric_model("clip", tmp_path_factory.mktemp("tiny") / "clip")


def test_tiny_clip_loads_its_weights_through_open_clip(tiny_clip_dir, tmp_path, image_dir):
    import open_clip
    from safetensors.torch import load_file, save_file

    # Shift every weight in a copy of the folder: the encoder must carry exactly the file's weights, which a
    # loader that silently kept its (identically seeded) random init would not.
    shifted = tmp_path / "clip"
    shifted.mkdir()
    (shifted / "open_clip_config.json").write_bytes((tiny_clip_dir / "open_clip_config.json").read_bytes())
    state = {k: v + 0.01 for k, v in load_file(tiny_clip_dir / "open_clip_model.safetensors").items()}
    save_file(state, shifted / "open_clip_model.safetensors")
    spec = parse_metric_spec("clip", {"model": "tiny"}, {"clip": shifted})
    assert (spec.backend, spec.metric_model, spec.needs_hub) == ("open_clip", "open_clip:tiny-clip@random", False)
    encoder = OpenClipEncoder(spec)
    loaded = encoder.model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    # Scores as open_clip computes them, with the real CLIP BPE and OpenAI's image statistics at 64 px.
    reference = open_clip.create_model_and_transforms(f"local-dir:{shifted}")[0].eval()
    images = [Image.open(image_dir / name).convert("RGB") for name in ("same.png", "ramp.png")]
    assert encoder.preprocess.transforms[0].size == 64
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    with torch.no_grad():
        want_images = F.normalize(reference.encode_image(pixels), dim=-1)
        texts = ["a photo of a stuffed animal", "a dog"]
        assert torch.equal(encoder.tokenizer(texts), open_clip.get_tokenizer("ViT-B-32")(texts))
        want_texts = F.normalize(reference.encode_text(open_clip.get_tokenizer("ViT-B-32")(texts)), dim=-1)
    torch.testing.assert_close(encoder.encode_images(images), want_images, rtol=0, atol=1e-6)
    torch.testing.assert_close(encoder.encode_texts(texts), want_texts, rtol=0, atol=1e-6)


def test_tiny_clip_is_rebuilt_identically_and_asked_for_plainly(tiny_clip_dir, tmp_path):
    from safetensors.torch import load_file

    from dti.metrics.spec import tiny_families
    from dti.metrics.tiny import write_tiny_metric_models

    with pytest.raises(DtiError, match="lpips"):  # checked before anything is written
        write_tiny_metric_models({"clip": tmp_path / "clip", "lpips": tmp_path / "lpips"})
    assert not (tmp_path / "clip").exists()
    [again] = write_tiny_metric_models({"clip": tmp_path / "clip"})
    first, second = (load_file(d / "open_clip_model.safetensors") for d in (tiny_clip_dir, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    config = {"dino": {"model": "tiny"}, "clip": {"model": "tiny"}, "dinov2": {"backend": "transformers",
              "model": "tiny"}, "siglip": {"backend": "transformers", "model": "tiny", "enabled": False}}
    assert tiny_families(config) == ["clip", "dinov2"]  # dino has no tiny model; siglip is off


@pytest.mark.parametrize(("key", "raw", "named"), [
    ("clip", {"model": "tiny", "pretrained": "openai"}, "pretrained"),
    ("clip", {"model": "tiny", "tokenizer": "/somewhere"}, "tokenizer"),
    ("siglip", {"backend": "open_clip", "model": "tiny"}, "'transformers'"),
    ("dino", {"backend": "timm", "model": "tiny"}, "no backend"),
])
def test_bad_tiny_specs_are_named(key, raw, named, tiny_clip_dir):
    with pytest.raises(DtiError, match=f"metrics.{key}") as info:
        parse_metric_spec(key, raw, {key: tiny_clip_dir})
    assert named in str(info.value)
    with pytest.raises(DtiError, match="folder of the tiny random clip"):
        parse_metric_spec("clip", {"model": "tiny"})  # planned without the folder the rule builds
