"""`dti inspect`: what is in a textual-inversion file, how far its vectors sit from the vocabulary, and
which tools load it.

Reads safetensors only, and never unpickles: .pt/.bin/.ckpt files (and any file whose bytes are a pickle
or a torch zip archive) are refused, because unpickling a downloaded file runs whatever code it carries.

Layouts recognised (one file at a time):
- "diffusers": one tensor under the token's name, [k, d] (ours: learned_embeds.safetensors and
  learned_embeds_2.safetensors; the dti.slot metadata says which encoder);
- "emb_params": AUTOMATIC1111 / kohya for SD 1.x/2.x, one tensor [k, d];
- "string_to_param": A1111's .pt layout stored as safetensors (key "string_to_param.*");
- "sdxl": AUTOMATIC1111 / ComfyUI / kohya for SDXL, {"clip_l": [k, 768], "clip_g": [k, 1280]}.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dti.errors import DtiError
from dti.numbers import provenance_problems
from dti.terminal import LIMIT, visible
from dti.vocab import Vocabulary, readable

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"})
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol 2 or later
# Encoder widths of the models the A1111 / ComfyUI loaders know, to say where a file fits without --model.
STANDARD_TARGETS: dict[str, dict[str, int]] = {
    "SD 1.x": {"clip_l": 768},
    "SD 2.x": {"clip_h": 1024},
    "SDXL": {"clip_l": 768, "clip_g": 1280},
}
_SLOT_BY_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
_SLOT_NAME = re.compile(r"[A-Za-z0-9_]{1,32}")  # an encoder's name in dti.slot (clip_l, clip_g, umt5, ...)

# What a header may declare. Real embeddings are [k, d] with a handful of vectors and d a text encoder's
# width (a few thousand at most); these bounds refuse a file declaring more before anything is allocated,
# and a header longer than any embedding's metadata needs is not parsed.
MAX_HEADER_BYTES = 100 * 2**20
MAX_VECTORS = 1024
MAX_WIDTH = 16384
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class _Tensor:
    """A header entry that passed _check_entry: its dtype, its shape as [k, d], its bytes in the data section."""

    dtype: str
    shape: tuple[int, int]
    begin: int
    end: int


@dataclass
class EmbeddingFile:
    path: Path
    layout: str
    token: str | None  # the tensor's key in the diffusers layout (the token it was saved for)
    vectors: dict[str, np.ndarray]  # slot -> float32 [k, d]
    metadata: dict[str, str] = field(default_factory=dict)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length that fits the file, then a JSON object. Its
    first byte may well be 0x80 (a header of 128 + 256 n bytes), which alone would pass for a pickle."""
    return len(head) > 8 and 8 + int.from_bytes(head[:8], "little") <= size and head[8:9] == b"{"


def _refuse_pickle(path: Path) -> None:
    why = None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        why = f"a {path.suffix} file is a pickle"
    else:
        with open(path, "rb") as handle:
            head = handle.read(9)
        if _looks_like_safetensors(head, path.stat().st_size):
            return
        if head.startswith(_ZIP_MAGIC):
            why = "its bytes are a zip archive (torch.save's pickle container)"
        elif head[:1] == bytes([_PICKLE_PROTO]):
            why = "its bytes are a pickle"
    if why:
        raise DtiError(f"{path}: refused, {why}; dti inspect reads safetensors only and never unpickles a file "
                       "(loading a pickle runs any code it carries). Ask for a .safetensors version")


def _quoted(text: str) -> str:
    """A name from the file, for a message: quoted, escaped and capped (dti.terminal)."""
    return f"'{visible(text, LIMIT)}'"


def _bad(path: Path, why: str) -> DtiError:
    return DtiError(f"{path}: not a readable safetensors file ({why})")


def _read_header(path: Path, handle, size: int) -> tuple[dict[str, _Tensor], dict[str, str], int]:
    """The tensors the header declares, its metadata and where the data section starts, all checked against
    the file's size before a byte of tensor data is read."""
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise _bad(path, f"{size} bytes, fewer than the 8 of a header length")
    length = int.from_bytes(prefix, "little")
    if length > MAX_HEADER_BYTES:
        raise _bad(path, f"its header declares {length} bytes, more than the {MAX_HEADER_BYTES} bytes read at most")
    if 8 + length > size:
        raise _bad(path, f"its header declares {length} bytes but the file has {size}")
    try:
        header = json.loads(handle.read(length))
    except ValueError as err:  # UnicodeDecodeError is a ValueError too
        raise _bad(path, f"its header is not JSON: {_one_line(err)}") from err
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _bad(path, "its __metadata__ is not a map of strings to strings")
    data_size = size - 8 - length
    return {key: _check_entry(path, key, entry, data_size) for key, entry in header.items()}, metadata, 8 + length


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path: Path, key: str, entry, data_size: int) -> _Tensor:
    """One header entry: a known floating-point dtype, the shape of an embedding ([k, d] or [d], within
    MAX_VECTORS x MAX_WIDTH) and a byte range inside the data section that holds exactly dtype x shape."""
    name = _quoted(key)
    if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
            and all(_is_count(n) for n in entry["shape"]) and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2 and all(_is_count(n) for n in entry["data_offsets"])):
        raise _bad(path, f"tensor {name} has no valid dtype, shape and data_offsets")
    dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _ITEM_BYTES:
        raise DtiError(f"{path}: tensor {name} is {visible(dtype, 20)}; an embedding is floating point "
                       f"({', '.join(_ITEM_BYTES)})")
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise DtiError(f"{path}: tensor {name} has shape {shape}; expected [vectors, width]")
    vectors, width = (1, shape[0]) if len(shape) == 1 else shape
    if vectors > MAX_VECTORS or width > MAX_WIDTH:
        raise DtiError(f"{path}: tensor {name} declares shape {shape} ({dtype}); an embedding has at most "
                       f"{MAX_VECTORS} vectors of width at most {MAX_WIDTH}")
    if not begin <= end <= data_size:
        raise _bad(path, f"tensor {name} declares bytes [{begin}, {end}) of a data section of {data_size} bytes")
    need = vectors * width * _ITEM_BYTES[dtype]
    if end - begin != need:
        raise _bad(path, f"tensor {name} of shape {shape} ({dtype}) needs {need} bytes but declares {end - begin}")
    return _Tensor(dtype, (vectors, width), begin, end)


def _decode(raw: bytes, tensor: _Tensor) -> np.ndarray:
    if tensor.dtype == "BF16":  # the upper half of a float32
        values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    elif tensor.dtype.startswith("F8_"):
        import torch

        kind = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[tensor.dtype]
        values = torch.frombuffer(bytearray(raw), dtype=kind).float().numpy()
    else:
        values = np.frombuffer(raw, _NUMPY[tensor.dtype])
    return values.astype(np.float32).reshape(tensor.shape)


def _read_tensor(path: Path, handle, start: int, key: str, tensor: _Tensor) -> np.ndarray:
    """The declared byte range of one checked tensor (at most MAX_VECTORS x MAX_WIDTH values), as float32."""
    handle.seek(start + tensor.begin)
    raw = handle.read(tensor.end - tensor.begin)
    if len(raw) != tensor.end - tensor.begin:
        raise _bad(path, f"tensor {_quoted(key)} is cut short: the file changed while it was read")
    return _decode(raw, tensor)


def _check_layout(path: Path, keys: list[str]) -> None:
    """One tensor, or clip_l and clip_g: checked on the header's names, before any tensor is read."""
    if {"clip_l", "clip_g"} <= set(keys) and len(keys) > 2:
        extra = ", ".join(_quoted(k) for k in keys if k not in ("clip_l", "clip_g"))
        raise DtiError(f"{path}: SDXL layout with extra tensors [{extra}]")
    if len(keys) != 1 and set(keys) != {"clip_l", "clip_g"}:
        shown = ", ".join(_quoted(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        raise DtiError(f"{path}: {len(keys)} tensors [{shown}]; a textual-inversion file holds one tensor, or "
                       "clip_l and clip_g (SDXL)")


def _single_slot(path: Path, key: str, width: int, metadata: dict[str, str]) -> str:
    if metadata.get("dti.slot"):
        slot = metadata["dti.slot"]
        if not _SLOT_NAME.fullmatch(slot):
            raise DtiError(f"{path}: metadata dti.slot {_quoted(slot)} is not an encoder's name")
        return slot
    if key in ("clip_l", "clip_g"):
        return key
    return _SLOT_BY_WIDTH.get(width, "text_encoder")


def read_embedding_file(path: str | Path) -> EmbeddingFile:
    """Read one textual-inversion safetensors file; DtiError (naming the file) for anything else.

    The header is checked against the file before any tensor is read (dti.inspect._check_entry), so a small
    file declaring a huge tensor is refused without allocating it."""
    path = Path(path)
    if not path.is_file():
        raise DtiError(f"{path}: no such file")
    _refuse_pickle(path)
    with open(path, "rb") as handle:
        entries, metadata, start = _read_header(path, handle, path.stat().st_size)
        keys = sorted(entries)
        _check_layout(path, keys)
        tensors = {key: _read_tensor(path, handle, start, key, entries[key]) for key in keys}
    if len(keys) == 2:  # clip_l and clip_g
        vectors = {slot: tensors[slot] for slot in ("clip_l", "clip_g")}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise DtiError(f"{path}: clip_l has {vectors['clip_l'].shape[0]} vectors but clip_g has "
                           f"{vectors['clip_g'].shape[0]}")
        return EmbeddingFile(path, "sdxl", None, vectors, metadata)
    (key,) = keys
    rows = tensors[key]
    if key == "emb_params":
        layout, token = "emb_params", None
    elif key.startswith("string_to_param."):
        layout, token = "string_to_param", None
    else:
        layout, token = "diffusers", key
    return EmbeddingFile(path, layout, token, {_single_slot(path, key, rows.shape[1], metadata): rows}, metadata)


# --- which tools load it ---------------------------------------------------------------------------
def _client_verdicts(emb: EmbeddingFile, target: dict[str, int]) -> dict[str, tuple[str, str]]:
    """{client: (yes | partly | no, how or why)} for a model whose encoders have these widths.

    The rules follow each tool's loader: diffusers takes any one-tensor file (an SDXL pair one encoder
    at a time); A1111 takes one tensor for a one-encoder model and clip_l + clip_g for SDXL, and skips
    a file whose width differs from the model's; ComfyUI gives each encoder the tensor under its own
    key (clip_l, clip_g, clip_h) or else the file's first tensor, and ignores one of the wrong width.
    """
    widths = {slot: rows.shape[1] for slot, rows in emb.vectors.items()}
    pair = emb.layout == "sdxl"
    one_encoder = len(target) == 1
    matching = [slot for slot, width in target.items() if width in widths.values()]

    if pair:
        fit = {slot: slot in widths and widths[slot] == target[slot] for slot in target}
        if all(fit.values()):
            how = " and ".join(f"state_dict[{s!r}] into its {s} encoder" for s in target)
            diffusers = ("yes", f"load_file(), then load_textual_inversion({how}, token=...)")
        elif any(fit.values()):
            diffusers = ("partly", "only " + ", ".join(s for s, ok in fit.items() if ok) + " fits")
        else:
            diffusers = ("no", f"widths {widths} do not match the encoders {target}")
    else:
        (width,) = widths.values()
        if not matching:
            diffusers = ("no", f"width {width} matches no encoder {target}")
        elif one_encoder:
            diffusers = ("yes", "load_textual_inversion(file, token=...)")
        else:
            diffusers = ("partly", f"into the {matching[0]} encoder only; the other encoder has no such token")

    a1111_widths = sum(target.values())  # A1111 checks the summed width for SDXL
    if pair:
        ok = not one_encoder and all(widths.get(s) == w for s, w in target.items())
        a1111 = ("yes", "drop it into embeddings/") if ok else (
            "no", "an SDXL pair loads only on SDXL" if one_encoder else f"widths {widths} differ from {target}")
    else:
        (width,) = widths.values()
        if one_encoder and width == a1111_widths:
            a1111 = ("yes", "drop it into embeddings/")
        elif one_encoder:
            a1111 = ("no", f"width {width}, the model's is {a1111_widths}: skipped")
        else:
            a1111 = ("no", "for SDXL it needs clip_l and clip_g in one file")

    def comfy_tensor(slot: str) -> int:
        return widths[slot] if slot in widths else next(iter(widths.values()))

    fits = [slot for slot, width in target.items() if comfy_tensor(slot) == width]
    if len(fits) == len(target):
        comfy = ("yes", "embedding:NAME in the prompt")
    elif fits:
        comfy = ("partly", f"only the {', '.join(fits)} encoder takes it; the others ignore it")
    else:
        comfy = ("no", "no encoder of this width")
    return {"diffusers": diffusers, "AUTOMATIC1111": a1111, "ComfyUI": comfy}


def _dti_only(family: str) -> dict[str, tuple[str, str]]:
    """A family whose pipeline diffusers' textual-inversion loader and the web UIs do not know."""
    why = f"it loads CLIP text-encoder embeddings only, not {family}'s"
    return {"dti": ("yes", "dti sample --embeds FOLDER, or dti.sample.install_learned_token(pipe, FOLDER)"),
            "diffusers": ("no", f"load_textual_inversion: {why}"), "AUTOMATIC1111": ("no", why), "ComfyUI": ("no", why)}


def _dti_only_family(family: str | None) -> bool:
    from dti.backbones.registry import FAMILIES

    return family in FAMILIES and not FAMILIES[family].textual_inversion_clients


def client_table(emb: EmbeddingFile, targets: dict[str, dict[str, int]], family: str | None = None) -> list[dict]:
    """Per target model, what each client makes of the file; `family` (of the model, or the one the file was
    trained for) decides first whether any client but dti's own loader knows its text encoders."""
    dti_only = _dti_only_family(family)
    return [{"client": client, "model": name, "loads": verdict, "note": note}
            for name, target in targets.items()
            for client, (verdict, note) in (_dti_only(family) if dti_only else _client_verdicts(emb, target)).items()]


# --- distances to the vocabulary ---------------------------------------------------------------------
def _match_encoder(slot: str, width: int, vocabularies: dict[str, Vocabulary]) -> str | None:
    if slot in vocabularies and vocabularies[slot].table.shape[1] == width:
        return slot
    return next((s for s, v in vocabularies.items() if v.table.shape[1] == width), None)


def nearest_tokens(rows: np.ndarray, vocab: Vocabulary, top: int) -> list[list[tuple[str, float]]]:
    """Per row, the `top` vocabulary tokens closest in direction (cosine), best first."""
    table = vocab.table.astype(np.float64)
    norms = np.linalg.norm(table, axis=1)
    usable = norms > 0
    units = table[usable] / norms[usable, None]
    ids = np.flatnonzero(usable)
    out = []
    byte_level = vocab.byte_level
    for row in rows.astype(np.float64):
        cosine = units @ (row / max(np.linalg.norm(row), 1e-12))
        best = np.argsort(-cosine, kind="stable")[:top]
        out.append([(readable(vocab.tokens[ids[i]], byte_level), float(cosine[i])) for i in best])
    return out


def inspect_file(path: str | Path, vocabularies: dict[str, Vocabulary] | None = None, *, model: str | None = None,
                 family: str | None = None, top: int = 5) -> dict:
    """Everything `dti inspect` prints, as a JSON-ready dict (`family`: the model's, when one is given)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise DtiError(f"top must be a positive integer (nearest tokens per vector), got {top!r}")
    emb = read_embedding_file(path)
    encoders = []
    for slot, rows in emb.vectors.items():
        entry: dict = {"encoder": slot, "vectors": rows.shape[0], "width": rows.shape[1]}
        matched = _match_encoder(slot, rows.shape[1], vocabularies) if vocabularies else None
        vocab = vocabularies[matched] if matched else None
        if vocabularies and vocab is None:
            entry["note"] = f"no encoder of {model} has width {rows.shape[1]}"
        if vocab is not None:
            entry["model_encoder"] = matched
            entry["vocab_norm_mean"] = vocab.mean_norm()
            nearest = nearest_tokens(rows, vocab, top)
        entry["rows"] = []
        for i, row in enumerate(rows):
            norm = float(np.linalg.norm(row.astype(np.float64)))
            item: dict = {"vector": i, "norm": norm}
            if vocab is not None:
                item["ratio_to_vocab_mean"] = norm / entry["vocab_norm_mean"]
                item["nearest"] = [{"token": t, "cosine": c} for t, c in nearest[i]]
                best = max(min(nearest[i][0][1], 1.0), -1.0)
                item["angle_to_nearest_deg"] = math.degrees(math.acos(best))
            entry["rows"].append(item)
        encoders.append(entry)
    family = family or emb.metadata.get("dti.family")
    if vocabularies:
        targets = {f"{model}": {s: v.table.shape[1] for s, v in vocabularies.items()}}
    elif _dti_only_family(family):
        targets = {f"{family} models": {}}
    else:
        targets = STANDARD_TARGETS
    # The provenance's numbers as their flags would check them (dti.numbers): shown, never used, so a file
    # claiming kappa NaN is still inspected, with a line saying what is wrong.
    return {"file": str(emb.path), "layout": emb.layout, "token": emb.token, "model": model, "family": family,
            "metadata": emb.metadata, "metadata_problems": provenance_problems(emb.path, emb.metadata),
            "encoders": encoders, "clients": client_table(emb, targets, family)}


def format_report(info: dict) -> str:
    """The human-readable form of `inspect_file`'s result. Whatever came from a file (its name, tensor names,
    metadata, tokens) is shown through dti.terminal.visible: control and format characters escaped, so a
    value cannot start a line of its own or drive the terminal, and each value capped at LIMIT characters."""
    def shown(text) -> str:
        return visible(text, LIMIT)

    token = f", token '{shown(info['token'])}'" if info["token"] else ""
    lines = [f"{info['file']}", f"  layout: {info['layout']}{token}"]
    meta = {k.removeprefix("dti."): v for k, v in info["metadata"].items() if k.startswith("dti.")}
    if meta:
        fields = ", ".join(f"{k}={shown(meta[k])}" for k in ("method", "base_model", "steps", "kappa") if k in meta)
        lines.append(f"  trained by dti: {fields}")
    for problem in info.get("metadata_problems", {}).values():
        lines.append(f"  warning: {shown(problem)}")
    for enc in info["encoders"]:
        head = f"  {enc['encoder']}: {enc['vectors']} vector(s) of width {enc['width']}"
        if "vocab_norm_mean" in enc:
            head += f"; vocabulary mean norm {enc['vocab_norm_mean']:.4f} ({enc['model_encoder']})"
        lines.append(head)
        if enc.get("note"):
            lines.append(f"    {enc['note']}")
        for row in enc["rows"]:
            text = f"    [{row['vector']}] norm {row['norm']:.4f}"
            if "ratio_to_vocab_mean" in row:
                near = ", ".join(f"{shown(n['token'])} {n['cosine']:.2f}" for n in row["nearest"])
                text += (f" = {row['ratio_to_vocab_mean']:.2f} x vocabulary mean; nearest: {near}; "
                         f"angle to nearest {row['angle_to_nearest_deg']:.1f} deg")
            lines.append(text)
    lines.append("  loads in:")
    for model in dict.fromkeys(c["model"] for c in info["clients"]):
        parts = [f"{c['client']} {c['loads']} ({c['note']})" for c in info["clients"] if c["model"] == model]
        lines.append(f"    {model}: " + "; ".join(parts))
    # Each line escaped as a whole too (idempotent on the fields above): nothing else printed here, a file
    # name, a model name or a note quoting either, can break a line.
    return "\n".join(visible(line) for line in lines)


def run_inspect(path: str, *, model: str | None = None, revision: str | None = None, as_json: bool = False,
                top: int = 5) -> str:
    """The CLI's work: read the file first (a bad file fails before any model is fetched), then the model."""
    read_embedding_file(path)
    vocabularies, family = None, None
    if model:
        from dti.vocab import load_vocabularies, model_family, resolve_model_dir

        folder = resolve_model_dir(model, revision)
        vocabularies, family = load_vocabularies(folder), model_family(folder)
    info = inspect_file(path, vocabularies, model=model, family=family, top=top)
    return json.dumps(info, indent=2) if as_json else format_report(info)
