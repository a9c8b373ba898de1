"""Tiny random metric models written to disk, for offline runs and tests: DINOv2 and SigLIP of the real
transformers classes, and a CLIP of open_clip's own class.

DINOv2 and SigLIP are written with `save_pretrained` (model, image processor and, for SigLIP, a
SentencePiece tokenizer of the real SiglipTokenizer class), so they load through exactly the code that
loads facebook/dinov2-base and google/siglip-base-patch16-512. The DINOv2 processor has the real model's
settings (shortest side 256, bicubic, centre crop 224, ImageNet statistics); the SigLIP one resizes
to 64 px (the tiny samples' size) instead of 512. CLIP is an open_clip model folder (`open_clip_config.json`
and `open_clip_model.safetensors`, as on the hub), loaded by open_clip's `local-dir:` loader with the real
CLIP BPE tokenizer and OpenAI's image statistics at 64 px; a random ViT-B/32 would cost each score job
more CPU time for equally meaningless scores (measured in bench/README.md). Weights are random under a fixed
seed and the tokenizer is trained on a fixed corpus, so two builds are identical.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import torch

from dti.errors import DtiError
from dti.io import atomic_dir
from dti.prompts import TRAINING_TEMPLATES

SEED = 0
# dinov2-base's image processor settings (its preprocessor_config.json).
DINOV2_PROCESSOR = {
    "do_resize": True, "size": {"shortest_edge": 256}, "resample": 3,
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
}  # fmt: skip
_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
# Words of the evaluation prompts the tokenizer should know as pieces (others split into characters).
_WORDS = ("dog", "cat", "box", "stuffed animal", "backpack", "toy", "sunglasses", "jungle", "snow", "beach",
          "city", "wizard hat", "library", "oil painting", "watercolor")


@contextlib.contextmanager
def _seeded():
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stays as it was
        torch.manual_seed(SEED)
        yield


def _spiece_model() -> bytes:
    import sentencepiece as spm

    corpus = [t.replace("{}", w) for t in TRAINING_TEMPLATES for w in _WORDS]
    out = io.BytesIO()
    # Ids as SigLIP's tokenizer has them: pad and eos are "</s>" (1), unk "<unk>" (2), no bos.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out, vocab_size=200,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, pad_piece="<pad>",
                                   eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2)
    return out.getvalue()


def _write_siglip(folder: Path) -> None:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    (folder / "spiece.model").write_bytes(_spiece_model())
    tokenizer = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)
    text = {**_SMALL, "vocab_size": len(tokenizer), "max_position_embeddings": 64, "projection_size": 32,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}
    vision = {**_SMALL, "image_size": 64, "patch_size": 16}
    with _seeded():
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    with torch.no_grad():  # the init gives sigmoid(cos); a scale of 10 spreads the random scores out
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(0.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 64, "width": 64}, resample=3).save_pretrained(folder)


def _write_dinov2(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    with _seeded():  # 518 px and patch 14 as the real model: its position embeddings get interpolated
        model = Dinov2Model(Dinov2Config(**_SMALL, image_size=518, patch_size=14))
    model.save_pretrained(folder)
    BitImageProcessor(**DINOV2_PROCESSOR).save_pretrained(folder)


# ViT-B/32's layout at toy size: 64 px images in 16 px patches, 2 layers per tower, the real BPE vocabulary.
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "layers": 2, "width": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _write_clip(folder: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    with _seeded():
        model = open_clip.model.CLIP(**CLIP_CONFIG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    config = {"model_cfg": CLIP_CONFIG, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")


_WRITERS = {"dinov2": _write_dinov2, "clip": _write_clip, "siglip": _write_siglip}


def _check_known(families) -> None:
    unknown = sorted(set(families) - set(_WRITERS))
    if unknown:
        raise DtiError(f"no tiny metric model for {', '.join(map(repr, unknown))}; known: {sorted(_WRITERS)}")


def write_tiny_metric_model(family: str, out_dir: str | os.PathLike) -> Path:
    """Write the tiny random model of `family` (dinov2, clip or siglip) to `out_dir`, atomically."""
    _check_known([family])
    with atomic_dir(out_dir) as tmp:
        _WRITERS[family](Path(tmp))
    return Path(out_dir)


def write_tiny_metric_models(folders: dict[str, str | os.PathLike]) -> list[Path]:
    """Write the tiny random model of each family ({family: out_dir}), each folder atomically."""
    _check_known(folders)  # before anything is written
    return [write_tiny_metric_model(family, folder) for family, folder in folders.items()]
