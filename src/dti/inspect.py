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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dti.errors import DtiError
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


def _read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    def read(framework: str):
        with safe_open(str(path), framework=framework) as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            return tensors, dict(handle.metadata() or {})

    try:
        try:
            tensors, metadata = read("numpy")
        except TypeError:  # bfloat16 has no numpy dtype: read it through torch
            tensors, metadata = read("pt")
            tensors = {k: v.float().numpy() for k, v in tensors.items()}
    except Exception as err:  # a truncated file or a bad header: say which file and why, in one line
        raise DtiError(f"{path}: not a readable safetensors file ({_one_line(err)})") from err
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata


def _rows(path: Path, key: str, tensor: np.ndarray) -> np.ndarray:
    if tensor.ndim == 1:
        return tensor[None, :]
    if tensor.ndim != 2 or tensor.shape[0] < 1:
        raise DtiError(f"{path}: tensor {key!r} has shape {list(tensor.shape)}; expected [vectors, width]")
    return tensor


def _single_slot(key: str, width: int, metadata: dict[str, str]) -> str:
    if metadata.get("dti.slot"):
        return metadata["dti.slot"]
    if key in ("clip_l", "clip_g"):
        return key
    return _SLOT_BY_WIDTH.get(width, "text_encoder")


def read_embedding_file(path: str | Path) -> EmbeddingFile:
    """Read one textual-inversion safetensors file; DtiError (naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DtiError(f"{path}: no such file")
    _refuse_pickle(path)
    tensors, metadata = _read_tensors(path)
    keys = sorted(tensors)
    if {"clip_l", "clip_g"} <= set(keys):
        if len(keys) > 2:
            raise DtiError(f"{path}: SDXL layout with extra tensors {[k for k in keys if k not in ('clip_l', 'clip_g')]}")
        vectors = {slot: _rows(path, slot, tensors[slot]) for slot in ("clip_l", "clip_g")}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise DtiError(f"{path}: clip_l has {vectors['clip_l'].shape[0]} vectors but clip_g has "
                           f"{vectors['clip_g'].shape[0]}")
        return EmbeddingFile(path, "sdxl", None, vectors, metadata)
    if len(keys) != 1:
        shown = keys[:5] + (["..."] if len(keys) > 5 else [])
        raise DtiError(f"{path}: {len(keys)} tensors {shown}; a textual-inversion file holds one tensor, or "
                       "clip_l and clip_g (SDXL)")
    (key,) = keys
    rows = _rows(path, key, tensors[key])
    if key == "emb_params":
        layout, token = "emb_params", None
    elif key.startswith("string_to_param."):
        layout, token = "string_to_param", None
    else:
        layout, token = "diffusers", key
    return EmbeddingFile(path, layout, token, {_single_slot(key, rows.shape[1], metadata): rows}, metadata)


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
    return {"file": str(emb.path), "layout": emb.layout, "token": emb.token, "model": model, "family": family,
            "metadata": emb.metadata, "encoders": encoders, "clients": client_table(emb, targets, family)}


def format_report(info: dict) -> str:
    """The human-readable form of `inspect_file`'s result."""
    lines = [f"{info['file']}", f"  layout: {info['layout']}" + (f", token {info['token']!r}" if info["token"] else "")]
    meta = {k.removeprefix("dti."): v for k, v in info["metadata"].items() if k.startswith("dti.")}
    if meta:
        shown = ", ".join(f"{k}={meta[k]}" for k in ("method", "base_model", "steps", "kappa") if k in meta)
        lines.append(f"  trained by dti: {shown}")
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
                near = ", ".join(f"{n['token']} {n['cosine']:.2f}" for n in row["nearest"])
                text += (f" = {row['ratio_to_vocab_mean']:.2f} x vocabulary mean; nearest: {near}; "
                         f"angle to nearest {row['angle_to_nearest_deg']:.1f} deg")
            lines.append(text)
    lines.append("  loads in:")
    for model in dict.fromkeys(c["model"] for c in info["clients"]):
        parts = [f"{c['client']} {c['loads']} ({c['note']})" for c in info["clients"] if c["model"] == model]
        lines.append(f"    {model}: " + "; ".join(parts))
    return "\n".join(lines)


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
