"""A diffusion model's token vocabularies, read straight from its folder: no model is built.

`dti inspect` and the norm analysis need only each text encoder's token-embedding table and its token
strings. Building the encoders would import transformers and load every weight; here the one table is
read from the encoder's safetensors file (one tensor, also from a sharded checkpoint) and the strings
from the tokenizer's vocab.json or tokenizer.json. Numpy only, and only that one tensor is read, not the
encoder's whole checkpoint (gigabytes for SDXL's OpenCLIP encoder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dti.errors import DtiError
from dti.model_files import local_path


@dataclass
class Vocabulary:
    """One text encoder's token table (float32 [n, d]) and its token strings (None where an id has none)."""

    slot: str
    table: np.ndarray
    tokens: list[str | None]

    def norms(self) -> np.ndarray:
        """L2 norms of the non-zero rows (zero rows are unused ids, as in dti.tokens.vocab_norms)."""
        norms = np.linalg.norm(self.table.astype(np.float64), axis=1)
        return norms[norms > 0]

    def mean_norm(self) -> float:
        return float(self.norms().mean())

    @property
    def byte_level(self) -> bool:
        """CLIP's byte-level BPE (words end in </w>), as opposed to SentencePiece (words start with '\u2581')."""
        return any(t is not None and t.endswith("</w>") for t in self.tokens)


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE (GPT-2, CLIP) spells every byte as a printable character; this maps them back."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


_BYTES = _byte_decoder()


def readable(token: str | None, byte_level: bool = True) -> str:
    """A token as a reader sees it. Byte-level BPE (CLIP) spells bytes as printable characters and ends a
    word with `</w>`: decoded, a piece that does not end a word gets a trailing '-'. SentencePiece (Gemma,
    T5) starts a word with '▁': a piece without it continues a word and gets a leading '-'."""
    if token is None:
        return "?"
    if token.startswith("<") and token.endswith(">"):  # special and byte-fallback tokens: <pad>, <0x41>
        return token
    if token.startswith("\u2581"):
        return token[1:] or token
    word = token.endswith("</w>")
    body = token[: -len("</w>")] if word else token
    if all(ch in _BYTES for ch in body):
        body = bytes(_BYTES[ch] for ch in body).decode("utf-8", errors="replace")
    if word:
        return body
    return body + "-" if byte_level else "-" + body


def model_family(model_dir: str | Path) -> str:
    """The family (dti.families) from the folder's model_index.json."""
    from dti.families import pipeline_families

    index = Path(model_dir) / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError) as err:
        raise DtiError(f"cannot read {index}: {err}") from err
    families = pipeline_families()
    if name not in families:
        raise DtiError(f"{index}: {name or 'unknown'} pipeline; supported: {sorted(families)}")
    return families[name]


def _weights_file(encoder_dir: Path, suffix: str) -> tuple[Path, str]:
    """The safetensors file holding the token table, and the table's key (sharded checkpoints too)."""
    index = encoder_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        keys = [k for k in weight_map if k.endswith(suffix)]
        if len(keys) == 1:
            return encoder_dir / weight_map[keys[0]], keys[0]
        raise DtiError(f"{index}: expected one *{suffix} entry, found {keys}")
    path = encoder_dir / "model.safetensors"
    if not path.is_file():
        raise DtiError(f"no model.safetensors in {encoder_dir} (only safetensors weights are read)")
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        keys = [k for k in handle.keys() if k.endswith(suffix)]
    if len(keys) != 1:
        raise DtiError(f"{path}: expected one *{suffix} tensor, found {keys}")
    return path, keys[0]


def read_token_table(encoder_dir: str | Path, suffix: str = "embeddings.token_embedding.weight") -> np.ndarray:
    """The encoder's token-embedding table as float32 [n, d] (`suffix`: how its key ends)."""
    from safetensors import safe_open

    path, key = _weights_file(Path(encoder_dir), suffix)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return np.asarray(handle.get_tensor(key), dtype=np.float32)
    except TypeError:  # bfloat16 has no numpy dtype: read it through torch instead
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key).float().numpy()


def read_token_strings(tokenizer_dir: str | Path, size: int) -> list[str | None]:
    """Token string per id (vocab.json, or tokenizer.json's model vocabulary and added tokens)."""
    folder = Path(tokenizer_dir)
    mapping: dict[str, int] = {}
    if (folder / "vocab.json").is_file():
        mapping = json.loads((folder / "vocab.json").read_text())
    elif (folder / "tokenizer.json").is_file():
        spec = json.loads((folder / "tokenizer.json").read_text())
        vocab = spec.get("model", {}).get("vocab", {})
        # BPE and WordPiece store {token: id}; Unigram (T5, UMT5) a list of [token, score] in id order.
        mapping = {entry[0]: i for i, entry in enumerate(vocab)} if isinstance(vocab, list) else dict(vocab)
        mapping.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
    else:
        raise DtiError(f"no vocab.json or tokenizer.json in {folder}")
    tokens: list[str | None] = [None] * size
    for token, index in mapping.items():
        if 0 <= int(index) < size:
            tokens[int(index)] = token
    return tokens


def load_vocabularies(model_dir: str | Path) -> dict[str, Vocabulary]:
    """{slot: Vocabulary} for every text encoder of a local diffusers folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DtiError(f"model folder not found: {model_dir}")
    from dti.families import check_family

    vocabularies = {}
    for slot in check_family(model_family(model_dir)).slots:
        table = read_token_table(model_dir / slot.encoder, slot.table)
        tokens = read_token_strings(model_dir / slot.tokenizer, len(table))
        # Rows past the tokenizer's last id (UMT5 pads its table) are never looked up: not vocabulary.
        used = max((i for i, t in enumerate(tokens) if t is not None), default=len(table) - 1) + 1
        vocabularies[slot.name] = Vocabulary(slot.name, table[:used], tokens[:used])
    return vocabularies


def resolve_model_dir(model: str, revision: str | None = None) -> Path:
    """A local folder as is; a hub id through the Hugging Face cache (only the tokenizers and encoders)."""
    path = local_path(model)
    if path is not None:
        if not path.is_dir():
            raise DtiError(f"model folder not found: {model}")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=[
            "model_index.json", "tokenizer*/*", "text_encoder*/config.json", "text_encoder*/model.safetensors",
            "text_encoder*/model.safetensors.index.json", "text_encoder*/model-*.safetensors"]))
    except Exception as err:  # offline, unknown id, gated repository: one line naming the model
        raise DtiError(f"cannot fetch the text encoders of {model!r}: {err}") from err
