"""The DTI authors' prompt sets: pinned file, checksum, extraction as data (never executed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dti.dti_prompts import (
    PROMPT_SETS,
    SHA256,
    fetch_dti_prompts,
    parse_prompts_source,
    read_prompts_file,
    reference,
    resolve_reference,
    sha256_bytes,
)
from dti.errors import DtiError
from dti.prompts import load_prompt_set

REPO = Path(__file__).resolve().parents[1]


def _find_authors_copy(name: str) -> Path | None:
    for root in (REPO.parent / "shared", Path("/work/shared")):
        candidate = root / "third_party" / "kunheek-dti" / name
        if candidate.is_file():
            return candidate
    return None


AUTHORS_PROMPTS = _find_authors_copy("prompts.py")
AUTHORS_SUBJECTS = Path(__file__).parent / "fixtures" / "kunheek-dti" / "dreambooth.json"  # their data/dreambooth.json
needs_copy = pytest.mark.skipif(AUTHORS_PROMPTS is None, reason="the authors' prompts.py copy is not here")


def test_paper_subject_table_has_the_authors_class_words_and_initializations():
    authors = json.loads(AUTHORS_SUBJECTS.read_text())
    with open(REPO / "src" / "dti" / "data" / "subjects" / "dreambooth.tsv") as handle:
        table = {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert {name: row["class"] for name, row in table.items()} == {n: s["class"] for n, s in authors.items()}
    assert table["pink_sunglasses"]["class"] == "sunglasses"
    assert all(not row["initializer"] for row in table.values())  # so the initializer is the class word
    assert {name: row["authors_initialization"] for name, row in table.items()} == {
        n: s["initialization"] for n, s in authors.items()}


@needs_copy
def test_the_pinned_copy_gives_the_three_sets():
    sets = read_prompts_file(AUTHORS_PROMPTS)
    assert sorted(sets) == sorted(PROMPT_SETS) == ["dti_complex_lv1", "dti_complex_lv2", "dti_simple"]
    simple = sets["dti_simple"]
    assert (len(simple["object"]), len(simple["live"])) == (41, 41)
    for name in ("dti_complex_lv1", "dti_complex_lv2"):
        assert (len(sets[name]["object"]), len(sets[name]["live"])) == (16, 16)
    # SIMPLE's object list opens with every DreamBooth object prompt, in order; its live list holds all
    # DreamBooth live prompts but two.
    dreambooth_object = load_prompt_set("dreambooth", "object")
    assert simple["object"][: len(dreambooth_object)] == dreambooth_object
    dreambooth_live = load_prompt_set("dreambooth", "live")
    assert len(set(dreambooth_live) - set(simple["live"])) == 2
    assert all(t.count("{}") == 1 for s in sets.values() for kind in s.values() for t in kind)


@needs_copy
def test_wrong_checksum_names_the_file(tmp_path):
    changed = tmp_path / "prompts.py"
    changed.write_bytes(AUTHORS_PROMPTS.read_bytes().replace(b"in the jungle", b"in the jungle!", 1))
    with pytest.raises(DtiError, match="checksum") as info:
        read_prompts_file(changed)
    assert str(changed) in str(info.value) and SHA256 in str(info.value)
    with pytest.raises(DtiError, match="checksum"):
        fetch_dti_prompts(tmp_path / "out.json", source=changed)
    assert not (tmp_path / "out.json").exists()


def _source(**lists: str) -> str:
    body = "\n".join(f"{name} = SubjectPromptSet(object_prompts={value}, live_prompts=['a {{}} sitting'])"
                     for name, value in lists.items())
    return f"from x import SubjectPromptSet\n{body}\n"


def test_lists_not_found_name_the_file_and_the_set():
    text = _source(SIMPLE="['a {} here']", COMPLEX_LV1="['a {} there']")  # no COMPLEX_LV2
    with pytest.raises(DtiError, match="COMPLEX_LV2") as info:
        parse_prompts_source(text, "/some/prompts.py")
    assert "/some/prompts.py" in str(info.value)
    broken = _source(SIMPLE="['a {} here']", COMPLEX_LV1="['a {} there']", COMPLEX_LV2="['no slot']")
    with pytest.raises(DtiError, match=r"COMPLEX_LV2\.object_prompts\[0\]"):
        parse_prompts_source(broken, "p.py")
    with pytest.raises(DtiError, match="cannot parse"):
        parse_prompts_source("SIMPLE = (", "p.py")


def test_the_file_is_read_never_executed(tmp_path):
    marker = tmp_path / "executed"
    # Code at the top level and inside the lists: parsing must neither run it nor accept it as data.
    text = (f"open({str(marker)!r}, 'w').write('ran')\n"
            + _source(SIMPLE="['a {} here']", COMPLEX_LV1="['a {} there']", COMPLEX_LV2="['a {} yonder']"))
    sets = parse_prompts_source(text, "p.py")
    assert sets["dti_complex_lv2"] == {"object": ["a {} yonder"], "live": ["a {} sitting"]}
    assert not marker.exists()
    calls = _source(SIMPLE=f"[open({str(marker)!r}, 'w').write('a {{}}')]", COMPLEX_LV1="['a {} there']",
                    COMPLEX_LV2="['a {} yonder']")
    with pytest.raises(DtiError, match="literal"):
        parse_prompts_source(calls, "p.py")
    assert not marker.exists()


@needs_copy
def test_download_and_local_copy_give_the_same_json(tmp_path):
    local = fetch_dti_prompts(tmp_path / "local.json", source=AUTHORS_PROMPTS)
    downloaded = fetch_dti_prompts(tmp_path / "down.json", source=None, url=AUTHORS_PROMPTS.as_uri())
    assert local == downloaded == json.loads((tmp_path / "down.json").read_text())
    assert local["sha256"] == SHA256 == sha256_bytes(AUTHORS_PROMPTS.read_bytes())

    changed = tmp_path / "changed.py"
    changed.write_bytes(AUTHORS_PROMPTS.read_bytes() + b"\n")
    with pytest.raises(DtiError, match=str(changed)):
        fetch_dti_prompts(tmp_path / "bad.json", source=None, url=changed.as_uri())
    assert not (tmp_path / "bad.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tmp")] == []  # no download left behind


@needs_copy
def test_a_reference_resolves_to_the_kind_and_limit(tmp_path):
    record = fetch_dti_prompts(tmp_path / "p.json", source=AUTHORS_PROMPTS)
    live = record["sets"]["dti_simple"]["live"]
    assert resolve_reference(reference("dti_simple", "live"), tmp_path / "p.json") == live
    assert resolve_reference(reference("dti_simple", "live", limit=3), tmp_path / "p.json") == live[:3]
    stale = {**reference("dti_simple", "live"), "sha256": "0" * 64}
    with pytest.raises(DtiError, match="fetch_dti_prompts"):
        resolve_reference(stale, tmp_path / "p.json")
    with pytest.raises(DtiError, match="dti_simple"):
        resolve_reference(reference("dti_simple", "live"), None)
    with pytest.raises(DtiError, match="dti_medium"):
        reference("dti_medium", "live")
