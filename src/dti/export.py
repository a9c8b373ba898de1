"""Learned-token files: the formats diffusers, AUTOMATIC1111 and ComfyUI load, and dti's own for the
families diffusers' loader does not know (docs/method.md, "Files"; docs/backbones.md).

- `learned_embeds.safetensors` = {placeholder: float32[k, d]} for the backbone's first text encoder,
  `learned_embeds_2.safetensors` for its second (SDXL), metadata {"format": "pt"} and provenance. For SD
  and SDXL, `pipe.load_textual_inversion` loads them and expands a k-row tensor into the tokens <p>,
  <p>_1, ...; for SANA and Wan, whose pipelines have no such loader, the same layout is read by
  `dti.sample.install_learned_token`.
- AUTOMATIC1111 / ComfyUI: one `{name}.safetensors`; SDXL {"clip_l": [k, 768], "clip_g": [k, 1280]},
  one-encoder models {"emb_params": [k, d]}.
Provenance (method, base model and family, m, kappa, steps, code version) goes into every file's metadata.
Its numbers are read back with the checks their flags have (dti.numbers.provenance_problems): a file claiming
kappa NaN, m 1e39 or -3 steps is damaged or forged; `load_diffusers` refuses it, `dti inspect` says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from dti.errors import DtiError
from dti.inspect import check_trained_family
from dti.numbers import provenance_problems
from dti.sphere import normalize
from dti.tensor_files import write_safetensors


def diffusers_file(position: int, step: int | None = None) -> str:
    """The file of the backbone's `position`-th text encoder (0: learned_embeds, 1: learned_embeds_2, ...)."""
    name = "learned_embeds" if position == 0 else f"learned_embeds_{position + 1}"
    return f"{name}.safetensors" if step is None else f"{name}-steps-{step}.safetensors"


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    write_safetensors(path, tensors, metadata, as_float=True)  # atomically, never through a link (dti.io)


def save_diffusers(out_dir: Path, placeholder: str, vectors: dict[str, torch.Tensor], metadata: dict,
                   step: int | None = None) -> list[Path]:
    """One diffusers file per text encoder slot, `vectors` in the backbone's slot order; returns the paths."""
    paths = []
    for position, (slot, rows) in enumerate(vectors.items()):
        path = Path(out_dir) / diffusers_file(position, step)
        _save(path, {placeholder: rows}, {**metadata, "dti.slot": slot})
        paths.append(path)
    return paths


def how_to_use(out_dir: str | Path, placeholder: str, name: str, family: str = "sd") -> str:
    """What to write in each client to use a trained token, one line per client (the README says more);
    `name`: the single file's name without .safetensors. Families whose text encoders the clients do not
    know (dti.families) load only with dti's own loader."""
    from dti.families import check_family

    if not check_family(family).textual_inversion_clients:
        return (f"dti sample --embeds {out_dir}, or dti.sample.install_learned_token(pipe, {str(out_dir)!r}) "
                f"into a {check_family(family).pipeline}; write the text it returns in prompts (diffusers' "
                "load_textual_inversion, AUTOMATIC1111 and ComfyUI load CLIP text-encoder tokens only)")
    single = Path(out_dir) / f"{name}.safetensors"
    return "\n".join([
        f"diffusers: load_textual_inversion of {Path(out_dir) / 'learned_embeds.safetensors'} (SDXL: and of "
        f"learned_embeds_2.safetensors), then write {placeholder} in prompts",
        f"AUTOMATIC1111, Forge, SD.Next: copy only {single} into the embeddings folder, then write {name}",
        f"ComfyUI: copy {single} into models/embeddings, then write embedding:{name}",
        f"InvokeAI: install {single} by its path in the Model Manager, then insert it with the embedding picker",
    ])


def save_single_file(path: Path, vectors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """The one-file format of AUTOMATIC1111 and ComfyUI."""
    tensors = dict(vectors) if len(vectors) > 1 else {"emb_params": next(iter(vectors.values()))}
    _save(Path(path), tensors, metadata)
    return Path(path)


def load_diffusers(out_dir: Path, slots: list[str], step: int | None = None, *, family: str | None = None,
                   widths: dict[str, int] | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """Read back (placeholder, {slot: rows}) from the files of `slots` (the backbone's, in order), each
    checked to be finite float rows.

    With `family` and `widths` ({slot: embedding width}), a file made for another model is refused: widths
    alone cannot tell, since SD 1.x and SDXL's first encoder are both 768 wide, so the family recorded in the
    file's metadata is compared too (files from other tools carry none and are checked by width only).
    """
    vectors, names = {}, set()
    for position, slot in enumerate(slots):
        path = Path(out_dir) / diffusers_file(position, step)
        if not path.is_file():
            raise DtiError(f"learned embedding file missing: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys, meta = list(f.keys()), f.metadata() or {}
                if len(keys) != 1:
                    raise DtiError(f"{path} should hold one placeholder tensor, found keys {keys}")
                if not keys[0] or any(c.isspace() for c in keys[0]):
                    raise DtiError(f"{path}: placeholder {keys[0]!r} must be one word without spaces")
                rows = f.get_tensor(keys[0])
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise DtiError(f"cannot read learned embedding file {path}: {err}") from err
        check_provenance(path, meta)
        check_trained_family(path, meta, family)  # the refusal `dti inspect --model` gives too
        vectors[slot] = _checked_rows(path, rows, widths.get(slot) if widths else None)
        names.add(keys[0])
    if len(names) != 1:
        raise DtiError(f"learned embedding files in {out_dir} disagree on the placeholder: {sorted(names)}")
    return names.pop(), vectors


def load_for_backbone(backbone, out_dir: Path, step: int | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """load_diffusers for a dti.backbones Backbone: its slots in order, each file checked against the backbone's
    family and its encoder's embedding width."""
    widths = {s.name: s.encoder.get_input_embeddings().embedding_dim for s in backbone.slots}
    return load_diffusers(out_dir, [s.name for s in backbone.slots], step, family=backbone.family, widths=widths)


def _checked_rows(path: Path, rows: torch.Tensor, width: int | None) -> torch.Tensor:
    if not rows.is_floating_point() or rows.dim() not in (1, 2) or rows.numel() == 0:
        raise DtiError(f"{path}: expected float rows [k, width], got {rows.dtype} of shape {tuple(rows.shape)}")
    if width is not None and rows.shape[-1] != width:
        raise DtiError(f"{path}: rows are {rows.shape[-1]} wide; this model's text encoder takes {width}")
    if not bool(torch.isfinite(rows).all()):
        raise DtiError(f"{path}: the learned rows hold non-finite values (NaN or inf)")
    return rows


def check_provenance(path: Path | str, metadata: dict[str, str]) -> None:
    """A DtiError naming the file, the key and the value for the first of `provenance_problems`."""
    problems = provenance_problems(path, metadata)
    if problems:
        raise DtiError(next(iter(problems.values())))


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def rescale(vectors: dict[str, torch.Tensor], magnitudes: dict[str, float]) -> dict[str, torch.Tensor]:
    """TI-rescaled: keep each row's direction, set its norm to the slot's vocabulary magnitude m."""
    return {slot: magnitudes[slot] * normalize(rows.float()) for slot, rows in vectors.items()}


def load_into_pipeline(pipe, placeholder: str, vectors: dict[str, torch.Tensor], slots) -> None:
    """Load learned rows with diffusers' own `load_textual_inversion` (the path users take), each slot's
    rows into the text encoder and tokenizer components the slot names."""
    for slot in slots:
        encoder = getattr(pipe, slot.component)
        pipe.load_textual_inversion({placeholder: vectors[slot.name].to(encoder.dtype)}, token=placeholder,
                                    text_encoder=encoder, tokenizer=getattr(pipe, slot.tokenizer_component))
