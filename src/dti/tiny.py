"""Tiny random diffusers pipelines of every registered family, and the building blocks they share.

They let the whole product (loading with `from_pretrained`, training, sampling, export) run offline on a
CPU in seconds: each is a pipeline of the family's real classes with small, random weights. The SD and
SDXL tokenizers are the genuine 49408-token CLIP BPE (rebuilt from the file open_clip ships), so prompts
tokenize exactly as on a real checkpoint. Gemma-2's and UMT5's tokenizers cannot be downloaded here: SANA
and Wan get tokenizers of the same library classes (GemmaTokenizer, T5Tokenizer) whose small
vocabularies are built from this project's prompt files, so their ids and pieces are NOT the real ones.
Each family's pipeline is defined by its backbone class (`Backbone.tiny_pipeline`).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import math
import string
import tempfile
from collections import Counter
from pathlib import Path

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


# --- the SD-style parts SD 1.x/2.x and SDXL share -------------------------------------------------------
def clip_text_config(hidden: int, with_projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                          hidden_act="quick_gelu" if not with_projection else "gelu")


def kl_vae():
    from diffusers import AutoencoderKL

    # Four levels, as in real SD, so a 64 px image becomes an 8x8 latent.
    return AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                         layers_per_block=1, sample_size=64)


def unet(cross_attention_dim: int, sdxl: bool):
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


EULER_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                       prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)


# --- small trained tokenizers (SANA's Gemma, Wan's UMT5) --------------------------------------------------
@functools.lru_cache(maxsize=1)
def tokenizer_corpus() -> tuple[str, ...]:
    """What the small tokenizers are trained on: the training templates and this project's prompt files,
    each filled with every DreamBooth class word, the class words alone, and every ASCII letter, digit and
    punctuation mark (so any ASCII word splits into known pieces, as with the real vocabularies). All of it
    ships with the library (dti.data), so an installed `dti` builds the same tokenizers as the checkout."""
    from dti.data import DATA_DIR
    from dti.prompts import DEFAULT_PROMPTS_DIR, TRAINING_TEMPLATES

    classes = ["dog", "cat", "box", "stuffed animal", "toy", "object"]
    table = DATA_DIR / "subjects" / "dreambooth.tsv"
    classes += [line.split("\t")[1] for line in table.read_text(encoding="utf-8").splitlines()[1:] if line]
    templates = list(TRAINING_TEMPLATES)
    for path in sorted(DEFAULT_PROMPTS_DIR.glob("*.txt")):
        templates += [line for line in path.read_text(encoding="utf-8").splitlines()
                      if line.strip() and not line.startswith("#")]
    classes = sorted(set(classes))
    # Each class word also alone (an initializer is encoded on its own), as often as in the prompts.
    lines = [t.replace("{}", c) for t in templates for c in classes] + classes * len(templates)
    lines.append(" ".join(string.ascii_letters + string.digits + string.punctuation))
    return tuple(lines)


def trained_bpe(vocab_size: int, specials: list[str], unk: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-fallback BPE trained on the corpus, pieces marked with '▁' for a leading
    space as in SentencePiece-style vocabularies (Gemma's)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(tokenizer_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials + byte_tokens, show_progress=False))
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def counted_unigram(specials: list[str]) -> list[tuple[str, float]]:
    """(piece, score) of a SentencePiece-style unigram model (T5's kind) over the corpus: every word a
    piece scored by its log frequency, every character a piece scored far lower (so known words stay whole
    and other words split into characters); characters never seen map to the unknown token, as with the
    real vocabulary."""
    words = Counter(word for line in tokenizer_corpus() for word in line.split())
    total = sum(words.values())
    chars = sorted({c for word in words for c in word})
    pieces = [(s, 0.0) for s in specials] + [("▁", math.log(1 / total) - 10)]
    pieces += [(f"▁{w}", math.log(n / total)) for w, n in sorted(words.items())]
    pieces += [(c, math.log(1 / total) - 10) for c in chars]
    return pieces
