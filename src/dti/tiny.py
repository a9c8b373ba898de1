"""Tiny random SD-1.x- and SDXL-shaped diffusers pipelines with the real CLIP vocabulary.

They let the whole product (loading with `from_pretrained`, training, sampling, export) run offline on a
CPU in seconds: the tokenizers are the genuine 49408-token CLIP BPE (rebuilt from the file open_clip
ships), so prompts tokenize exactly as on a real checkpoint; only the network weights are random and small.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path

import torch

from dti.io import atomic_dir

FAMILIES = ("sd", "sdxl")
_N_MERGES = 49152 - 256 - 2  # CLIP keeps this many BPE merges; vocab = 2 * 256 bytes + merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table of GPT-2/CLIP byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def write_clip_vocabulary(folder: Path) -> None:
    """Write vocab.json and merges.txt of the OpenAI CLIP tokenizer, derived from open_clip's BPE file."""
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it (torch, ftfy)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is needed for the CLIP BPE vocabulary file")
    bpe_file = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(bpe_file.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def clip_tokenizer(pad_token: str = EOS):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocabulary(Path(tmp))
        # CLIPTokenizer(vocab_file=...) silently ignores the files in transformers 5; from_pretrained reads them.
        return CLIPTokenizer.from_pretrained(tmp, pad_token=pad_token, bos_token=BOS, eos_token=EOS,
                                             unk_token=EOS, model_max_length=77)


def _text_config(hidden: int, with_projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                          hidden_act="quick_gelu" if not with_projection else "gelu")


def _vae():
    from diffusers import AutoencoderKL

    # Four levels, as in real SD, so a 64 px image becomes an 8x8 latent.
    return AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                         layers_per_block=1, sample_size=64)


def _unet(cross_attention_dim: int, sdxl: bool):
    from diffusers import UNet2DConditionModel

    extra = {}
    if sdxl:
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + 32, transformer_layers_per_block=(1, 1))
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
                                **extra)


_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)


def build_tiny_pipeline(family: str, seed: int = 0):
    """A random tiny pipeline of the given family, deterministic for a seed."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scheduler = EulerDiscreteScheduler(**_SCHEDULER)
        if family == "sd":
            return StableDiffusionPipeline(
                vae=_vae(), text_encoder=CLIPTextModel(_text_config(32, False)), tokenizer=clip_tokenizer(),
                unet=_unet(32, sdxl=False), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
        return StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config(32, False)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(32, True)), tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"), unet=_unet(64, sdxl=True), scheduler=scheduler)


def write_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny pipeline with `save_pretrained`; the folder appears only once complete."""
    pipe = build_tiny_pipeline(family, seed)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
    return Path(out_dir)
