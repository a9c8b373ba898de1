"""The workflow's planning checks and selections beyond dti.benchmark_config's, over the views it and the
analyses' parsers give: the prompt sets each subject samples with, the DTI authors' prompt file, the headline
tables' prompt set, the interpolation pairs on each backbone, which mechanism measurements apply to which
backbone (the family table, dti.families), and the subjects the attention maps show.

rules/common.smk, common_analyses.smk and common_mechanism.smk call these while planning, before any job
starts, and turn a DtiError into a one-line "config error: ..." naming the key. Torch-free, so planning
stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from dti.benchmark_config import prompt_set_key, trained_methods
from dti.dti_prompts import is_dti_prompt_set, read_prompts_file
from dti.errors import DtiError
from dti.families import FAMILIES
from dti.prompts import DEFAULT_PROMPTS_DIR, load_prompt_set

if TYPE_CHECKING:
    from dti.analysis.interpolation import Pair


# --- prompt sets ----------------------------------------------------------------------------------------
def uses_dti_prompts(prompt_sets: Iterable[str]) -> bool:
    """Whether any of `prompt_sets` is one of the DTI authors' sets (read from their pinned prompts.py)."""
    return any(is_dti_prompt_set(s) for s in prompt_sets)


def check_dti_prompts(prompt_sets: Iterable[str], path: str | os.PathLike | None) -> None:
    """The local copy of the authors' prompts.py (`data.dti_prompts`, `path`) verifies against its pinned
    sha256 and parses, where some prompt set is one of theirs. With no local copy (`path` None) the
    fetch_dti_prompts job downloads and checks it instead."""
    if not path or not uses_dti_prompts(prompt_sets):
        return
    try:
        read_prompts_file(path)
    except DtiError as err:
        raise DtiError(f"data.dti_prompts: {err}") from err


def check_prompt_sets(subjects: Mapping[str, dict], prompt_sets: Sequence[str], images_dir: str | None,
                      prompts_dir: str | os.PathLike = DEFAULT_PROMPTS_DIR) -> None:
    """Every prompt set (but the authors', checked by `check_dti_prompts`) reads for every subject's kind,
    and a subject whose photos come from a folder (`source: folder`) has `data.images_dir` (`images_dir`)
    to find them in: at planning time, naming the file, rather than on a GPU node.

    `subjects`: the subject table {name: row} (dti.benchmark_config.check_config), in its order.
    """
    for name, spec in subjects.items():
        for entry in prompt_sets:
            if is_dti_prompt_set(entry):
                continue
            try:
                load_prompt_set(entry, spec["kind"], prompts_dir)
            except DtiError as err:
                raise DtiError(f"prompt_sets: {err}") from err
        if spec["source"] == "folder" and not images_dir:
            raise DtiError(f"subject {name} has source 'folder' but data.images_dir is not set")


def summary_prompt_set(prompt_sets: Sequence[str], wanted: str | None) -> str:
    """The prompt set of the headline tables: `aggregate.summary_prompt_set` (`wanted`), which must be one of
    the prompt sets' labels (dti.benchmark_config.prompt_set_key), or else the first prompt set's label."""
    labels = [prompt_set_key(s) for s in prompt_sets]
    if wanted is not None and wanted not in labels:
        raise DtiError(f"aggregate.summary_prompt_set: {wanted!r} is not one of prompt_sets {labels}")
    return wanted or labels[0]


# --- interpolation --------------------------------------------------------------------------------------
def methods_trained_on(methods: Iterable[str], backbone_methods: Mapping[str, dict]) -> list[str]:
    """Those of `methods` (in their order) that train on a backbone running `backbone_methods`, its
    {method: hyper-parameters} (dti.benchmark_config.backbone_methods; its only_methods may leave some
    out)."""
    trained = trained_methods(backbone_methods)
    return [m for m in methods if m in trained]


def check_interpolation_pairs(pairs: Iterable[Pair], backbones: Iterable[str],
                              backbone_methods: Mapping[str, Mapping[str, dict]]) -> None:
    """Every pair interpolates some method on each backbone it is planned on: one of its methods trains
    there (`methods_trained_on`).

    `pairs`: the interpolation pairs (dti.analysis.interpolation.parse_interpolation); `backbones`: those the
    interpolation runs on; `backbone_methods`: {backbone: {method: hyper-parameters}}.
    """
    pairs = list(pairs)
    for backbone in backbones:
        for pair in pairs:
            if not methods_trained_on(pair.methods, backbone_methods[backbone]):
                raise DtiError(f"interpolation: none of pair {pair.name}'s methods "
                               f"({', '.join(pair.methods)}) trains on backbone {backbone} "
                               f"(backbones.{backbone}.only_methods)")


# --- mechanism ------------------------------------------------------------------------------------------
def mechanism_backbones(backbones: Mapping[str, dict], measured: Sequence[str]) -> dict[str, list[str]]:
    """{measurement: the backbones it applies to}, each a list in the order of `measured` (the backbones the
    mechanism analyses run on), as the family table (dti.families) says:

    - "probe": a text encoder adds a learned position row (CLIP): the positional probe and attenuation;
    - "decoding": a text encoder is a language model (SANA's Gemma-2): its tokens decode back to text;
    - "attention": the denoiser's cross-attention reads the tokenizer's positions (SD, SDXL).

    The other measurements (residual updates, contextualization, semantic directions) apply to every one.

    `backbones`: {name: spec}, each spec with a registered `family` (checked by
    dti.benchmark_config.check_config).
    """
    families = {b: FAMILIES[backbones[b]["family"]] for b in measured}
    return {
        "probe": [b for b in measured if any(s.positions == "absolute" for s in families[b].slots)],
        "decoding": [b for b in measured if any(s.language_model for s in families[b].slots)],
        "attention": [b for b in measured if families[b].token_attention_maps],
    }


def attention_subjects(mechanism: Mapping | None, subjects: Iterable[str]) -> list[str]:
    """The subjects whose tokens the attention maps show: `analysis.mechanism.attention.subjects`, each a
    known subject, or else the first two subjects.

    `mechanism`: the checked `analysis.mechanism` settings (dti.analysis.mechanism.check_mechanism), or None
    when the mechanism analyses are off; `subjects`: the subject names in the table's order.
    """
    subjects = list(subjects)
    chosen = mechanism["attention"]["subjects"] if mechanism else None
    if chosen is None:
        return subjects[:2]
    for i, name in enumerate(chosen):
        if name not in subjects:
            raise DtiError(f"analysis.mechanism.attention.subjects[{i}]: unknown subject {name!r}")
    return list(chosen)
