"""Prompt templates and prompt set files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dti.dreambooth import PROMPTS_FILE, parse_prompts_and_classes
from dti.errors import DtiError
from dti.prompts import (
    TRAINING_TEMPLATES,
    eval_prompt,
    load_prompt_set,
    prompt_set_path,
    read_prompt_file,
    render,
)

REPO = Path(__file__).resolve().parents[1]
PROMPTS_DIR = REPO / "src" / "dti" / "data" / "prompts"  # shipped with the library


def _find_dreambooth() -> Path | None:
    for candidate in (REPO.parent / "shared" / "dreambooth", Path("/work/shared/dreambooth")):
        if (candidate / PROMPTS_FILE).is_file():
            return candidate
    return None


def test_training_templates():
    assert len(TRAINING_TEMPLATES) == 27 == len(set(TRAINING_TEMPLATES))
    assert all(t.count("{}") == 1 for t in TRAINING_TEMPLATES)
    assert {"a photo of a {}", "a rendering of a {}", "a cropped photo of the {}"} <= set(TRAINING_TEMPLATES)


def test_render_and_eval_prompt():
    assert render("a {} in the snow", "<dog5>") == "a <dog5> in the snow"
    assert render("a {} on a rug", "<s> <s>_1") == "a <s> <s>_1 on a rug"
    assert render("a {} here", "{weird}") == "a {weird} here"  # braces in the token are harmless
    assert eval_prompt("a cube shaped {}", "stuffed animal") == "a cube shaped stuffed animal"
    with pytest.raises(DtiError, match="exactly one"):
        render("a photo", "<s>")
    with pytest.raises(DtiError, match="class noun"):
        eval_prompt("a {}", "  ")


@pytest.mark.skipif(_find_dreambooth() is None, reason="DreamBooth copy not found")
def test_shipped_dreambooth_prompt_files_match_the_release():
    info = parse_prompts_and_classes(_find_dreambooth() / PROMPTS_FILE)
    for kind in ("object", "live"):
        assert prompt_set_path("dreambooth", kind) == PROMPTS_DIR / f"dreambooth.{kind}.txt"
        assert load_prompt_set("dreambooth", kind) == list(info.prompts(kind))


def test_complex_prompt_set_serves_both_kinds():
    objects, live = load_prompt_set("complex", "object"), load_prompt_set("complex", "live")
    assert objects == live
    assert len(objects) >= 10
    assert all(len(t.split()) >= 12 for t in objects)  # multi-clause, not one-liners


def test_kind_specific_file_rule(tmp_path):
    (tmp_path / "mix.txt").write_text("a {} for everyone\n")
    (tmp_path / "pets.live.txt").write_text("# only live subjects\na {} sleeping\n")
    assert load_prompt_set("mix", "live", tmp_path) == ["a {} for everyone"]
    assert load_prompt_set("mix", "object", tmp_path) == ["a {} for everyone"]
    assert load_prompt_set("pets", "live", tmp_path) == ["a {} sleeping"]
    with pytest.raises(DtiError, match=r"pets\.object\.txt.*pets\.txt"):
        load_prompt_set("pets", "object", tmp_path)
    (tmp_path / "mix.object.txt").write_text("a {} on a table\n")
    with pytest.raises(DtiError, match="ambiguous"):
        load_prompt_set("mix", "object", tmp_path)
    with pytest.raises(DtiError, match="'plant'"):
        load_prompt_set("mix", "plant", tmp_path)
    # an explicit path is used as is
    assert load_prompt_set(tmp_path / "pets.live.txt", "object") == ["a {} sleeping"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a photo\n", r"bad\.txt:1: .*exactly one"),
        ("# header\n\na {} and a {}\n", r"bad\.txt:3: .*exactly one"),
        ("a {} number {0}\n", r"bad\.txt:1: stray brace"),
        ("a {}\nb {}\na {}\n", r"bad\.txt:3: duplicate of line 1"),
        ("# only comments\n\n", r"bad\.txt holds no templates"),
    ],
)
def test_prompt_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(DtiError, match=message):
        read_prompt_file(path)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(DtiError, match="nothing.txt"):
        load_prompt_set(tmp_path / "nothing.txt", "object")

