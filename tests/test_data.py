"""Data side: image loading, the DreamBooth release (parse, verify, fetch), subject folders, synthetic subjects."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from dti import dreambooth
from dti.dreambooth import fetch_dreambooth, parse_prompts_and_classes, read_manifest, verify_dataset
from dti.errors import DtiError
from dti.images import list_images, load_image
from dti.subjects import load_subject, prepare_subject
from dti.synthetic import make_synthetic_subject

REPO = Path(__file__).resolve().parents[1]
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _find_dreambooth() -> Path | None:
    for candidate in (REPO.parent / "shared" / "dreambooth", Path("/work/shared/dreambooth")):
        if (candidate / dreambooth.PROMPTS_FILE).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def dreambooth_dir() -> Path:
    found = _find_dreambooth()
    if found is None:
        pytest.skip("no local copy of the DreamBooth dataset (a folder with its prompts_and_classes.txt) found")
    return found


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _red_left_blue_right(path: Path, orientation: int | None = None) -> Path:
    """A 40x20 JPEG: red left half, blue right half; optionally with an EXIF orientation tag."""
    img = Image.new("RGB", (40, 20), RED)
    img.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, "JPEG", quality=95, exif=exif)
    return path


def _near(pixel, colour, tol=40) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour, strict=True))


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


# ------------------------------------------------------------------------------------------ images


def test_exif_rotated_jpeg_loads_upright(tmp_path):
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to be upright, so the
    # stored left (red) half ends up on top.
    img = load_image(_red_left_blue_right(tmp_path / "rotated.jpg", orientation=6))
    assert img.mode == "RGB"
    assert img.size == (20, 40)
    assert _near(img.getpixel((10, 5)), RED)
    assert _near(img.getpixel((10, 35)), BLUE)


def test_unrotated_jpeg_keeps_its_layout(tmp_path):
    img = load_image(_red_left_blue_right(tmp_path / "plain.jpg"))
    assert img.size == (40, 20)
    assert _near(img.getpixel((5, 10)), RED) and _near(img.getpixel((35, 10)), BLUE)


def test_transparent_png_becomes_white_rgb(tmp_path):
    path = tmp_path / "cutout.png"
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 200, 30, 255))
    rgba.save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (10, 200, 30)


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # precondition: nothing in the suite switched it on
    path = _truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(DtiError, match="cut.jpg"):
        load_image(path)


def test_text_file_named_jpg_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image\n")
    with pytest.raises(DtiError, match="notes.jpg"):
        load_image(path)


def test_missing_image_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(DtiError, match="absent.png"):
        load_image(tmp_path / "absent.png")


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JpEg", "d.webp", "notes.txt", "._a.jpg", "e.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JpEg", "d.webp"]


def test_list_images_errors_name_the_folder(tmp_path):
    empty = tmp_path / "empty_subject"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    with pytest.raises(DtiError, match="empty_subject"):
        list_images(empty)
    with pytest.raises(DtiError, match="no_such_folder"):
        list_images(tmp_path / "no_such_folder")


# ------------------------------------------------------------------------------- DreamBooth: parse


def test_parse_prompts_and_classes(dreambooth_dir):
    info = parse_prompts_and_classes(dreambooth_dir / "prompts_and_classes.txt")
    assert len(info.subjects) == 30
    live = {s.name for s in info.subjects if s.kind == "live"}
    assert live == {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}
    classes = {s.name: s.class_noun for s in info.subjects}
    assert classes["bear_plushie"] == "stuffed animal" and classes["pink_sunglasses"] == "glasses"
    assert len(info.object_prompts) == 25 and len(info.live_prompts) == 25
    for template in info.object_prompts + info.live_prompts:
        assert template.count("{}") == 1 and "{0}" not in template and "{1}" not in template
    assert info.object_prompts[0] == "a {} in the jungle"
    assert "a {} wearing a santa hat" in info.live_prompts
    assert "a {} wearing a santa hat" not in info.object_prompts
    assert info.live_prompts[-1] == "a cube shaped {}"


def test_parse_errors_name_file_and_line(tmp_path, dreambooth_dir):
    original = (dreambooth_dir / "prompts_and_classes.txt").read_text()
    broken = tmp_path / "prompts_and_classes.txt"
    broken.write_text(original.replace("'a {0} {1} in the snow'", "'a {1} in the snow'", 1))
    with pytest.raises(DtiError, match=r"prompts_and_classes.txt:\d+"):
        parse_prompts_and_classes(broken)
    no_live = original[: original.index("Live Subject Prompts")]
    broken.write_text(no_live)
    with pytest.raises(DtiError, match="no live prompt list"):
        parse_prompts_and_classes(broken)
    with pytest.raises(DtiError, match="missing.txt"):
        parse_prompts_and_classes(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------ DreamBooth: verify


def test_manifest_lists_the_upstream_files_only():
    paths = {e.path for e in read_manifest()}
    assert len(paths) == 160  # 158 images and the two text files of the upstream folder
    assert {"prompts_and_classes.txt", "references_and_licenses.txt"} <= paths
    assert "SOURCE.md" not in paths and "LICENSE.md" not in paths


def test_shared_copy_verifies(dreambooth_dir):
    assert verify_dataset(dreambooth_dir) == dreambooth_dir
    assert fetch_dreambooth(REPO / "unused", source=dreambooth_dir) == dreambooth_dir
    assert not (REPO / "unused").exists()


def _linked_copy(src: Path, dst: Path) -> Path:
    """A cheap copy of the dataset: symlinks to every manifest file."""
    for entry in read_manifest():
        target = dst / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(src / entry.path)
    return dst


def test_one_changed_byte_fails_naming_the_file_and_hashes(tmp_path, dreambooth_dir):
    copy = _linked_copy(dreambooth_dir, tmp_path / "db")
    victim = copy / "dog5" / "02.jpg"
    data = bytearray(victim.read_bytes())
    victim.unlink()
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    expected = next(e.sha256 for e in read_manifest() if e.path == "dog5/02.jpg")
    with pytest.raises(DtiError) as err:
        verify_dataset(copy)
    message = str(err.value)
    assert "dog5/02.jpg" in message and expected in message and _sha(victim) in message
    assert "dog5/01.jpg" not in message


def test_missing_and_extra_files_fail(tmp_path, dreambooth_dir):
    copy = _linked_copy(dreambooth_dir, tmp_path / "db")
    (copy / "teapot" / "01.jpg").unlink()
    (copy / "vase" / "99.jpg").write_bytes(b"stray")
    (copy / "NOTES.md").write_text("top-level extras are allowed")
    with pytest.raises(DtiError) as err:
        verify_dataset(copy)
    assert "teapot/01.jpg: missing" in str(err.value)
    assert "vase/99.jpg" in str(err.value)
    assert "NOTES.md" not in str(err.value)


# ------------------------------------------------------------------------------- DreamBooth: fetch

TOP = f"dreambooth-{dreambooth.COMMIT}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, type_=tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), type_
    tar.addfile(info, io.BytesIO(data))


def _archive(path: Path, src: Path, mode: str, change: str | None = None, only: set[str] | None = None) -> Path:
    """A tarball shaped like GitHub's: '<repo>-<commit>/dataset/...', plus decoys that must be ignored."""
    with tarfile.open(path, mode, **({"compresslevel": 1} if mode == "w:gz" else {})) as tar:
        _add_bytes(tar, f"{TOP}/README.md", b"repository readme")
        _add_bytes(tar, f"{TOP}/dataset/../../escaped.txt", b"path traversal attempt")
        _add_bytes(tar, "/abs_escaped.txt", b"absolute path attempt")
        for entry in read_manifest():
            if only is not None and entry.path not in only:
                continue
            data = bytearray((src / entry.path).read_bytes())
            if entry.path == change:
                data[-3] ^= 0x01
            _add_bytes(tar, f"{TOP}/dataset/{entry.path}", bytes(data))
    return path


def test_fetch_downloads_extracts_and_verifies(tmp_path, dreambooth_dir):
    archive = _archive(tmp_path / "archive.tar.gz", dreambooth_dir, "w:gz")
    dest = tmp_path / "out" / "dreambooth"
    assert fetch_dreambooth(dest, source=None, url=archive.as_uri()) == dest
    written = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert written == {e.path for e in read_manifest()}
    assert _sha(dest / "cat2" / "03.jpg") == _sha(dreambooth_dir / "cat2" / "03.jpg")
    assert not list(tmp_path.rglob("*escaped*"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dreambooth"]  # no staging leftovers
    # A second call finds the verified folder and does not download again.
    assert fetch_dreambooth(dest, source=None, url=(tmp_path / "gone.tar.gz").as_uri()) == dest


def test_fetch_rejects_a_corrupted_archive_and_leaves_nothing(tmp_path, dreambooth_dir):
    archive = _archive(tmp_path / "bad.tar", dreambooth_dir, "w", change="robot_toy/04.jpg")
    dest = tmp_path / "out" / "dreambooth"
    with pytest.raises(DtiError) as err:
        fetch_dreambooth(dest, source=None, url=archive.as_uri())
    expected = next(e.sha256 for e in read_manifest() if e.path == "robot_toy/04.jpg")
    message = str(err.value)
    assert "robot_toy/04.jpg" in message and expected in message and "got " in message
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_reports_files_missing_from_the_archive(tmp_path, dreambooth_dir):
    archive = _archive(tmp_path / "small.tar.gz", dreambooth_dir, "w:gz", only={"prompts_and_classes.txt"})
    with pytest.raises(DtiError, match="backpack/00.jpg: missing from the archive"):
        fetch_dreambooth(tmp_path / "db", source=None, url=archive.as_uri())
    assert not (tmp_path / "db").exists()


def test_fetch_unreadable_archive_and_unreachable_url(tmp_path):
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    with pytest.raises(DtiError, match="garbage.tar.gz"):
        fetch_dreambooth(tmp_path / "db", source=None, url=garbage.as_uri())
    with pytest.raises(DtiError, match="nowhere.tar.gz"):
        fetch_dreambooth(tmp_path / "db", source=None, url=(tmp_path / "nowhere.tar.gz").as_uri())
    assert not (tmp_path / "db").exists()


# -------------------------------------------------------------------------------------- subjects


def test_prepare_subject_writes_pngs_then_subject_json(tmp_path):
    rotated = _red_left_blue_right(tmp_path / "b.jpg", orientation=6)
    square = tmp_path / "a.png"
    Image.new("RGB", (30, 30), (0, 128, 0)).save(square)
    out = tmp_path / "subjects" / "toy"
    meta = prepare_subject([square, rotated], out, name="toy", class_noun="stuffed animal", kind="object",
                           source="unit test")
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "subject.json"]
    on_disk = json.loads((out / "subject.json").read_text())
    assert on_disk == meta
    assert meta["images"] == ["00.png", "01.png"]
    assert meta["initializer"] == "stuffed animal"  # defaults to the class noun
    assert (meta["class"], meta["kind"], meta["source"]) == ("stuffed animal", "object", "unit test")
    assert meta["sha256"] == {name: _sha(out / name) for name in ["00.png", "01.png"]}
    with Image.open(out / "01.png") as png:
        assert png.format == "PNG" and png.mode == "RGB" and png.size == (20, 40)  # upright, same size
    assert load_subject(out) == meta


def test_failed_prepare_leaves_no_subject_json(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(good)
    bad = _truncated_jpeg(tmp_path / "bad.jpg")
    out = tmp_path / "dog"
    prepare_subject([good], out, name="dog", class_noun="dog", kind="live")  # an earlier, complete run
    assert (out / "subject.json").is_file()
    with pytest.raises(DtiError, match="bad.jpg"):
        prepare_subject([good, bad, good], out, name="dog", class_noun="dog", kind="live")
    assert not (out / "subject.json").exists()
    with pytest.raises(DtiError, match="subject.json"):
        load_subject(out)


def test_prepare_removes_images_of_a_larger_earlier_run(tmp_path):
    img = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (200, 0, 0)).save(img)
    out = tmp_path / "s"
    prepare_subject([img, img, img], out, name="s", class_noun="can", kind="object")
    prepare_subject([img, img], out, name="s", class_noun="can", kind="object")
    assert sorted(p.name for p in out.glob("*.png")) == ["00.png", "01.png"]


def test_prepare_rejects_bad_fields(tmp_path):
    img = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(img)
    with pytest.raises(DtiError, match="'pet'"):
        prepare_subject([img], tmp_path / "s", name="s", class_noun="dog", kind="pet")
    with pytest.raises(DtiError, match="'a/b'"):
        prepare_subject([img], tmp_path / "s", name="a/b", class_noun="dog", kind="live")
    with pytest.raises(DtiError, match="no images"):
        prepare_subject([], tmp_path / "s", name="s", class_noun="dog", kind="live")


def test_load_subject_validation(tmp_path):
    img = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(img)
    out = tmp_path / "s"
    meta = prepare_subject([img], out, name="s", class_noun="vase", kind="object", initializer="pot")
    assert load_subject(out)["initializer"] == "pot"

    def rewrite(**changes):
        data = {**meta, **changes}
        for key in [k for k, v in changes.items() if v is None]:
            del data[key]
        (out / "subject.json").write_text(json.dumps(data))

    rewrite(kind=None)
    with pytest.raises(DtiError, match="missing key 'kind'"):
        load_subject(out)
    rewrite(kind="plant")
    with pytest.raises(DtiError, match="'plant'"):
        load_subject(out)
    rewrite(images=["../x.png"], sha256={"../x.png": "0" * 64})
    with pytest.raises(DtiError, match="invalid file name"):
        load_subject(out)
    rewrite()
    Image.new("RGB", (16, 16), (3, 2, 1)).save(out / "00.png")  # tampered after preparation
    with pytest.raises(DtiError, match="00.png"):
        load_subject(out)
    assert load_subject(out, verify_images=False)["name"] == "s"


# ------------------------------------------------------------------------------------- synthetic


def _arrays(images):
    return [np.asarray(im) for im in images]


def test_synthetic_subjects_are_deterministic():
    first = make_synthetic_subject("toy", "object", 3, 64, seed=7)
    again = make_synthetic_subject("toy", "object", 3, 64, seed=7)
    assert all(im.mode == "RGB" and im.size == (64, 64) for im in first)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(first), _arrays(again), strict=True))
    # The first images do not depend on how many are asked for.
    more = make_synthetic_subject("toy", "object", 4, 64, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(first), _arrays(more[:3]), strict=True))


def test_synthetic_subjects_vary_by_seed_name_and_image():
    base = _arrays(make_synthetic_subject("toy", "live", 2, 48, seed=1))
    other_seed = _arrays(make_synthetic_subject("toy", "live", 2, 48, seed=2))
    other_name = _arrays(make_synthetic_subject("pet", "live", 2, 48, seed=1))
    assert not np.array_equal(base[0], other_seed[0])
    assert not np.array_equal(base[0], other_name[0])
    assert not np.array_equal(base[0], base[1])  # each image is a different view


def test_synthetic_subject_rejects_bad_arguments():
    with pytest.raises(DtiError, match="'plant'"):
        make_synthetic_subject("x", "plant", 2, 32, seed=0)
    with pytest.raises(DtiError, match="n_images"):
        make_synthetic_subject("x", "object", 0, 32, seed=0)
