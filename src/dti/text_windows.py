"""Prompts a text encoder would cut, found while planning where the backbone's tokenizer is on this machine.

A tokenizer cuts a prompt at its encoder's window (CLIP: 77 tokens with its start and end tokens) with a
mere warning, so a prompt set line longer than that, or an initializer whose k tokens push a training
template past it, would run to the end with the prompt's end (the learned token perhaps) missing. Training
(dti.train) and sampling (dti.sample.check_text_windows) refuse such prompts before any work; here the
workflow finds them before any job, counting with the backbone's real tokenizer:
- every training template with each subject's k placeholder tokens for each trained method (plus the
  most zero-pad tokens a prompt gets, dti.prompts.ZERO_PAD_MAX, where zero_pad is on for it);
- every prompt of the config's prompt set files (its `prompt_limit` first) with the subject's k tokens.

Only where the tokenizer is on this machine without a download: a `tiny` backbone once the tiny_model
rule has built it (resources/models/tiny/<family>/), a local model folder, a hub model in the Hugging Face
cache. Only families with CLIP text encoders (the registry's `textual_inversion_clients`), whose window is
their tokenizer's `model_max_length`: SANA's and Wan's windows (300 and 512 tokens) are set by their
backbone classes, which import torch, and their prompts are checked in the jobs. The authors' prompt sets,
interpolation and analysis prompts are checked in the jobs too.

Loading a tokenizer imports transformers (seconds), so a successful check leaves a marker named by the
hash of everything it read (tokenizer files, initializers, templates, settings) in .snakemake/, and
planning the same config again skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dti.errors import DtiError
from dti.families import FAMILIES
from dti.model_files import model_folder
from dti.prompts import TRAINING_TEMPLATES, ZERO_PAD_MAX, load_prompt_set, prompt_set_path, render
from dti.token_names import normalize_placeholder, placeholder_tokens, short_text

CACHE_DIR = Path(".snakemake") / "dti-text-windows"
TINY_MODELS = Path("resources") / "models" / "tiny"  # where the tiny_model rule builds a family's model
_CHECK_VERSION = 1  # part of the marker's name: a change to what is checked invalidates old markers


def tokenizer_dirs(spec: dict) -> dict[str, Path] | None:
    """{text encoder: its tokenizer's folder} of the backbone, where they are on this machine and the window
    is the tokenizer's own (module docstring); None otherwise."""
    family = FAMILIES.get(spec.get("family"))
    if family is None or not family.textual_inversion_clients:
        return None
    folder = TINY_MODELS / family.name if spec["model"] == "tiny" else model_folder(spec["model"], spec.get("revision"))
    if folder is None:
        return None
    dirs = {slot.name: Path(folder) / slot.tokenizer for slot in family.slots}
    return dirs if all(d.is_dir() for d in dirs.values()) else None


def prompt_set_files(prompt_sets, kinds, prompts_dir: str | os.PathLike, limit: int | None = None,
                     skip=lambda name: False) -> dict[str, dict[str, list[str]]]:
    """{prompt file: {kind: its templates (the first `limit`)}} of the config's prompt sets for the subject
    `kinds`, leaving out the sets `skip` names (the authors', resolved in the jobs)."""
    files: dict[str, dict[str, list[str]]] = {}
    for name in prompt_sets:
        if skip(name):
            continue
        for kind in sorted(set(kinds)):
            templates = load_prompt_set(name, kind, prompts_dir)
            path = str(prompt_set_path(name, kind, prompts_dir))
            files.setdefault(path, {})[kind] = templates[:limit] if limit else templates
    return files


def _files(folder: Path) -> list:
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in folder.iterdir() if p.is_file())


def check_text_windows(backbones: dict, subjects: dict, initializers: dict, train_settings: dict,
                       prompt_sets: dict, placeholder: str, cache_dir: str | os.PathLike = CACHE_DIR) -> None:
    """Check what the module docstring says; a one-line DtiError naming the backbone, subject, method or
    prompt file, the count and the window.

    `backbones`: {name: spec} of the backbones planned; `subjects`: {name: row}; `initializers`: {backbone:
    {trained method: {subject: words}}}; `train_settings`: {backbone: {trained method: train settings}};
    `prompt_sets`: {label: {kind: templates}} of the prompt set files; `placeholder`: training.placeholder.
    """
    local = {b: dirs for b, spec in backbones.items() if (dirs := tokenizer_dirs(spec)) is not None}
    if not local:
        return
    record = {"version": _CHECK_VERSION, "templates": TRAINING_TEMPLATES, "zero_pad_max": ZERO_PAD_MAX,
              "placeholder": placeholder, "prompt_sets": prompt_sets,
              "kinds": {s: row["kind"] for s, row in subjects.items()},
              "backbones": {b: {"tokenizers": {s: [str(d), _files(d)] for s, d in dirs.items()}, "initializers": initializers[b],
                                "zero_pad": {m: bool(t.get("zero_pad")) for m, t in train_settings[b].items()}}
                            for b, dirs in local.items()}}
    marker = Path(cache_dir) / hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    if marker.is_file():
        return
    for backbone, dirs in local.items():
        for encoder, folder in dirs.items():
            _check_backbone(backbone, encoder, folder, subjects, initializers[backbone], train_settings[backbone],
                            prompt_sets, placeholder)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only working folder: the check runs again next time
        pass


def _check_backbone(backbone: str, encoder: str, folder: Path, subjects: dict, initializers: dict, train_settings: dict,
                    prompt_sets: dict, placeholder: str) -> None:
    from transformers import AutoTokenizer

    from dti.token_names import token_count

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # noqa: BLE001  (an unreadable tokenizer is reported by the job that loads it)
        return
    limit = tokenizer.model_max_length
    for subject, row in subjects.items():
        token = normalize_placeholder(placeholder.replace("{subject}", subject))
        k = {m: len(tokenizer.encode(words[subject], add_special_tokens=False)) for m, words in initializers.items()}
        tokenizer.add_tokens(placeholder_tokens(token, max(k.values())))
        for method, n_tokens in k.items():
            written = " ".join(placeholder_tokens(token, n_tokens))
            pad = ZERO_PAD_MAX if train_settings[method].get("zero_pad") else 0
            counts = {t: token_count(tokenizer, render(t, written)) + pad for t in TRAINING_TEMPLATES}
            longest = max(counts, key=counts.get)
            if counts[longest] > limit:
                padded = f" and {pad} zero-pad tokens" if pad else ""
                raise DtiError(f"backbones.{backbone}: subject {subject}'s initializer "
                               f"{short_text(initializers[method][subject])} is {n_tokens} tokens ({method}); the "
                               f"training prompt {longest!r} with them{padded} is {counts[longest]} tokens, more "
                               f"than the {limit} the {encoder} text encoder reads (start and end tokens "
                               "included); choose a shorter initializer")
        method = max(k, key=k.get)
        written = " ".join(placeholder_tokens(token, k[method]))
        for label, by_kind in prompt_sets.items():
            for template in by_kind.get(row["kind"], []):
                n = token_count(tokenizer, render(template, written))
                if n > limit:
                    raise DtiError(f"prompt_sets: {label}: the prompt {short_text(template)} with subject "
                                   f"{subject}'s placeholder as its {k[method]} token(s) ({method} on {backbone}) "
                                   f"is {n} tokens, more than the {limit} the {encoder} text encoder reads (start "
                                   "and end tokens included); shorten it")
