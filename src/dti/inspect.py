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

Which text encoder a tensor is for is what the file says, never its width: the dti.slot metadata, else the
key (clip_l, clip_g), else the file name dti and diffusers give each encoder's file (learned_embeds_2 is
the second encoder's: dti.export.diffusers_file). SDXL's two encoders may have one width (the tiny models'
do), so a width cannot tell them apart. Against a model (--model), the width is then only checked: a named
encoder of another width is an error naming the file, the key and both widths. Only a tensor the file names
no encoder for (emb_params, a diffusers token from elsewhere) is matched to the model by its width.

A folder is an adapter's (dti.adapters: LoRA's pytorch_lora_weights.safetensors or OFT's peft files, as a run
writes them in adapter/ and adapter-steps-N/), described by dti.adapters.describe_adapter; or a run's (it
holds learned_embeds.safetensors), whose final token files, one per text encoder, and adapter/ are described.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dti.errors import DtiError
from dti.families import FAMILIES
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
# The names dti.export.diffusers_file gives each text encoder's file (and diffusers' training scripts use):
# learned_embeds[_N][-steps-S].safetensors, N = 2, 3, ... for the second encoder on.
_ENCODER_FILE = re.compile(r"learned_embeds(?:_([1-9][0-9]*))?(?:-steps-[0-9]+)?\.safetensors")
# What named a tensor's encoder (EmbeddingFile.named_by), as an error message quotes it.
BY_METADATA, BY_KEY, BY_FILE_NAME = "its dti.slot metadata", "its key", "its file name"

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
    declared: tuple[int, ...] = ()  # the shape as the header gives it: [d] or [k, d]


@dataclass
class EmbeddingFile:
    path: Path
    layout: str
    token: str | None  # the tensor's key in the diffusers layout (the token it was saved for)
    vectors: dict[str, np.ndarray]  # slot -> float32 [k, d]
    metadata: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # slot -> its tensor's key in the file
    # slot -> what in the file names that encoder (BY_METADATA, BY_KEY, BY_FILE_NAME); a slot absent here
    # was guessed from the width (clip_l for 768, clip_h for 1024, ...).
    named_by: dict[str, str] = field(default_factory=dict)
    position: int | None = None  # the encoder the file name is for (learned_embeds: 0, learned_embeds_2: 1)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # slot -> its tensor's shape as stored


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
    return _Tensor(dtype, (vectors, width), begin, end, tuple(shape))


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


def file_position(path: str | Path) -> int | None:
    """The text encoder a file's name says it is for, as dti.export.diffusers_file names them
    (learned_embeds: 0, learned_embeds_2: 1, also with -steps-N), or None for any other name."""
    match = _ENCODER_FILE.fullmatch(Path(path).name)
    if match is None:
        return None
    if match.group(1) is None:
        return 0
    number = int(match.group(1))
    return number - 1 if number >= 2 else None  # nothing writes learned_embeds_1


def _position_slot(position: int, metadata: dict[str, str], width: int) -> str:
    """The encoder at `position` of the family the file was trained for, else the one name every family
    with that many encoders gives it (position 1: SDXL's clip_g), else a guess from the width."""
    family = FAMILIES.get(metadata.get("dti.family", ""))
    names = {f.slots[position].name for f in ([family] if family else FAMILIES.values()) if position < len(f.slots)}
    return names.pop() if len(names) == 1 else _SLOT_BY_WIDTH.get(width, "text_encoder")


def _single_slot(path: Path, key: str, width: int, metadata: dict[str, str]) -> tuple[str, str | None]:
    """(the encoder a one-tensor file is for, what in the file says so: None when only its width does)."""
    if metadata.get("dti.slot"):
        slot = metadata["dti.slot"]
        if not _SLOT_NAME.fullmatch(slot):
            raise DtiError(f"{path}: metadata dti.slot {_quoted(slot)} is not an encoder's name")
        return slot, BY_METADATA
    if key in ("clip_l", "clip_g"):
        return key, BY_KEY
    position = file_position(path)
    if position is not None:
        return _position_slot(position, metadata, width), BY_FILE_NAME
    return _SLOT_BY_WIDTH.get(width, "text_encoder"), None


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
    position = file_position(path)
    if len(keys) == 2:  # clip_l and clip_g: each key names its encoder
        pair = ("clip_l", "clip_g")
        vectors = {slot: tensors[slot] for slot in pair}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise DtiError(f"{path}: clip_l has {vectors['clip_l'].shape[0]} vectors but clip_g has "
                           f"{vectors['clip_g'].shape[0]}")
        return EmbeddingFile(path, "sdxl", None, vectors, metadata, keys={s: s for s in pair},
                             named_by=dict.fromkeys(pair, BY_KEY), position=position,
                             shapes={s: entries[s].declared for s in pair})
    (key,) = keys
    rows = tensors[key]
    if key == "emb_params":
        layout, token = "emb_params", None
    elif key.startswith("string_to_param."):
        layout, token = "string_to_param", None
    else:
        layout, token = "diffusers", key
    slot, named_by = _single_slot(path, key, rows.shape[1], metadata)
    return EmbeddingFile(path, layout, token, {slot: rows}, metadata, keys={slot: key},
                         named_by={slot: named_by} if named_by else {}, position=position,
                         shapes={slot: entries[key].declared})


# --- which tools load it ---------------------------------------------------------------------------
# Each client's rule follows its loader, for a model whose encoders have the widths `target` gives
# ({slot: width}, in the model's order). A verdict is (yes | partly | no, how or why).
Verdict = tuple[str, str]


def _widths(emb: EmbeddingFile) -> dict[str, int]:
    return {slot: rows.shape[1] for slot, rows in emb.vectors.items()}


def _diffusers(emb: EmbeddingFile, target: dict[str, int]) -> Verdict:
    """load_textual_inversion takes one tensor per call, into the encoder it is given (the first by default),
    so an SDXL pair loads one key at a time and a one-tensor file into one encoder only."""
    widths = _widths(emb)
    if emb.layout == "sdxl":
        fit = {slot: slot in widths and widths[slot] == target[slot] for slot in target}
        if all(fit.values()):
            how = " and ".join(f"state_dict[{s!r}] into its {s} encoder" for s in target)
            return "yes", f"load_file(), then load_textual_inversion({how}, token=...)"
        if any(fit.values()):
            return "partly", "only " + ", ".join(s for s, ok in fit.items() if ok) + " fits"
        return "no", f"widths {widths} do not match the encoders {target}"
    ((slot, width),) = widths.items()
    # The encoder the file names, when the model has it at this width; else the first of this width.
    into = slot if target.get(slot) == width else next((s for s, w in target.items() if w == width), None)
    if into is None:
        return "no", f"width {width} matches no encoder {target}"
    if len(target) == 1:
        return "yes", "load_textual_inversion(file, token=...)"
    return "partly", f"into the {into} encoder only; the other encoder has no such token"


def _webui(emb: EmbeddingFile, target: dict[str, int]) -> Verdict:
    """AUTOMATIC1111 and Forge (one loader): one tensor for a one-encoder model, clip_l + clip_g for SDXL,
    each encoder given the tensor under its key; a file whose width (summed over a pair) is not the
    model's (summed over its encoders) is skipped."""
    widths = _widths(emb)
    one_encoder = len(target) == 1
    if emb.layout == "sdxl":
        if not one_encoder and all(widths.get(s) == w for s, w in target.items()):
            return "yes", "drop it into embeddings/"
        return "no", "an SDXL pair loads only on SDXL" if one_encoder else f"widths {widths} differ from {target}"
    (width,) = widths.values()
    if not one_encoder:
        return "no", "for SDXL it needs clip_l and clip_g in one file"
    expected = sum(target.values())
    if width == expected:
        return "yes", "drop it into embeddings/"
    return "no", f"width {width}, the model's is {expected}: skipped"


def _sdnext(emb: EmbeddingFile, target: dict[str, int]) -> Verdict:
    """SD.Next reads every tensor of the file whatever its key and gives each to the first encoder of its
    width; it skips a file with a width no encoder has, more tensors than encoders, or (for SDXL) one tensor."""
    widths = _widths(emb)
    hidden, encoders = list(target.values()), list(target)
    stray = [w for w in widths.values() if w not in hidden]
    if stray:
        return "no", f"width {stray[0]} matches no encoder {target}: skipped"
    if len(widths) > len(hidden):
        return "no", "an SDXL pair loads only on SDXL: skipped"
    if len(widths) < len(hidden) and len(widths) != 2:
        return "no", "for SDXL it needs clip_l and clip_g in one file: skipped"
    given = {encoders[hidden.index(width)] for width in widths.values()}
    if len(given) < len(encoders):
        missing = ", ".join(e for e in encoders if e not in given)
        return "partly", f"it gives each tensor to the first encoder of its width: {missing} gets none"
    return "yes", "drop it into its embeddings folder"


def _comfyui(emb: EmbeddingFile, target: dict[str, int]) -> Verdict:
    """ComfyUI gives each encoder the tensor under its own key (clip_l, clip_g, clip_h), else the file's
    first tensor, and ignores one of the wrong width."""
    widths = _widths(emb)

    def given(slot: str) -> int:
        return widths[slot] if slot in widths else next(iter(widths.values()))

    fits = [slot for slot, width in target.items() if given(slot) == width]
    # An encoder that takes the first tensor although the file names another of the model's encoders for it
    # (learned_embeds_2 where both are equally wide) gets rows that are not its own.
    named = [slot for slot in widths if slot in emb.named_by and slot in target]
    borrowed = [slot for slot in fits if slot not in widths and named]
    if borrowed:
        return "partly", f"the {', '.join(borrowed)} encoder takes {named[0]}'s rows too (the file's first tensor)"
    if len(fits) == len(target):
        return "yes", "embedding:NAME in the prompt"
    if fits:
        return "partly", f"only the {', '.join(fits)} encoder takes it; the others ignore it"
    return "no", "no encoder of this width"


def _invokeai(emb: EmbeddingFile, target: dict[str, int]) -> Verdict:
    """InvokeAI reads a file's base model from one number: clip_g's width for a pair, emb_params' width,
    else the first dimension of the tensor (k of a [k, d] diffusers-layout tensor, d of a [d] one), and
    offers the file only for models of that base (here: the width of the model's last encoder). On SDXL
    each encoder takes clip_l when clip_l has its width, else clip_g; a tensor of the wrong width fails."""
    widths = _widths(emb)
    if emb.layout == "sdxl":
        base, how = widths["clip_g"], "clip_g's width"
    elif emb.layout == "emb_params":
        base, how = next(iter(widths.values())), "its width"
    else:
        slot = next(iter(widths))
        base, how = (emb.shapes.get(slot) or emb.vectors[slot].shape)[0], "the first dimension of its tensor"
    expected = list(target.values())[-1]
    if base != expected:
        return "no", f"it reads the base model from {how}, {base}; this model's is {expected}"
    given = {}
    for encoder, width in target.items():
        slot = ("clip_l" if widths["clip_l"] == width else "clip_g") if emb.layout == "sdxl" else next(iter(widths))
        if widths[slot] != width:
            return "no", f"its {encoder} encoder ({width} wide) would get {widths[slot]}-wide rows: an error"
        given[encoder] = slot
    if len(target) > 1 and len(set(given.values())) < len(target):
        shared = ", ".join(f"{encoder} gets {slot}" for encoder, slot in given.items())
        return "partly", f"it matches tensors to encoders by width: {shared}"
    return "yes", "install it by its path in the Model Manager"


# The clients of the README's table of tools ("Using the token in other tools"), each with its loader's rule;
# tests/test_inspect_slots.py checks that the two name the same clients.
CLIENTS = {"diffusers": _diffusers, "AUTOMATIC1111": _webui, "Forge": _webui, "SD.Next": _sdnext,
           "ComfyUI": _comfyui, "InvokeAI": _invokeai}


def _client_verdicts(emb: EmbeddingFile, target: dict[str, int]) -> dict[str, Verdict]:
    """{client: (yes | partly | no, how or why)} for a model whose encoders have these widths."""
    return {client: rule(emb, target) for client, rule in CLIENTS.items()}


def _dti_only(family: str) -> dict[str, Verdict]:
    """A family whose pipeline diffusers' textual-inversion loader and the web UIs do not know."""
    why = f"it loads CLIP text-encoder embeddings only, not {family}'s"
    return {"dti": ("yes", "dti sample --embeds FOLDER, or dti.sample.install_learned_token(pipe, FOLDER)"),
            **{client: ("no", f"load_textual_inversion: {why}" if client == "diffusers" else why)
               for client in CLIENTS}}


def _dti_only_family(family: str | None) -> bool:
    return family in FAMILIES and not FAMILIES[family].textual_inversion_clients


def client_table(emb: EmbeddingFile, targets: dict[str, dict[str, int]], family: str | None = None) -> list[dict]:
    """Per target model, what each client makes of the file; `family` (of the model, or the one the file was
    trained for) decides first whether any client but dti's own loader knows its text encoders."""
    dti_only = _dti_only_family(family)
    return [{"client": client, "model": name, "loads": verdict, "note": note}
            for name, target in targets.items()
            for client, (verdict, note) in (_dti_only(family) if dti_only else _client_verdicts(emb, target)).items()]


def check_trained_family(path: str | Path, metadata: dict[str, str], family: str | None) -> None:
    """Refuse a file trained for another model family than `family` (the model's), in one line: widths alone
    cannot tell, since SD 1.x and SDXL's first encoder are both 768 wide, so the family dti records in a file's
    metadata (dti.family) decides. `dti sample` (dti.export.load_diffusers) and `dti inspect --model` both
    refuse with this. Files from other tools carry no dti.family and pass."""
    trained_for = metadata.get("dti.family")
    if family is not None and trained_for and trained_for != family:
        raise DtiError(f"{path} was trained for the {trained_for!r} family; this model is a {family!r} one")


# --- distances to the vocabulary ---------------------------------------------------------------------
def _model_encoder(emb: EmbeddingFile, slot: str, vocabularies: dict[str, Vocabulary],
                   model: str | None) -> tuple[str | None, str | None]:
    """(the model's encoder a tensor's rows are compared with, or None; a note). The encoder the file names
    decides, and a width other than that encoder's is an error naming the file, the key and both widths;
    a tensor the file names no encoder for goes to the model's first encoder of its width."""
    width, name = emb.vectors[slot].shape[1], model or "the model"
    named_by = emb.named_by.get(slot)
    if named_by is None:
        fits = [s for s, v in vocabularies.items() if v.table.shape[1] == width]
        if not fits:
            return None, f"no encoder of {name} has width {width}"
        if slot in fits or len(fits) == 1:
            return (slot if slot in fits else fits[0]), None
        return fits[0], (f"the file names no encoder, and {', '.join(fits)} are all {width} wide: compared with "
                         f"{fits[0]}")
    order = list(vocabularies)
    if named_by == BY_FILE_NAME:  # its position among the model's encoders, whatever they are called
        if emb.position >= len(order):
            return None, f"its file name is for text encoder {emb.position + 1}; {name} has {len(order)}"
        encoder = order[emb.position]
    elif slot in vocabularies:
        encoder = slot
    else:
        return None, f"{name} has no {slot} text encoder (it has {', '.join(order)})"
    expected = vocabularies[encoder].table.shape[1]
    if width != expected:
        raise DtiError(f"{emb.path}: tensor {_quoted(emb.keys.get(slot, slot))} holds rows for the {encoder} text "
                       f"encoder (as {named_by} says) and is {width} wide, but the {encoder} encoder of {name} is "
                       f"{expected} wide")
    return encoder, None


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
    """Everything `dti inspect` prints, as a JSON-ready dict (`family`: the model's, when one is given; a file
    trained for another family is refused, as `dti sample` refuses it: check_trained_family)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise DtiError(f"top must be a positive integer (nearest tokens per vector), got {top!r}")
    emb = read_embedding_file(path)
    check_trained_family(emb.path, emb.metadata, family)
    encoders = []
    for slot, rows in emb.vectors.items():
        entry: dict = {"encoder": slot, "vectors": rows.shape[0], "width": rows.shape[1]}
        if slot in emb.named_by:
            entry["named_by"] = emb.named_by[slot]
        matched, note = _model_encoder(emb, slot, vocabularies, model) if vocabularies else (None, None)
        vocab = vocabularies[matched] if matched else None
        if note:
            entry["note"] = note
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
    lines = [f"{info['file']}", f"  layout: {info['layout']}{token}", *_provenance_lines(info)]
    for enc in info["encoders"]:
        named = f" (by {enc['named_by']})" if enc.get("named_by") else ""
        head = f"  {enc['encoder']}{named}: {enc['vectors']} vector(s) of width {enc['width']}"
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


_PROVENANCE = ("method", "base_model", "steps", "kappa", "code_version")  # dti.* keys shown, in this order


def _provenance_lines(info: dict) -> list[str]:
    """dti's provenance of a token or adapter file (its dti.* metadata) in one line, and a line for each of its
    numbers that is wrong (dti.numbers)."""
    meta = {k.removeprefix("dti."): v for k, v in info["metadata"].items() if k.startswith("dti.")}
    lines = []
    if meta:
        fields = ", ".join(f"{k}={visible(meta[k], LIMIT)}" for k in _PROVENANCE if k in meta)
        lines.append(f"  trained by dti: {fields}")
    return lines + [f"  warning: {visible(problem, LIMIT)}" for problem in info["metadata_problems"].values()]


# --- adapters (dti.adapters) -------------------------------------------------------------------------
_ADAPTER_NAMES = {"lora": "LoRA", "oft": "OFT", "full": "the whole denoiser"}
_UPDATES = {"lora": "Frobenius norm of B A", "oft": "Frobenius norm of R - I, the rotation's distance from I",
            "full": "needs the base model's weights, which the folder does not hold"}
# How each kind loads (docs/method.md, "Token plus weights"); `dti sample --embeds RUN` takes the run's token
# with its adapter (dti.sample.load_step_adapter).
ADAPTER_LOADERS = {
    "lora": "dti sample --embeds RUN (token and adapter); diffusers: pipe.load_lora_weights(FOLDER)",
    "oft": "dti sample --embeds RUN (token and adapter); dti.adapters.load_adapter(backbone, FOLDER); peft: "
           "denoiser.add_adapter(OFTConfig.from_pretrained(FOLDER)), then set_peft_model_state_dict(denoiser, "
           "load_file(FOLDER/adapter_model.safetensors)) (docs/method.md, \"Token plus weights\")",
    "full": "dti sample --embeds RUN (token and denoiser); diffusers: UNet2DConditionModel.from_pretrained(FOLDER), "
            "passed to the pipeline as unet=",
}


def adapter_weights(folder: str | Path) -> Path | None:
    """The weights file that makes `folder` an adapter's (dti.adapters' LoRA, OFT or full layout), or None."""
    from dti.adapters import KINDS

    candidates = [Path(folder) / kind.weights_file for kind in KINDS.values()]
    return next((path for path in candidates if path.is_file()), None)


def _count(text: str | None) -> int | str | None:
    """A count the metadata records (dti.adapter_rank), as a number when it is one."""
    return int(text) if text is not None and text.isdecimal() else text


def inspect_adapter(folder: str | Path) -> dict:
    """What `dti inspect` says of an adapter folder (dti.adapters.describe_adapter), as a JSON-ready dict;
    weights it cannot read as an adapter's are an error naming the file, in one line."""
    from dti.adapters import describe_adapter

    folder = Path(folder)
    weights = adapter_weights(folder)
    try:
        info = describe_adapter(folder)
    except (KeyError, IndexError, ValueError, RuntimeError) as err:  # a tensor missing, or of another shape
        why = f"no tensor {err}" if isinstance(err, KeyError) else _one_line(err)
        raise DtiError(f"{weights}: not an adapter as dti.adapters writes it ({visible(why, LIMIT)})") from err
    targets = info["targets"]
    return {"folder": str(folder), "weights_file": weights.name, "kind": info["kind"], "rank": _count(info["rank"]),
            "targets": targets.split(",") if targets else None, "layers": info["layers"],
            "parameters": info["parameters"], "update_norm": info["update_norm"], "metadata": info["metadata"],
            "metadata_problems": provenance_problems(weights, info["metadata"]),
            "loads_with": ADAPTER_LOADERS[info["kind"]]}


def format_adapter(info: dict) -> str:
    """The human-readable form of `inspect_adapter`'s result; text from the file through dti.terminal.visible."""
    from dti.adapters import adapter_kind

    kind = info["kind"]
    rank = "not recorded" if info["rank"] is None else visible(info["rank"], LIMIT)
    targets = ", ".join(visible(t, LIMIT) for t in info["targets"]) if info["targets"] else "not recorded"
    norm = info["update_norm"]
    update = f"not measured ({_UPDATES[kind]})" if norm is None else f"{norm:.6g} ({_UPDATES[kind]}, layers in quadrature)"
    lines = [info["folder"], f"  adapter: {_ADAPTER_NAMES[kind]} ({info['weights_file']})"
             + (f", rank {rank}" if adapter_kind(kind).ranked else ""),
             f"  targets: {targets}; {info['layers']} adapted layers, {info['parameters']} trainable parameters",
             f"  update norm: {update}",
             *_provenance_lines(info), f"  loads with: {info['loads_with']}"]
    return "\n".join(visible(line) for line in lines)


def _described(path: Path) -> tuple[list[Path], Path | None]:
    """(the token files, the adapter folder) `dti inspect PATH` describes: a file is a token file; a folder is
    an adapter's, or a run's: its final token files (learned_embeds, learned_embeds_2, ...) and adapter/."""
    if not path.is_dir():
        return [path], None
    if adapter_weights(path) is not None:
        return [], path
    if not (path / "learned_embeds.safetensors").is_file():
        from dti.adapters import KINDS

        files = " or ".join(kind.weights_file for kind in KINDS.values())
        raise DtiError(f"{path}: neither a run folder (no learned_embeds.safetensors) nor an adapter folder (no "
                       f"{files})")
    files = sorted((p for p in path.glob("learned_embeds*.safetensors")
                    if "-steps-" not in p.name and file_position(p) is not None), key=file_position)
    return files, (path / "adapter" if (path / "adapter").is_dir() else None)


def run_inspect(path: str, *, model: str | None = None, revision: str | None = None, as_json: bool = False,
                top: int = 5) -> str:
    """The CLI's work on a token file, an adapter folder or a run folder: read the files first (a bad file
    fails before any model is fetched), then the model's family (a file trained for another is refused
    before any table is read), then its vocabularies."""
    files, adapter_folder = _described(Path(path))
    embeddings = [read_embedding_file(file) for file in files]
    adapter = inspect_adapter(adapter_folder) if adapter_folder else None
    vocabularies, family = None, None
    if model:
        from dti.vocab import load_vocabularies, model_family, resolve_model_dir

        folder = resolve_model_dir(model, revision)
        family = model_family(folder)
        for emb in embeddings:
            check_trained_family(emb.path, emb.metadata, family)
        if adapter:
            check_trained_family(Path(adapter["folder"]) / adapter["weights_file"], adapter["metadata"], family)
        vocabularies = load_vocabularies(folder) if embeddings else None
    reports = [inspect_file(file, vocabularies, model=model, family=family, top=top) for file in files]
    if not Path(path).is_dir():
        (info,) = reports
        return json.dumps(info, indent=2) if as_json else format_report(info)
    if as_json:  # a run folder's files and adapter, or an adapter folder's description
        return json.dumps({"folder": path, "files": reports, "adapter": adapter} if reports else adapter, indent=2)
    return "\n".join([*map(format_report, reports), *([format_adapter(adapter)] if adapter else [])])
