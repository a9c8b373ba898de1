"""Training survives what happens to its files: a crash at any write point, broken or foreign intermediate
files, crafted pickles, and diverging optimization. Every run here is in-process on the tiny SD model.

Reference: one uninterrupted run; every interrupted-then-rerun folder must end byte-identical to it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import fast_settings
from safetensors.torch import save_file

from dti import train as train_module
from dti.backbones.catalog import load_backbone, write_tiny_model
from dti.methods import get_method, trainable_methods
from dti.model_files import weights_identity
from dti.state import read_state, save_state
from dti.train import TrainingDiverged, train

# Three steps, state saved at steps 2 and 3: a crash can fall before any state, between saves, or after.
SETTINGS = dict(steps=3, save_every=2, batch_size=1, beta=0.5, kappa=0.01)  # beta > 0: RSGD carries state
FINAL = ("learned_embeds.safetensors", "learned_embeds-steps-2.safetensors", "learned_embeds-steps-3.safetensors",
         "train_log.jsonl", "checkpoints/state.safetensors")  # and the single file, {method}-{placeholder}


class Crash(BaseException):
    """Stands for kill -9: not an Exception, so nothing on the way handles it."""


@pytest.fixture(scope="module")
def pristine(tiny_sd):
    return load_backbone(str(tiny_sd))


@pytest.fixture(scope="module")
def images(subject_images):
    return subject_images[:2]  # two photos are enough here, and encode in half the time


def _fresh(pristine):
    """A backbone to train: training changes only the tokenizers and text encoders, so only they are copied
    (the frozen UNet and VAE are shared, which saves a third of each run here)."""
    backbone = copy.copy(pristine)
    backbone.components = {name: copy.deepcopy(c) if name.startswith(("tokenizer", "text_encoder")) else c
                           for name, c in pristine.components.items()}
    backbone.slots, backbone._pipe = backbone.make_slots(), None
    return backbone


def _run(pristine, images, out: Path, **overrides) -> dict:
    settings = fast_settings(**{**SETTINGS, **overrides})
    return train(_fresh(pristine), images, settings, out, progress=False)


def _assert_same_result(out: Path, reference: Path, names=FINAL) -> None:
    single = [f"{json.loads((out / 'run.json').read_text())['method']}-subject.safetensors"]
    # an adapter method's folders (dti.adapters): the final one and each checkpoint's, file by file
    adapters = sorted(str(p.relative_to(reference)) for p in reference.glob("adapter*/*"))
    assert adapters == sorted(str(p.relative_to(out)) for p in out.glob("adapter*/*"))
    for name in (*names, *single, *adapters):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    run, ref = (json.loads((d / "run.json").read_text()) for d in (out, reference))
    for varying in ("seconds", "resumed_from"):
        run.pop(varying), ref.pop(varying)
    assert run == ref


WRITE_POINTS = pytest.StashKey[dict]()


@pytest.fixture(scope="module")
def reference(pristine, images, tmp_path_factory, request) -> Path:
    """The uninterrupted run; it also counts its write points (atomic renames into it, log lines)."""
    out = tmp_path_factory.mktemp("reference")
    counts = {"replace": 0, "log_line": 0}
    real_replace, real_append = os.replace, train_module._append

    def counting_replace(src, dst):
        counts["replace"] += Path(dst).is_relative_to(out)
        return real_replace(src, dst)

    def counting_append(log_file, path, record):
        counts["log_line"] += 1
        return real_append(log_file, path, record)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", counting_replace)
        mp.setattr(train_module, "_append", counting_append)
        _run(pristine, images, out)
    request.config.stash[WRITE_POINTS] = counts
    return out


@pytest.fixture
def crash_at(monkeypatch):
    """crash_at(out, replace=k) stops the run just before its k-th atomic rename into `out` (the temporary
    file left behind, as a kill leaves it); crash_at(out, log_line=k) tears the k-th log line in half."""
    real_replace, real_append = os.replace, train_module._append

    def arm(out: Path, *, replace: int | None = None, log_line: int | None = None) -> dict:
        counts = {"replace": 0, "log_line": 0}

        def fake_replace(src, dst):
            if Path(dst).is_relative_to(out):
                counts["replace"] += 1
                if counts["replace"] == replace:
                    os.link(src, Path(src).with_suffix(".killed"))  # what a kill would leave behind
                    raise Crash
            return real_replace(src, dst)

        def fake_append(log_file, path, record):
            counts["log_line"] += 1
            if counts["log_line"] == log_line:
                line = json.dumps(record) + "\n"
                log_file.write(line[: len(line) // 2])
                log_file.flush()
                raise Crash
            return real_append(log_file, path, record)

        monkeypatch.setattr(os, "replace", fake_replace)
        monkeypatch.setattr(train_module, "_append", fake_append)
        return counts  # how far the armed run got

    yield arm
    monkeypatch.undo()


def test_a_crash_at_every_write_point_reruns_to_the_identical_result(pristine, images, reference, tmp_path,
                                                                     crash_at, monkeypatch, request):
    counts = request.config.stash[WRITE_POINTS]
    points = [("replace", k) for k in range(1, counts["replace"] + 1)]
    points += [("log_line", k) for k in range(1, counts["log_line"] + 1)]
    assert counts["log_line"] == SETTINGS["steps"] and counts["replace"] >= 7  # 2 saves x 2 files + 3 final files
    for kind, k in points:
        out = tmp_path / f"{kind}-{k}"
        crash_at(out, **{kind: k})
        with pytest.raises(Crash):
            _run(pristine, images, out)
        monkeypatch.undo()
        _run(pristine, images, out)
        _assert_same_result(out, reference)


def _method_settings(name: str) -> dict:
    """SETTINGS for method `name`: RSGD's beta > 0 and a prior where it takes them, else its defaults; CoRe's
    norm hold over steps 2-3, across the resume after step 2."""
    accepts = get_method(name).accepts
    hold = {"rescale_from": 1, "rescale_until": 3} if "rescale_from" in accepts else {}
    return {"method": name, **hold,
            **{k: (v if k in accepts else None) for k, v in SETTINGS.items() if k in ("beta", "kappa")}}


@pytest.mark.parametrize("method", trainable_methods())
def test_every_method_resumes_to_the_identical_result(pristine, images, tmp_path, crash_at, monkeypatch, method,
                                                       first_stage):
    """Every registered method's state (its trained tensors, its optimizer's own state: RSGD's averages,
    AdamW's moments and tensor step count, a trained m, an adapter or a whole denoiser) goes through the
    state file and resumes byte-identically after a kill between its two saves."""
    settings = {**_method_settings(method), **first_stage(method)}
    _run(pristine, images, tmp_path / "straight", **settings)
    crash_at(tmp_path / "resumed", log_line=3)
    with pytest.raises(Crash):
        _run(pristine, images, tmp_path / "resumed", **settings)
    monkeypatch.undo()
    assert _run(pristine, images, tmp_path / "resumed", **settings)["resumed_from"] == 2
    _assert_same_result(tmp_path / "resumed", tmp_path / "straight")


# --- class 1: no pickle --------------------------------------------------------------------------------
class _Exploit:
    """Unpickling this creates a file: the harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["state.safetensors", "state.pt"])
def test_a_crafted_pickle_in_the_output_folder_never_runs(pristine, images, reference, tmp_path, caplog,
                                                          name):
    marker = tmp_path / "exploited"
    payload = pickle.dumps(_Exploit(marker))
    pickle.loads(payload)  # the payload is live: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / name).write_bytes(payload)
    with caplog.at_level(logging.WARNING):
        run = _run(pristine, images, out)
    assert not marker.exists()
    assert run["resumed_from"] == 0
    assert str(out / "checkpoints" / name) in caplog.text
    _assert_same_result(out, reference)
    assert not (out / "checkpoints" / "state.pt").exists()
    for path in out.rglob("*"):  # nothing written is a pickle (protocol 2+ starts with 0x80)
        assert path.is_dir() or not path.read_bytes().startswith(b"\x80"), path


# --- class 3: broken intermediate files ------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(pristine, images, tmp_path_factory) -> Path:
    """A run killed while writing step 3's log line: state of step 2, two whole log lines and a torn one."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as mp:
        real = train_module._append

        def tear_third(log_file, path, record):
            if record["step"] == 3:
                log_file.write(json.dumps(record)[:20])
                raise Crash
            real(log_file, path, record)

        mp.setattr(train_module, "_append", tear_third)
        with pytest.raises(Crash):
            _run(pristine, images, out)
    assert read_state(out / "checkpoints" / "state.safetensors").step == 2
    return out


def _reshaped_rows(state_path: Path) -> None:
    state = read_state(state_path)
    state.parameters = {name: torch.zeros(t.shape[0], t.shape[1] + 1) for name, t in state.parameters.items()}
    save_state(state_path, state)


def _step_beyond(state_path: Path) -> None:
    state = read_state(state_path)
    state.step = 99
    save_state(state_path, state)


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


STATE = "checkpoints/state.safetensors"
BROKEN = {  # case: (file, damage, resumed from)
    "torn last log line": (None, None, 2),
    "truncated state": (STATE, _cut_in_half, 0),
    "garbage state": (STATE, lambda p: p.write_bytes(os.urandom(4096)), 0),
    "empty state": (STATE, lambda p: p.write_bytes(b""), 0),
    "state of other shapes": (STATE, _reshaped_rows, 0),
    "state beyond the last step": (STATE, _step_beyond, 0),
    "tensors without metadata": (STATE, lambda p: save_file({"param.clip_l.rows": torch.zeros(1, 32)}, str(p)), 0),
    "log missing": ("train_log.jsonl", lambda p: p.unlink(), 0),
    "log garbled before the saved step": ("train_log.jsonl",
                                          lambda p: p.write_bytes(b"\xff\xfe{not json\n" + p.read_bytes()), 0),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_intermediate_file_never_blocks_the_rerun(pristine, images, reference, interrupted,
                                                           tmp_path, caplog, case):
    name, damage, resumed_from = BROKEN[case]
    out = shutil.copytree(interrupted, tmp_path / "run")
    if damage is not None:
        damage(out / name)
    with caplog.at_level(logging.WARNING):
        run = _run(pristine, images, out)
    assert run["resumed_from"] == resumed_from
    _assert_same_result(out, reference)
    if resumed_from == 0:  # said in one line, naming the file
        (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert str(out / name) in message and "\n" not in message


# --- class 4: resume only into identical inputs -----------------------------------------------------------
def test_a_rebuilt_model_at_the_same_path_is_not_resumed_into(images, tmp_path, caplog):
    model = write_tiny_model("sd", tmp_path / "model", seed=0)
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        real = train_module._append

        def stop_at_3(log_file, path, record):
            real(log_file, path, record)
            if record["step"] == 3:
                raise Crash

        mp.setattr(train_module, "_append", stop_at_3)
        with pytest.raises(Crash):
            train(load_backbone(str(model)), images, fast_settings(**SETTINGS), out, progress=False)
    write_tiny_model("sd", model, seed=1)  # same path, same architecture and file layout, other weights
    with caplog.at_level(logging.WARNING):
        run = train(load_backbone(str(model)), images, fast_settings(**SETTINGS), out, progress=False)
    assert run["resumed_from"] == 0
    assert "model weights" in caplog.text


def test_other_images_are_not_resumed_into(pristine, images, interrupted, tmp_path):
    out = shutil.copytree(interrupted, tmp_path / "run")
    mirrored = [img.transpose(0) for img in images]
    assert _run(pristine, mirrored, out)["resumed_from"] == 0


def test_weights_identity_sees_new_weights_under_the_same_header_size_and_time(tiny_sd, tmp_path):
    model = shutil.copytree(tiny_sd, tmp_path / "model")
    before = weights_identity(str(model))
    assert before == weights_identity(str(model))  # stable
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    stat, blob = weights.stat(), weights.read_bytes()
    body = 8 + int.from_bytes(blob[:8], "little")  # the same header; every byte of every tensor changed
    weights.write_bytes(blob[:body] + bytes(b ^ 1 for b in blob[body:]))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = weights_identity(str(model))
    key = "unet/diffusion_pytorch_model.safetensors"
    assert after[key][:2] == before[key][:2]  # same size and modification time: only the content tells
    assert after != before


# --- class 5: no silent wrong result -------------------------------------------------------------------
def _nan_loss_at(step):
    real = train_module.Trainer.loss_for

    def loss_for(self, s, indices):
        loss = real(self, s, indices)
        return loss * float("nan") if s == step else loss

    return loss_for


def _zero_rows_at(step):
    real = train_module.Trainer.train_step

    def train_step(self):
        if self.step + 1 == step:
            self.optimizer.step = lambda: [layer.rows.data.zero_() for layer in self.layers.values()]
        return real(self)

    return train_step


@pytest.mark.parametrize("method", ["dti", "ti", "crossinit"])
@pytest.mark.parametrize("fault", ["nan loss", "collapsed vector"])
def test_training_stops_at_the_first_bad_step_naming_it(pristine, images, tmp_path, monkeypatch, method,
                                                        fault):
    if fault == "nan loss":
        monkeypatch.setattr(train_module.Trainer, "loss_for", _nan_loss_at(3))
    else:
        monkeypatch.setattr(train_module.Trainer, "train_step", _zero_rows_at(3))
    hp = SETTINGS if method == "dti" else {**SETTINGS, "beta": None, "kappa": None}
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="at step 3") as err:
        train(_fresh(pristine), images, fast_settings(**{**hp, "method": method}), out, progress=False)
    assert ("nan" if fault == "nan loss" else "collapsed") in str(err.value)
    logged = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2]
    assert read_state(out / "checkpoints" / "state.safetensors").step == 2  # the last good state stays
    assert not (out / "run.json").exists() and not (out / "learned_embeds.safetensors").exists()


@pytest.mark.parametrize(("overrides", "needle"), [
    (dict(method="dti", lr=1e30), "at step 1"),  # the step overflows the norm: a zero vector
    (dict(method="ti", lr=1e30, beta=None, kappa=None), "the loss is nan"),
    (dict(method="dti", magnitude=1e-50), "before the first step"),  # m below fp32: a zero vector from the start
])
def test_real_divergence_stops_with_a_message(pristine, images, tmp_path, overrides, needle):
    with pytest.raises(TrainingDiverged, match=needle):
        _run(pristine, images, tmp_path / "run", **overrides)
    assert not (tmp_path / "run" / "run.json").exists()
