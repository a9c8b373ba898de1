"""Files, one table per class of weakness:

- class 1, links: nothing the project writes lands outside the folder it was given, whatever symbolic links
  were planted in it. A link among the folders between that root and a file, or at the file itself, is
  refused with one line naming it, before anything is written; a link waiting under a temporary file's
  name is never opened. The root itself may be a link (results/ on scratch space).
- class 4, downloads: what is derived from a checksummed download is checked again where a job uses it: the
  DTI authors' prompt lists (resources/dti_prompts.json) and the DreamBooth photos with their marker
  (resources/dreambooth.json). A copy changed after the fetch is refused, naming the file and how to
  recreate it.
- class 9, clocks and full disks: an input dated in the future (a node's clock ahead) costs no finished
  result; on a full disk the one-line message names the path, nothing partial or empty remains under a
  final name, and a rerun once space is freed completes.

The workflow-like cases run in a working directory of their own with the workflow's relative paths
(results/..., resources/...), as Snakemake runs a job.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import fast_settings
from PIL import Image

from dti import dreambooth, io
from dti.backbones.catalog import load_backbone
from dti.dreambooth import marker_record
from dti.dti_prompts import fetch_dti_prompts, reference
from dti.errors import DtiError
from dti.images import list_images
from dti.metrics import MANIFEST_COLUMNS
from dti.pipeline import aggregate, prepare, render_subject, resolve_prompt_sets, sample_subject
from dti.state import TrainingState, save_state
from dti.subjects import prepare_subject
from dti.train import train

SETTINGS = dict(steps=2, save_every=1, batch_size=1)  # a state and an embedding file at every step
LABELS = {"backbone": "sd", "method": "dti", "subject": "toy"}
RUN = Path("results/sd/dti/toy")
MANIFEST = RUN / "samples/step-2/manifest.parquet"
SAMPLE = dict(steps=2, resolution=64, batch_size=2)
NO_SPACE = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module")
def pristine(tiny_sd):
    return load_backbone(str(tiny_sd))


def _fresh(pristine):
    """A backbone to train or sample with: training and loading a token change only the tokenizers and
    text encoders, so only they are copied."""
    backbone = copy.copy(pristine)
    backbone.components = {name: copy.deepcopy(c) if name.startswith(("tokenizer", "text_encoder")) else c
                           for name, c in pristine.components.items()}
    backbone.slots, backbone._pipe = backbone.make_slots(), None
    return backbone


@pytest.fixture(scope="module")
def images(subject_images):
    return subject_images[:2]


@pytest.fixture(scope="module")
def subject_json(subject_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("subject")
    prepare_subject(list_images(subject_dir)[:2], folder, name="toy", class_noun="dog", kind="object")
    return folder / "subject.json"


@pytest.fixture(scope="module")
def trained(pristine, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    train(_fresh(pristine), images, fast_settings(**SETTINGS), out, progress=False)
    return out


@pytest.fixture
def ctx(pristine, images, subject_json, trained, tmp_path, monkeypatch):
    """A working directory of its own (the cases use the workflow's relative paths) beside `outside`."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return dict(pristine=pristine, images=images, subject=subject_json, trained=trained, work=work,
                outside=tmp_path / "outside", monkeypatch=monkeypatch)


def _train(c, out, **overrides):
    return train(_fresh(c["pristine"]), c["images"], fast_settings(**{**SETTINGS, **overrides}), out, progress=False)


def _render(c, prompt_sets=None):
    render_subject(_fresh(c["pristine"]), str(c["trained"]), str(c["subject"]), str(MANIFEST), labels=LABELS,
                   prompt_sets=prompt_sets or {"dreambooth": ["a photo of {}"]}, seeds=[0, 1], sample=SAMPLE)


def _scores(path: Path) -> Path:
    """A score file of two subjects x two methods, as the score job writes it."""
    rows = [dict(backbone="sd", method=method, step=2, subject=subject, subject_kind="object",
                 prompt_set="dreambooth", prompt_id=0, seed=seed, image=f"dreambooth/000_{seed}.png",
                 metric="dino", metric_model="timm:vit_small_patch16_224.dino@random", value=0.1 * seed + offset)
            for offset, method in ((0.5, "dti"), (0.4, "ti")) for subject in ("toy", "pup") for seed in (0, 1)]
    io.write_parquet(path, pd.DataFrame(rows))
    return path


def _aggregate(scores: list[Path], out_dir="results/default/tables"):
    aggregate([str(s) for s in scores], [], out_dir, n_boot=20, seed=0)


def _tree(folder: Path) -> dict[str, object]:
    """Every entry under `folder`: a file's bytes, a link's target, "dir" for a folder."""
    found = {}
    for path in sorted(folder.rglob("*")) if folder.exists() else []:
        rel = path.relative_to(folder).as_posix()
        found[rel] = (f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir()
                      else path.read_bytes())
    return found


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --- class 1: writes through links ---------------------------------------------------------------------
def _taken_temp_name(c):
    """The first temporary name write_json draws is already a link (to outside/missing)."""
    names = iter([".run.json.planted.tmp"])
    real = io._temp_name
    c["monkeypatch"].setattr(io, "_temp_name", lambda name: next(names, None) or real(name))
    io.write_json(RUN / "run.json", {"steps": 2}, root=RUN)
    assert json.loads((RUN / "run.json").read_text()) == {"steps": 2} and not (RUN / "run.json").is_symlink()
    assert (RUN / ".run.json.planted.tmp").is_symlink()  # left alone: neither opened nor removed


def _tiny_model_folder(c):
    with io.atomic_dir("models/tiny-sd") as tmp:
        (tmp / "model_index.json").write_text("{}")


def _job_writer_naming_no_root(c):
    """A workflow job's process (use_output_roots, as dti.jobs.run_job would set it): a writer that names no
    root, here an analysis table, writes inside results/ only."""
    c["monkeypatch"].setattr(io, "_OUTPUT_ROOTS", False)
    io.use_output_roots()
    io.write_parquet("results/default/analysis/norms.parquet", pd.DataFrame({"norm": [1.0]}))


def _dreambooth_download(c):
    dreambooth.fetch_dreambooth("resources/dreambooth", source=None, url=(c["work"] / "none.tar.gz").as_uri())


# case: (links to plant {link: target, the target relative to the test's folder}, what writes, the link the
# error must name; None: the write succeeds), what `outside` must then hold beyond what it held
LINK_CASES = {
    "dti train --out DIR: checkpoints is a link": (
        {"run/checkpoints": "outside/dir"}, lambda c: _train(c, Path("run")), "run/checkpoints", {}),
    "dti train --out DIR: a planted learned_embeds.safetensors": (
        {"run/learned_embeds.safetensors": "outside/file"}, lambda c: _train(c, Path("run")),
        "run/learned_embeds.safetensors", {}),
    "dti train --out DIR: a dangling link at the last step's file": (
        {"run/learned_embeds-steps-2.safetensors": "outside/missing"}, lambda c: _train(c, Path("run")),
        "run/learned_embeds-steps-2.safetensors", {}),
    "the state file is a dangling link": (
        {"run/checkpoints/state.safetensors": "outside/missing"},
        lambda c: save_state(Path("run/checkpoints/state.safetensors"),
                             TrainingState("f", 1, {"clip_l.rows": torch.zeros(1, 4)}, {}), root=Path("run")),
        "run/checkpoints/state.safetensors", {}),
    "the train log is a link": (
        {"run/train_log.jsonl": "outside/file"},
        lambda c: io.LineLog("run/train_log.jsonl", root="run").write('{"step": 1}\n'), "run/train_log.jsonl", {}),
    "sample job: the samples folder is a link": (
        {f"{RUN}/samples": "outside/dir"},
        lambda c: sample_subject(str(RUN), "model.json", str(c["subject"]), str(MANIFEST), labels=LABELS,
                                 prompt_sets={"dreambooth": ["a photo of {}"]}, seeds=[0], sample=SAMPLE, step=2),
        f"{RUN}/samples", {}),
    "sample job: a link in a prompt-set folder": (
        {f"{MANIFEST.parent}/dreambooth/000_1.png": "outside/file"}, _render,
        f"{MANIFEST.parent}/dreambooth/000_1.png", {}),
    "aggregate: the run's folder above its tables is a link": (
        {"results/default": "outside/dir"}, lambda c: _aggregate([]), "results/default", {}),
    "a workflow job's writer that names no root: a link below results/": (
        {"results/default": "outside/dir"}, _job_writer_naming_no_root, "results/default", {}),
    "a temporary file's name taken by a link": (
        {f"{RUN}/.run.json.planted.tmp": "outside/missing"}, _taken_temp_name, None, {}),
    "a tiny model's folder is a dangling link": (
        {"models/tiny-sd": "outside/missing"}, _tiny_model_folder, "models/tiny-sd", {}),
    "the DreamBooth download's folder is a dangling link": (
        {"resources/dreambooth": "outside/missing"}, _dreambooth_download, "resources/dreambooth", {}),
    "the top folder itself may be a link (results/ on scratch space)": (
        {"results": "outside/dir"}, lambda c: io.write_json("results/x/run.json", {}, root=io.output_root("results/x")),
        None, {"dir/x": "dir", "dir/x/run.json": b"{}\n"}),
}


@pytest.mark.parametrize("case", list(LINK_CASES))
def test_nothing_is_written_through_a_link_planted_in_the_output_folder(ctx, case):
    links, act, refused, added = LINK_CASES[case]
    outside = ctx["outside"]
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_bytes(b"keep")
    for link, target in links.items():
        (ctx["work"] / link).parent.mkdir(parents=True, exist_ok=True)
        (ctx["work"] / link).symlink_to(outside.parent / target)
    before = _tree(outside)
    if refused is None:
        act(ctx)
    else:
        with pytest.raises(DtiError) as err:
            act(ctx)
        line = _one_line(err)
        assert f"{ctx['work'] / refused} is a symbolic link" in line and "remove the link" in line
        assert (ctx["work"] / refused).is_symlink()  # the link itself is left as it was
    assert _tree(outside) == {**before, **added}


# --- class 4: what was downloaded is checked where it is used -------------------------------------------
AUTHORS = ("from x import SubjectPromptSet\n"
           "SIMPLE = SubjectPromptSet(object_prompts=['a {} on a table', 'a {} in the snow'], "
           "live_prompts=['a {} sitting'])\n"
           "COMPLEX_LV1 = SubjectPromptSet(object_prompts=['a {} on a red table by a window'], "
           "live_prompts=['a {} sitting on a blue rug'])\n"
           "COMPLEX_LV2 = SubjectPromptSet(object_prompts=['a {} on a red table by a window at night'], "
           "live_prompts=['a {} sitting on a blue rug in the rain'])\n")
PIN = hashlib.sha256(AUTHORS.encode()).hexdigest()
PROMPTS = Path("resources/dti_prompts.json")
MARKER = Path("resources/dreambooth.json")
PHOTOS = [Path("resources/dreambooth/dog/00.jpg"), Path("resources/dreambooth/dog/01.jpg")]
SUBJECT = Path("resources/subjects/dog/subject.json")


def _photo(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), colour).save(path, format="JPEG")


def _fetched(c) -> None:
    """What the fetch jobs leave: the prompts JSON (from a local copy of the authors' file pinned to PIN),
    the photos, their checksum manifest and the marker."""
    (c["work"] / "prompts.py").write_text(AUTHORS)
    fetch_dti_prompts(PROMPTS, source=c["work"] / "prompts.py", sha256=PIN)
    for i, path in enumerate(PHOTOS):
        _photo(path, (40 * i, 90, 200))
    manifest = c["work"] / "manifest.tsv"
    files = sorted(p for p in Path("resources/dreambooth").rglob("*") if p.is_file())
    manifest.write_text("".join(["path\tsha256\tbytes\n"] + [
        f"{p.relative_to('resources/dreambooth').as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\t"
        f"{p.stat().st_size}\n" for p in files]))
    c["monkeypatch"].setattr(dreambooth, "DEFAULT_MANIFEST", manifest)
    io.write_json(MARKER, marker_record("resources/dreambooth", downloaded=True))


def _edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _use_prompts(c):
    ref = {**reference("dti_simple", "object"), "sha256": PIN}
    return resolve_prompt_sets({"dti_simple": ref}, str(PROMPTS))


def _use_photos(c, paths=PHOTOS):
    prepare([str(p) for p in paths], str(SUBJECT), name="dog", class_noun="dog", kind="live", initializer="dog",
            source="dreambooth", dataset=str(MARKER))


RECREATE_PROMPTS = "delete it and rerun (fetch_dti_prompts extracts it again)"
RECREATE_PHOTOS = f"/resources/dreambooth and {MARKER}, then rerun (fetch_dreambooth downloads and verifies it again)"
# case: (how the fetched files change, what uses them, what the error must say (None: it works))
INTEGRITY_CASES = {
    "prompts as fetched": (lambda c: None, _use_prompts, None),
    "a prompt edited": (
        lambda c: _edit_json(PROMPTS, lambda r: r["sets"]["dti_simple"]["object"].__setitem__(0, "a {} on Mars")),
        _use_prompts, [str(PROMPTS), "lists of dti_simple differ", RECREATE_PROMPTS]),
    "a prompt added": (
        lambda c: _edit_json(PROMPTS, lambda r: r["sets"]["dti_complex_lv1"]["live"].append("a {} flying")),
        _use_prompts, [str(PROMPTS), "lists of dti_complex_lv1 differ", RECREATE_PROMPTS]),
    "a set removed": (
        lambda c: _edit_json(PROMPTS, lambda r: r["sets"].pop("dti_complex_lv2")),
        _use_prompts, [str(PROMPTS), "lists of dti_complex_lv2 differ", RECREATE_PROMPTS]),
    "the JSON truncated": (
        lambda c: PROMPTS.write_text(PROMPTS.read_text()[:200]),
        _use_prompts, [f"cannot read the extracted DTI prompts {PROMPTS}", RECREATE_PROMPTS]),
    "a recorded source checksum that is not the pinned one": (
        lambda c: _edit_json(PROMPTS, lambda r: r.__setitem__("sha256", "0" * 64)),
        _use_prompts, [str(PROMPTS), f"extracted from sha256 {'0' * 64}", f"pinned to {PIN}", RECREATE_PROMPTS]),
    "the source text edited and the lists to match": (
        lambda c: _edit_json(PROMPTS, lambda r: (
            r.__setitem__("source_text", r["source_text"].replace("on a table", "on Mars")),
            r["sets"]["dti_simple"]["object"].__setitem__(0, "a {} on Mars"))),
        _use_prompts, [str(PROMPTS), "copy of the authors' file has sha256", RECREATE_PROMPTS]),
    "an older version's JSON, without the source text": (
        lambda c: _edit_json(PROMPTS, lambda r: r.pop("source_text")),
        _use_prompts, [str(PROMPTS), "an older version wrote it", RECREATE_PROMPTS]),
    "photos as fetched": (lambda c: None, _use_photos, None),
    "a photo replaced after the fetch": (
        lambda c: _photo(PHOTOS[1], (255, 0, 0)), _use_photos,
        [f"{PHOTOS[1]}: checksum mismatch", "changed after fetch_dreambooth verified it", RECREATE_PHOTOS]),
    "a photo truncated": (
        lambda c: PHOTOS[0].write_bytes(PHOTOS[0].read_bytes()[:100]), _use_photos,
        [f"{PHOTOS[0]}: checksum mismatch", "(100 bytes)", RECREATE_PHOTOS]),
    "a photo the manifest does not list": (
        lambda c: _photo(Path("resources/dreambooth/dog/02.jpg"), (0, 0, 0)),
        lambda c: _use_photos(c, [*PHOTOS, Path("resources/dreambooth/dog/02.jpg")]),
        ["resources/dreambooth/dog/02.jpg: not a file of the pinned DreamBooth dataset"]),
    "a marker from another checksum manifest": (
        lambda c: _edit_json(MARKER, lambda r: r.__setitem__("manifest_sha256", "1" * 64)), _use_photos,
        [f"{MARKER}: the dataset was verified against another checksum manifest", "delete it and rerun"]),
    "a marker truncated": (
        lambda c: MARKER.write_text("{\"path\": "), _use_photos,
        [f"{MARKER}: unreadable", "delete it and rerun (fetch_dreambooth writes it again)"]),
}


@pytest.mark.parametrize("case", list(INTEGRITY_CASES))
def test_what_was_downloaded_is_checked_where_it_is_used(ctx, case):
    change, use, expected = INTEGRITY_CASES[case]
    _fetched(ctx)
    change(ctx)
    if expected is None:
        use(ctx)
        return
    with pytest.raises(DtiError) as err:
        use(ctx)
    line = _one_line(err)
    assert all(part in line for part in expected), line
    assert not SUBJECT.exists()  # nothing was made from it


# --- class 9: clocks and full disks ---------------------------------------------------------------------
@contextlib.contextmanager
def _full_disk(name: str, nth: int = 1):
    """The disk fills while the nth write of the file named `name` is under way: half its bytes reach the
    disk, then ENOSPC. Atomic writes write their temporary file with Path.write_bytes (dti.io) or, tensor
    by tensor, with os.write (dti.tensor_files); the train log its lines with os.write."""
    real_write_bytes, real_write = Path.write_bytes, os.write
    count = [0]

    def due() -> bool:
        count[0] += 1
        return count[0] >= nth

    def write_bytes(self, data):
        if self.name.startswith(f".{name}.") and self.name.endswith(".tmp") and due():
            real_write_bytes(self, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real_write_bytes(self, data)

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        temporary = Path(target).name.startswith(f".{name}.") and target.endswith(".tmp")
        if (target.endswith(f"/{name}") or temporary) and due():
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real_write(fd, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_bytes", write_bytes)
        mp.setattr(os, "write", write)
        yield


def _future_scores(c):
    score = _scores(RUN / "scores/step-2.parquet")
    future = time.time() + 3600
    os.utime(score, (future, future))
    _aggregate([score])
    assert score.stat().st_mtime <= time.time()
    _tables_done(c)


def _snakemake_with_future_input(settle: bool):
    """A one-rule workflow whose input is dated an hour ahead, as a node with a fast clock leaves it: the
    step writes its output; Snakemake then finds the output older than the input, fails the job and
    deletes the output, unless the step settled its input first (dti.io.settle_future_times)."""
    def run(c):
        Path("Snakefile").write_text('rule step:\n    input: "in.parquet"\n    output: "out.txt"\n'
                                     '    script: "step.py"\n')
        Path("step.py").write_text("from dti.io import settle_future_times, write_text\n"
                                   + ("settle_future_times(snakemake.input)\n" if settle else "")
                                   + "write_text(snakemake.output[0], 'table')\n")
        Path("in.parquet").write_bytes(b"x")
        future = time.time() + 3600
        os.utime("in.parquet", (future, future))
        result = subprocess.run([sys.executable, "-m", "snakemake", "-c1", "--quiet"], capture_output=True,
                                text=True, timeout=300)
        if settle:
            assert result.returncode == 0, result.stderr
            assert Path("out.txt").read_text() == "table"
        else:  # Snakemake's own check, the cause: the finished output is deleted
            assert result.returncode != 0 and "has older modification time" in result.stderr
            assert not Path("out.txt").exists()
    return run


def _sample_manifest_done(c):
    frame = pd.read_parquet(MANIFEST)
    assert tuple(frame.columns) == MANIFEST_COLUMNS
    assert len(frame) == 2 and all((MANIFEST.parent / image).stat().st_size > 0 for image in frame["image"])


def _tables_done(c):
    assert Path("results/default/tables/per_subject.parquet").stat().st_size > 0


def _train_done(c):
    assert json.loads(Path("run/run.json").read_text())["steps"] == SETTINGS["steps"]
    logged = [json.loads(line)["step"] for line in Path("run/train_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, SETTINGS["steps"] + 1))


def _table_job(c):
    _aggregate([_scores(RUN / "scores/step-2.parquet")])


# case: (what runs, the file the disk fills on and at which of its writes, how a completed rerun looks)
# A clock case has no full disk: it runs once and checks itself.
CLOCK_AND_DISK_CASES = {
    "a score file dated in the future: aggregate keeps its tables": (_future_scores, None, None),
    "Snakemake deletes the outputs of a step with a future-dated input (the cause)": (
        _snakemake_with_future_input(settle=False), None, None),
    "a step that settles its future-dated input keeps its outputs": (
        _snakemake_with_future_input(settle=True), None, None),
    "the train log's first line": (lambda c: _train(c, Path("run")), ("run/train_log.jsonl", 1), _train_done),
    "a later train log line, torn in half": (lambda c: _train(c, Path("run")), ("run/train_log.jsonl", 2),
                                             _train_done),
    "the state file": (lambda c: _train(c, Path("run")), ("run/checkpoints/state.safetensors", 1), _train_done),
    "the exported embedding": (lambda c: _train(c, Path("run")), ("run/learned_embeds.safetensors", 1), _train_done),
    "run.json": (lambda c: _train(c, Path("run")), ("run/run.json", 1), _train_done),
    "a sample PNG": (_render, (f"{MANIFEST.parent}/dreambooth/000_1.png", 1), _sample_manifest_done),
    "the sample manifest": (_render, (str(MANIFEST), 1), _sample_manifest_done),
    "a table": (_table_job, ("results/default/tables/per_subject.parquet", 1), _tables_done),
}


@pytest.mark.parametrize("case", list(CLOCK_AND_DISK_CASES))
def test_future_dates_and_full_disks_cost_no_finished_result(ctx, caplog, case):
    act, full, done = CLOCK_AND_DISK_CASES[case]
    if full is None:
        with caplog.at_level(logging.WARNING, logger="dti.io"):
            act(ctx)
        future = [r.getMessage() for r in caplog.records if "ahead of this machine's clock" in r.getMessage()]
        assert len(future) == (case.startswith("a score file")) and all("\n" not in m for m in future)
        assert all("results/sd/dti/toy/scores/step-2.parquet was dated" in m for m in future)
        return
    path, nth = full
    with _full_disk(Path(path).name, nth), pytest.raises(DtiError) as err:
        act(ctx)
    assert _one_line(err) == f"cannot write {path}: {NO_SPACE}"
    written = [p for p in ctx["work"].rglob("*") if p.is_file()]
    assert not [p for p in written if p.name.endswith(".tmp")]  # no temporary file left
    assert not [p for p in written if p.stat().st_size == 0]  # nothing empty that looks finished
    if Path(path).name == "train_log.jsonl" and Path(path).exists():  # whole lines only
        assert [json.loads(line)["step"] for line in Path(path).read_text().splitlines()] == list(range(1, nth))
    else:
        assert not Path(path).exists()
    act(ctx)  # the space is freed: the same call again completes
    done(ctx)
