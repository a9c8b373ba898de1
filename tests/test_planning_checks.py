"""The workflow's planning checks, as library functions (dti.planning): what rules/common.smk,
common_analyses.smk and common_mechanism.smk plan with for a good config, and the exact message each bad
one gives (the workflow prints it as "config error: <message>"). These only plan: no model, no torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dti.analysis.interpolation import Pair
from dti.dti_prompts import SHA256, SOURCE, sha256_bytes
from dti.errors import DtiError
from dti.planning import (
    attention_subjects,
    check_dti_prompts,
    check_interpolation_pairs,
    check_prompt_sets,
    mechanism_backbones,
    methods_trained_on,
    summary_prompt_set,
    uses_dti_prompts,
)
from dti.prompts import DEFAULT_PROMPTS_DIR

REPO = Path(__file__).resolve().parents[1]
# The DTI authors' prompts.py, where a copy is on this machine.
_COPIES = [root / "third_party/kunheek-dti/prompts.py"
           for root in (REPO.parent / "shared", Path("/work/shared"))]
AUTHORS_PROMPTS = next((p for p in _COPIES if p.is_file()), None)


def _subject(kind: str = "object", source: str = "synthetic") -> dict:
    return {"kind": kind, "source": source, "class": "thing", "initializer": "thing"}


SUBJECTS = {"striped_box": _subject(), "spotted_pup": _subject("live"), "red_cup": _subject()}


def _raises(message: str):
    """The call raises DtiError with exactly `message`."""
    return pytest.raises(DtiError, match=f"^{re.escape(message)}$")


# --- prompt sets ----------------------------------------------------------------------------------------
def test_the_shipped_prompt_sets_read_for_every_kind_and_a_folder_subject_with_images_dir_passes():
    subjects = {**SUBJECTS, "my_dog": _subject("live", "folder")}
    assert check_prompt_sets(subjects, ["complex", "dreambooth"], "photos", DEFAULT_PROMPTS_DIR) is None
    # the authors' sets are not read here (check_dti_prompts, or the fetch_dti_prompts job, does)
    assert check_prompt_sets(subjects, ["dti_simple", "complex"], "photos") is None


def test_a_prompt_set_that_does_not_read_names_prompt_sets_and_the_file(tmp_path):
    with _raises(f"prompt_sets: prompt set 'nope' for kind 'object' not found: neither "
                 f"{tmp_path / 'nope.object.txt'} nor {tmp_path / 'nope.txt'}"):
        check_prompt_sets(SUBJECTS, ["nope"], None, tmp_path)
    missing = tmp_path / "gone.txt"
    with _raises(f"prompt_sets: prompt file not found: {missing}"):
        check_prompt_sets(SUBJECTS, ["complex", str(missing)], None)
    broken = tmp_path / "broken.txt"
    broken.write_text("a photo of {}\na photo of {}\n")
    with _raises(f"prompt_sets: {broken}:2: duplicate of line 1: 'a photo of {{}}'"):
        check_prompt_sets(SUBJECTS, [str(broken)], None)


def test_each_subject_reads_the_set_of_its_own_kind(tmp_path):
    """A set with an object list only passes for objects and names the first live subject's kind."""
    (tmp_path / "objects.object.txt").write_text("a {} on a table\n")
    assert check_prompt_sets({"striped_box": _subject()}, ["objects"], None, tmp_path) is None
    with _raises(f"prompt_sets: prompt set 'objects' for kind 'live' not found: neither "
                 f"{tmp_path / 'objects.live.txt'} nor {tmp_path / 'objects.txt'}"):
        check_prompt_sets(SUBJECTS, ["objects"], None, tmp_path)


def test_a_folder_subject_without_images_dir_is_refused_by_name():
    subjects = {**SUBJECTS, "my_dog": _subject("live", "folder"), "my_cat": _subject("live", "folder")}
    for images_dir in (None, ""):
        with _raises("subject my_dog has source 'folder' but data.images_dir is not set"):
            check_prompt_sets(subjects, ["complex"], images_dir)


def test_subjects_are_checked_in_order_each_one_s_prompt_sets_before_its_folder(tmp_path):
    """The workflow's order: the first subject's sets, then whether it has a folder, then the next one's."""
    (tmp_path / "objects.object.txt").write_text("a {} on a table\n")
    subjects = {"my_box": _subject("object", "folder"), "spotted_pup": _subject("live")}
    with _raises("subject my_box has source 'folder' but data.images_dir is not set"):
        check_prompt_sets(subjects, ["objects"], None, tmp_path)
    subjects = {"spotted_pup": _subject("live"), "my_box": _subject("object", "folder")}
    with pytest.raises(DtiError, match=r"^prompt_sets: prompt set 'objects' for kind 'live'"):
        check_prompt_sets(subjects, ["objects"], None, tmp_path)


def test_uses_dti_prompts_is_whether_some_set_is_the_authors():
    assert uses_dti_prompts(["complex", "dti_complex_lv1"])
    assert not uses_dti_prompts(["complex", "dreambooth", "prompts/dti_simple.txt"])
    assert not uses_dti_prompts([])


def test_the_authors_prompt_file_is_checked_only_when_given_and_used(tmp_path):
    wrong = tmp_path / "prompts.py"
    wrong.write_text("SIMPLE = dict(object=['a {}'], live=['a {}'])\n")
    assert check_dti_prompts(["dti_simple"], None) is None  # no local copy: the fetch job checks the download
    assert check_dti_prompts(["complex", "dreambooth"], wrong) is None  # no authors' set: not read
    actual = sha256_bytes(wrong.read_bytes())
    with _raises(f"data.dti_prompts: {wrong}: checksum mismatch, expected sha256 {SHA256} ({SOURCE}), "
                 f"got {actual}"):
        check_dti_prompts(["complex", "dti_simple"], wrong)
    with _raises(f"data.dti_prompts: {wrong}: checksum mismatch, expected sha256 {SHA256} ({SOURCE}), "
                 f"got {actual}"):
        check_dti_prompts(["dti_complex_lv2"], str(wrong))


@pytest.mark.skipif(AUTHORS_PROMPTS is None, reason="the authors' prompts.py copy is not here")
def test_the_pinned_authors_prompt_file_passes():
    assert check_dti_prompts(["dti_simple", "complex"], AUTHORS_PROMPTS) is None


def test_the_summary_prompt_set_is_a_label_or_the_first_set():
    sets = ["complex", "prompts/dreambooth.object.txt", "dti_simple"]
    assert summary_prompt_set(sets, None) == "complex"
    assert summary_prompt_set(sets, "dreambooth") == "dreambooth"  # the label, not the path
    assert summary_prompt_set(sets, "dti_simple") == "dti_simple"
    assert summary_prompt_set(["dti_simple", "complex"], None) == "dti_simple"


def test_a_summary_prompt_set_that_is_no_label_is_refused_with_the_labels():
    sets = ["complex", "prompts/dreambooth.object.txt"]
    with _raises("aggregate.summary_prompt_set: 'dti_simple' is not one of prompt_sets "
                 "['complex', 'dreambooth']"):
        summary_prompt_set(sets, "dti_simple")
    with _raises("aggregate.summary_prompt_set: 'prompts/dreambooth.object.txt' is not one of prompt_sets "
                 "['complex', 'dreambooth']"):
        summary_prompt_set(sets, "prompts/dreambooth.object.txt")


# --- interpolation --------------------------------------------------------------------------------------
BACKBONE_METHODS = {
    "tiny_sd": {"ti": {}, "crossinit": {}, "dti": {}, "core": {}},
    "tiny_sdxl": {"ti_rescaled": {}, "dti_core": {}},  # ti_rescaled trains as ti
}


def test_methods_trained_on_keeps_the_pair_s_order_and_counts_what_a_variant_trains_as():
    assert methods_trained_on(("dti", "ti", "dti_core"), BACKBONE_METHODS["tiny_sd"]) == ["dti", "ti"]
    assert methods_trained_on(("dti", "ti", "dti_core"), BACKBONE_METHODS["tiny_sdxl"]) == ["ti", "dti_core"]
    assert methods_trained_on(("crossinit",), BACKBONE_METHODS["tiny_sdxl"]) == []


def test_pairs_that_train_on_every_interpolation_backbone_pass():
    pairs = [Pair("striped_box", "spotted_pup", ("dti", "ti")),
             Pair("red_cup", "striped_box", ("dti_core", "ti"))]
    assert check_interpolation_pairs(pairs, ["tiny_sd", "tiny_sdxl"], BACKBONE_METHODS) is None
    # a backbone the interpolation does not run on is not asked
    alone = [Pair("striped_box", "spotted_pup", ("crossinit",))]
    assert check_interpolation_pairs(alone, ["tiny_sd"], BACKBONE_METHODS) is None
    assert check_interpolation_pairs([], ["tiny_sd", "tiny_sdxl"], BACKBONE_METHODS) is None
    assert check_interpolation_pairs(alone, [], BACKBONE_METHODS) is None


def test_a_pair_none_of_whose_methods_trains_on_a_backbone_is_refused():
    pairs = [Pair("striped_box", "spotted_pup", ("dti", "ti")),
             Pair("red_cup", "striped_box", ("crossinit", "dti"))]
    with _raises("interpolation: none of pair red_cup+striped_box's methods (crossinit, dti) trains on "
                 "backbone tiny_sdxl (backbones.tiny_sdxl.only_methods)"):
        check_interpolation_pairs(pairs, ["tiny_sd", "tiny_sdxl"], BACKBONE_METHODS)
    # the backbones in order, each one's pairs in order: the first failing (backbone, pair) is named
    both = [Pair("red_cup", "spotted_pup", ("dti_core",)), Pair("striped_box", "red_cup", ("crossinit",))]
    with _raises("interpolation: none of pair striped_box+red_cup's methods (crossinit) trains on backbone "
                 "tiny_sdxl (backbones.tiny_sdxl.only_methods)"):
        check_interpolation_pairs(both, ["tiny_sdxl", "tiny_sd"], BACKBONE_METHODS)
    with _raises("interpolation: none of pair red_cup+spotted_pup's methods (dti_core) trains on backbone "
                 "tiny_sd (backbones.tiny_sd.only_methods)"):
        check_interpolation_pairs(both, ["tiny_sd", "tiny_sdxl"], BACKBONE_METHODS)


# --- mechanism ------------------------------------------------------------------------------------------
FAMILY_BACKBONES = {"my_sana": {"family": "sana"}, "my_sd": {"family": "sd"}, "my_wan": {"family": "wan"},
                    "my_sdxl": {"family": "sdxl"}}


def test_each_measurement_applies_to_the_backbones_its_family_table_names():
    measured = ["my_sdxl", "my_wan", "my_sana", "my_sd"]
    assert mechanism_backbones(FAMILY_BACKBONES, measured) == {
        "probe": ["my_sdxl", "my_sd"],  # CLIP adds a learned position row; Gemma-2 and UMT5 do not
        "decoding": ["my_sana"],  # Gemma-2 is a language model
        "attention": ["my_sdxl", "my_sd"],  # SD's and SDXL's UNets read the tokenizer's positions
    }


def test_only_the_measured_backbones_are_selected():
    assert mechanism_backbones(FAMILY_BACKBONES, ["my_sana"]) == {"probe": [], "decoding": ["my_sana"],
                                                                  "attention": []}
    assert mechanism_backbones(FAMILY_BACKBONES, []) == {"probe": [], "decoding": [], "attention": []}


def _mechanism(subjects):
    return {"attention": {"subjects": subjects, "prompts": ["a {}"], "seeds": [0], "scales": [1.0]}}


def test_the_attention_subjects_are_the_chosen_ones_or_the_first_two():
    assert attention_subjects(_mechanism(None), SUBJECTS) == ["striped_box", "spotted_pup"]
    assert attention_subjects(None, SUBJECTS) == ["striped_box", "spotted_pup"]  # mechanism off
    assert attention_subjects(None, {"red_cup": _subject()}) == ["red_cup"]
    assert attention_subjects(_mechanism(["red_cup", "striped_box"]), SUBJECTS) == ["red_cup", "striped_box"]
    assert attention_subjects(_mechanism([]), SUBJECTS) == []


def test_an_unknown_attention_subject_is_refused_with_its_index():
    with _raises("analysis.mechanism.attention.subjects[1]: unknown subject 'blue_cup'"):
        attention_subjects(_mechanism(["red_cup", "blue_cup", "green_cup"]), SUBJECTS)
    with _raises("analysis.mechanism.attention.subjects[0]: unknown subject 'Red_Cup'"):
        attention_subjects(_mechanism(["Red_Cup"]), list(SUBJECTS))
