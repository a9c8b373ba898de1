"""Prompt templates: the training templates and the evaluation prompt sets.

A template is a string with exactly one `{}` where the subject goes. It is filled by plain substitution
(`render`), never `str.format`, so braces in a placeholder token cannot break it. Generation uses the
learned placeholder alone ("a <s> in the snow"); CLIP-T scores the image against the same template with
the subject's class noun ("a dog in the snow"), see `eval_prompt`.

The prompt sets a name stands for ship with the library: src/dti/data/prompts/ (dti.data). Format: UTF-8 text (a byte-order mark at its start is
skipped, as editors on Windows write one; at most 10 MB), one template per line, blank lines and
lines starting with `#` ignored; every template has exactly one `{}` and no other braces; no duplicates.
The prompt id of a template is its 0-based position among the templates of the file.

Which file a set `NAME` uses for a subject of kind `KIND` ("object" or "live"):
  - `NAME.KIND.txt` if it exists (DreamBooth has different prompt lists for objects and live subjects);
  - otherwise `NAME.txt`, which applies to both kinds;
  - having both `NAME.KIND.txt` and `NAME.txt` is an error, since it is unclear which one is meant.
An explicit path to a `.txt` file is used as is, for any kind.
"""

from __future__ import annotations

import os
from pathlib import Path

from dti.data import DATA_DIR
from dti.errors import DtiError
from dti.terms import check_kind
from dti.yaml_safety import read_bounded

PLACEHOLDER = "{}"
DEFAULT_PROMPTS_DIR = DATA_DIR / "prompts"

# The 27 "imagenet_templates_small" training captions of the original Textual Inversion work; DTI, TI and
# CrossInit all train with them, the placeholder alone filling the slot (no class word).
TRAINING_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)


# The most all-zero padding tokens zero-pad training puts before a training prompt (dti.train.zero_pad_count).
ZERO_PAD_MAX = 15


def check_template(template: str, where: str = "template") -> str:
    """Return `template` if it has exactly one `{}` and no other brace; else DtiError naming `where`."""
    if template.count(PLACEHOLDER) != 1:
        raise DtiError(f"{where}: a template needs exactly one '{{}}', got {template!r}")
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise DtiError(f"{where}: stray brace in template {template!r} (only one '{{}}' is allowed)")
    return template


def analysis_prompts_and_seeds(config: dict, key: str) -> tuple[list[str], list[int]]:
    """An analysis section's `prompts` (templates, default "a photo of a {}") and `seeds` (default 0),
    checked; errors name `key`.prompts[i] or `key`.seeds."""
    prompts = list(config.get("prompts", ("a photo of a {}",)))
    if not prompts:
        raise DtiError(f"{key}.prompts: the list is empty; give at least one template with {{}}")
    for i, prompt in enumerate(prompts):
        check_template(prompt, f"{key}.prompts[{i}]")
    seeds = [int(s) for s in config.get("seeds", (0,))]
    if not seeds:
        raise DtiError(f"{key}.seeds: the list is empty")
    return prompts, seeds


def render(template: str, placeholder_text: str) -> str:
    """Put `placeholder_text` (e.g. the learned token) into the template's slot."""
    return check_template(template).replace(PLACEHOLDER, placeholder_text)


def eval_prompt(template: str, class_noun: str) -> str:
    """The prompt CLIP-T scores an image against: the template with the subject's class noun."""
    if not class_noun.strip():
        raise DtiError(f"class noun must be non-empty for template {template!r}")
    return render(template, class_noun)


def prompt_set_path(path_or_name: str | os.PathLike, kind: str,
                    prompts_dir: str | os.PathLike = DEFAULT_PROMPTS_DIR) -> Path:
    """Resolve a prompt set name (or an explicit .txt path) to its file for subjects of `kind`."""
    check_kind(kind)
    given = Path(path_or_name)
    if given.suffix == ".txt" or len(given.parts) > 1:
        if not given.is_file():
            raise DtiError(f"prompt file not found: {given}")
        return given
    prompts_dir = Path(prompts_dir)
    per_kind = prompts_dir / f"{given.name}.{kind}.txt"
    shared = prompts_dir / f"{given.name}.txt"
    if per_kind.is_file() and shared.is_file():
        raise DtiError(f"prompt set {given.name!r} is ambiguous: both {per_kind} and {shared} exist")
    if per_kind.is_file():
        return per_kind
    if shared.is_file():
        return shared
    raise DtiError(f"prompt set {given.name!r} for kind {kind!r} not found: neither {per_kind} nor {shared}")


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Templates of one prompt file, in order, validated (see the module docstring for the format)."""
    path = Path(path)
    try:
        lines = read_bounded(path, "prompt file").decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DtiError(f"cannot read prompt file {path}: {err}") from err
    templates: list[str] = []
    first_seen: dict[str, int] = {}
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{line_no}"
        check_template(line, where)
        if line in first_seen:
            raise DtiError(f"{where}: duplicate of line {first_seen[line]}: {line!r}")
        first_seen[line] = line_no
        templates.append(line)
    if not templates:
        raise DtiError(f"prompt file {path} holds no templates")
    return templates


def load_prompt_set(path_or_name: str | os.PathLike, kind: str,
                    prompts_dir: str | os.PathLike = DEFAULT_PROMPTS_DIR) -> list[str]:
    """The templates of a prompt set for subjects of `kind`; list index = prompt id."""
    return read_prompt_file(prompt_set_path(path_or_name, kind, prompts_dir))
