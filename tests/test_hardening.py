"""Hostile input, one table per class of weakness:

- untrusted text on the terminal: what a file says (metadata, tensor names, its own name) is printed with
  control and format characters escaped (dti.terminal.visible), each value capped, one line per line;
- hostile sizes: a safetensors header is checked against the file before any tensor is read, so a small
  file declaring a gigabyte tensor allocates nothing;
- what counts as a photo: JPEG, PNG or WebP by their bytes, whatever the name, no other Pillow plugin (the
  EPS one runs Ghostscript); wide grey data mapped by its own range, never saturated;
- command-line ranges: every numeric flag declares one, and a value outside it is one line naming the flag.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import subprocess
import tracemalloc
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image
from safetensors.torch import save_file

from dti.cli import Bounded, HyperParameterFlag, build_parser, main
from dti.errors import DtiError
from dti.images import load_image, to_rgb
from dti.inspect import MAX_VECTORS, MAX_WIDTH, read_embedding_file
from dti.methods import HYPER_PARAMETERS
from dti.terminal import visible


def _write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


# --- class 2: untrusted text on the terminal --------------------------------------------------------------
def _hidden(text: str) -> list[str]:
    """Characters a terminal would act on instead of showing (line breaks between lines aside)."""
    return [c for c in text.replace("\n", "") if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


ROW = torch.randn(1, 768, generator=torch.Generator().manual_seed(0))
MEGABYTE = "a" * 1_000_000
TERMINAL_CASES = {  # case: (file name, tensors, metadata, extra argv, what must be printed)
    "newline in a metadata value": ("e.safetensors", {"<x>": ROW}, {"dti.method": "dti\n  layout: forged"}, [],
                                    "method=dti\\x0a  layout: forged"),
    "ESC[2J clears the screen": ("e.safetensors", {"<x>": ROW}, {"dti.method": "\x1b[2J\x1b[H"}, [],
                                 "method=\\x1b[2J\\x1b[H"),
    "OSC sets the window title": ("e.safetensors", {"<x>": ROW}, {"dti.base_model": "\x1b]0;owned\x07"}, [],
                                  "base_model=\\x1b]0;owned\\x07"),
    "C1 CSI and NEL": ("e.safetensors", {"<x>": ROW}, {"dti.steps": "\x9b2J\x85forged"}, [], "steps=\\x9b2J\\x85forged"),
    "bidi override in the token": ("e.safetensors", {"<cat\u202egnp.exe>": ROW}, None, [], "<cat\\u202egnp.exe>"),
    "bidi isolate and zero width": ("e.safetensors", {"<a\u2066b\u200bc\u2069>": ROW}, None, [],
                                    "<a\\u2066b\\u200bc\\u2069>"),
    "line separator in metadata": ("e.safetensors", {"<x>": ROW}, {"dti.kappa": "1\u2028forged"}, [],
                                   "kappa=1\\u2028forged"),
    "a 1 MB metadata value is capped": ("e.safetensors", {"<x>": ROW}, {"dti.base_model": MEGABYTE}, [],
                                        "a" * 200 + "… (999800 more characters)"),
    "newline in a tensor key": ("e.safetensors", {"<x>\n  loads in: forged": ROW}, None, [],
                                "token '<x>\\x0a  loads in: forged'"),
    "escape in the file name": ("\x1b[31mred.safetensors", {"<x>": ROW}, None, [], "\\x1b[31mred.safetensors"),
    "JSON keeps the value, escaped by JSON": ("e.safetensors", {"<x>\x1b": ROW}, {"dti.method": "\x1b]0;t\x07\n"},
                                              ["--json"], "\\u001b]0;t\\u0007\\n"),
    "error naming a file with a newline": ("bad\n  forged.safetensors", None, None, [], "bad\\x0a  forged.safetensors"),
}


def _clean(text: str) -> str:
    return "".join("x" if _hidden(c) or c == "\n" else c for c in text)


@pytest.mark.parametrize("case", list(TERMINAL_CASES))
def test_text_from_files_prints_escaped_one_line_each(tmp_path, capsys, case):
    name, tensors, metadata, extra, needle = TERMINAL_CASES[case]
    path = tmp_path / name
    if tensors is None:
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    else:
        _write(path, tensors, metadata)
    code = main(["inspect", str(path), *extra])
    out, err = capsys.readouterr()
    printed = err if code else out
    assert _hidden(printed) == [], case
    assert needle in printed
    assert len(printed) < 5000  # the megabyte stayed in the file
    if code:  # an error: one line, naming the file
        assert code == 2 and printed.startswith("dti: error: ") and printed.count("\n") == 1
    elif "--json" in extra:  # JSON escapes by itself, and keeps the value whole
        info = json.loads(printed)
        assert info["metadata"] == metadata and info["token"] == next(iter(tensors))
    else:  # as many lines as the same file without the hostile characters
        twin = _write(tmp_path / "twin.safetensors", {_clean(k): v for k, v in tensors.items()},
                      {k: _clean(v) for k, v in (metadata or {}).items()} or None)
        assert main(["inspect", str(twin)]) == 0
        assert printed.count("\n") == capsys.readouterr().out.count("\n")
        assert visible(printed) == printed.replace("\n", "\\x0a")  # nothing left to escape but line breaks


# --- class 3: hostile sizes in a safetensors header -------------------------------------------------------
def _safetensors(path: Path, header: dict, data: bytes = b"", *, length: int | None = None,
                 sparse: bool = False) -> Path:
    """A safetensors file written by hand: `length` overrides the header length; `sparse` makes the file
    as long as its header says, a valid file of zeros that takes no disk space."""
    raw = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
        if sparse:
            handle.truncate(8 + len(raw) + max(entry["data_offsets"][1] for entry in header.values()))
    return path


def _f32(key: str, shape: list[int], begin: int = 0, end: int | None = None) -> dict:
    return {key: {"dtype": "F32", "shape": shape,
                  "data_offsets": [begin, begin + 4 * math.prod(shape) if end is None else end]}}


REAL = np.arange(2 * 1280, dtype=np.float32).reshape(2, 1280) / 1000
GIGABYTE = [250_000, 1024]  # 1 GB of float32
SIZE_CASES = {  # case: (build(tmp) -> path, None if it reads, else what the one-line error says)
    "[1_000_000, 768] float32 declared in a 1 KB file": (
        lambda t: _safetensors(t / "e.safetensors", _f32("emb_params", [1_000_000, 768]), bytes(900)),
        "tensor 'emb_params' declares shape [1000000, 768] (F32)"),
    "a sparse file really 1 GB long declaring 1 GB": (  # the offsets fit: only the shape bound refuses it
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", GIGABYTE), sparse=True),
        "declares shape [250000, 1024]"),
    "more vectors than any embedding": (
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", [MAX_VECTORS + 1, 8]), bytes(4 * 8 * 1025)),
        f"at most {MAX_VECTORS} vectors"),
    "wider than any encoder": (
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", [1, MAX_WIDTH + 1]), bytes(4 * (MAX_WIDTH + 1))),
        f"of width at most {MAX_WIDTH}"),
    "offsets past the end of the file": (
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", [1, 768]), bytes(100)),
        "declares bytes [0, 3072) of a data section of 100 bytes"),
    "header length larger than the file": (
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", [1, 4]), bytes(16), length=10_000),
        "its header declares 10000 bytes but the file has"),
    "header length beyond 100 MB": (
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", [1, 4]), bytes(16), length=2**40),
        "more than the 104857600 bytes read at most"),
    "byte range not dtype x shape": (
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", [2, 768], end=3072), bytes(3072)),
        "needs 6144 bytes but declares 3072"),
    "a negative dimension": (
        lambda t: _safetensors(t / "e.safetensors", {"<x>": {"dtype": "F32", "shape": [-1, 768],
                                                             "data_offsets": [0, 0]}}),
        "has no valid dtype, shape and data_offsets"),
    "an integer tensor": (
        lambda t: _safetensors(t / "e.safetensors", {"<x>": {"dtype": "I64", "shape": [1, 4],
                                                             "data_offsets": [0, 32]}}, bytes(32)),
        "tensor '<x>' is I64; an embedding is floating point"),
    "a real [2, 1280] tensor still reads": (
        lambda t: _safetensors(t / "e.safetensors", _f32("<x>", [2, 1280]), REAL.tobytes()), None),
    "a real SDXL pair still reads": (
        lambda t: _write(t / "e.safetensors", {"clip_l": torch.ones(2, 768), "clip_g": torch.ones(2, 1280)}), None),
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_declared_sizes_are_checked_before_anything_is_read(tmp_path, capsys, case):
    build, needle = SIZE_CASES[case]
    path = build(tmp_path)
    tracemalloc.start()
    try:
        if needle is None:
            emb = read_embedding_file(path)
        else:
            with pytest.raises(DtiError) as raised:
                read_embedding_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB allocated"
    if needle is None:
        rows = next(iter(emb.vectors.values()))
        if case.startswith("a real [2, 1280]"):
            np.testing.assert_array_equal(rows, REAL)
        assert main(["inspect", str(path)]) == 0
        return
    message = str(raised.value)
    assert str(path) in message and needle in message and "\n" not in message
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# --- class 7: what counts as a photo ----------------------------------------------------------------------
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
       b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


def _psd(width: int = 4, height: int = 4) -> bytes:
    """A minimal RGB Photoshop file (Pillow reads PSD, it does not write it)."""
    return (b"8BPS" + struct.pack(">H", 1) + bytes(6) + struct.pack(">HIIHH", 3, height, width, 8, 3)
            + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(3 * width * height))


def _as(fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, fmt, **options)
    return buffer.getvalue()


def _png16(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("I;16", values.shape[::-1], values.astype("<u2").tobytes()).save(buffer, "PNG")
    return buffer.getvalue()


RAMP = np.arange(32 * 32).reshape(32, 32)
RED = np.full((16, 16, 3), (200, 30, 30))
# case: (file name, its bytes or an in-memory image, the format Pillow alone would open it as, expected):
# expected is the decoded picture (uint8 grey or RGB, compared within 1), or an error type and what it says.
PHOTO_CASES = {
    "EPS named .png": ("x.png", EPS, "EPS", (DtiError, "not a JPEG, PNG or WebP file")),
    "TIFF named .jpg": ("x.jpg", _as("TIFF"), "TIFF", (DtiError, "not a JPEG, PNG or WebP file")),
    "GIF named .png": ("x.png", _as("GIF"), "GIF", (DtiError, "not a JPEG, PNG or WebP file")),
    "BMP named .png": ("x.png", _as("BMP"), "BMP", (DtiError, "not a JPEG, PNG or WebP file")),
    "PSD named .png": ("x.png", _psd(), "PSD", (DtiError, "not a JPEG, PNG or WebP file")),
    "ICO named .png": ("x.png", _as("ICO"), "ICO", (DtiError, "not a JPEG, PNG or WebP file")),
    "PPM named .webp": ("x.webp", _as("PPM"), "PPM", (DtiError, "not a JPEG, PNG or WebP file")),
    "WebP named .jpg is read": ("x.jpg", _as("WEBP", lossless=True), "WEBP", RED),
    "PNG named .jpeg is read": ("x.jpeg", _as("PNG"), "PNG", RED),
    "dim 16-bit PNG on the 16-bit scale": ("x.png", _png16(RAMP * 40), "PNG", np.rint(RAMP * 40 / 257)),
    "16-bit PNG of the full range": ("x.png", _png16(RAMP * 64 + 63), "PNG", np.rint((RAMP * 64 + 63) / 257)),
    "mode I beyond 16 bits is not clipped": (None, Image.fromarray((RAMP * 100).astype(np.int32)), None,
                                             np.rint(RAMP * 100 * 255 / (RAMP.max() * 100))),
    "mode F within 0..1 reads as 0..1": (None, Image.fromarray((RAMP / 2048).astype(np.float32)), None,
                                         np.rint(RAMP / 2048 * 255)),
    "mode F beyond 0..1 by its range": (None, Image.fromarray((RAMP / 64 - 4).astype(np.float32)), None,
                                        np.rint((RAMP / 64) * 255 / (RAMP.max() / 64))),
    "mode F with NaN is refused": (None, Image.fromarray(np.full((4, 4), np.nan, np.float32)), None,
                                   (ValueError, "NaN or infinite")),
}


@pytest.fixture
def ghostscript_calls(monkeypatch):
    """Every attempt to run Ghostscript (or any program) while a photo is read."""
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(("Ghostscript", a)))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(("Popen", a)))
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(("check_call", a)))
    return calls


@pytest.mark.parametrize("case", list(PHOTO_CASES))
def test_photos_are_jpeg_png_or_webp_by_their_bytes_and_keep_their_range(tmp_path, ghostscript_calls, case):
    name, data, real_format, expected = PHOTO_CASES[case]
    if name is None:  # a mode no photo format carries: what to_rgb makes of it in memory
        source, decode = data, to_rgb
    else:
        source, decode = tmp_path / name, load_image
        source.write_bytes(data)
        with Image.open(source) as unrestricted:  # the disguise is real: Pillow alone would take it as this
            assert unrestricted.format == real_format
    if isinstance(expected, tuple):
        error, needle = expected
        with pytest.raises(error) as raised:
            decode(source)
        message = str(raised.value)
        assert needle in message and "\n" not in message
        if name is not None:
            assert str(source) in message
    else:
        img = np.asarray(decode(source)).astype(int)
        want = expected if expected.ndim == 3 else np.repeat(expected[..., None], 3, axis=2)
        assert np.abs(img - want).max() <= 1, case
        if expected.ndim == 2 and "dim" not in case:  # contrast kept: the grey levels spread, none saturated
            assert len(np.unique(img)) > 120
    assert ghostscript_calls == []


# --- class 10: command-line ranges ------------------------------------------------------------------------
def _flags():
    """(subcommand, action) for every option of every `dti` subcommand."""
    (subparsers,) = [a for a in build_parser()._actions if a.dest == "command"]
    return [(name, action) for name, sub in subparsers.choices.items() for action in sub._actions
            if action.option_strings]


def test_every_numeric_flag_declares_its_range():
    numeric = []
    for command, action in _flags():
        flag = f"{command} {action.option_strings[0]}"
        plain_number = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
        if action.dest in HYPER_PARAMETERS:  # read by hp.parse, then checked against dti.methods' range
            assert isinstance(action, HyperParameterFlag), flag
            bad = [math.inf] * action.nargs if action.nargs else math.nan
            assert HYPER_PARAMETERS[action.dest].check(bad) is not None, flag
            numeric.append(flag)
            continue
        assert action.type not in (int, float), f"{flag}: a number with no range (use dti.cli.bounded)"
        assert not (plain_number and action.type is None and action.const is None), f"{flag}: a number read as text"
        if isinstance(action.type, Bounded):
            assert action.type.minimum is not None, flag
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(str(action.type.minimum - 1))
            if action.type.kind is float:
                for text in ("nan", "inf", "-inf"):
                    with pytest.raises(argparse.ArgumentTypeError):
                        action.type(text)
            if action.default is not None:  # the defaults sit in their own ranges
                for value in action.default if isinstance(action.default, list) else [action.default]:
                    assert action.type(str(value)) == value, flag
            numeric.append(flag)
    assert len(numeric) >= 14 + len(HYPER_PARAMETERS), numeric  # the enumeration saw the flags


_TRAIN = ["train", "--model", "m", "--images", "i", "--initializer", "dog", "--out", "o"]
_SAMPLE = ["sample", "--model", "m", "--embeds", "e", "--prompt", "a {}", "--out", "o"]
FLAG_CASES = {  # case: (argv, what the one line says)
    "inspect --top -1 (listed the whole vocabulary)": (["inspect", "f", "--top", "-1"],
                                                        "--top must be an integer in [1, 1000], got -1"),
    "inspect --top 0": (["inspect", "f", "--top", "0"], "--top must be an integer in [1, 1000], got 0"),
    "inspect --top a million": (["inspect", "f", "--top", "1000000"], "--top must be an integer in [1, 1000]"),
    "train --steps 0": ([*_TRAIN, "--steps", "0"], "--steps must be a positive integer, got 0"),
    "train --steps 1.5": ([*_TRAIN, "--steps", "1.5"], "--steps must be a positive integer, got '1.5'"),
    "train --batch-size 0": ([*_TRAIN, "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    "train --grad-accum -2": ([*_TRAIN, "--grad-accum", "-2"], "--grad-accum must be a positive integer, got -2"),
    "train --save-every 0": ([*_TRAIN, "--save-every", "0"], "--save-every must be a positive integer, got 0"),
    "train --seed -1": ([*_TRAIN, "--seed", "-1"], "--seed must be an integer in [0, 2^63), got -1"),
    "train --resolution 0": ([*_TRAIN, "--resolution", "0"], "--resolution must be an integer in [1, 4096], got 0"),
    "train --resolution 100000": ([*_TRAIN, "--resolution", "100000"], "--resolution must be an integer in [1, 4096]"),
    "train --lr inf": ([*_TRAIN, "--lr", "inf"], "--lr: lr must be a positive finite number, got inf"),
    "train --kappa nan": ([*_TRAIN, "--kappa", "nan"], "--kappa: kappa must be a finite number >= 0, got nan"),
    "train --adam-betas 0.9 1": ([*_TRAIN, "--adam-betas", "0.9", "1"], "adam_betas must be two numbers in [0, 1)"),
    "train --magnitude -1": ([*_TRAIN, "--magnitude", "-1"], "magnitude must be mean, min, max or a positive"),
    "sample --steps 0": ([*_SAMPLE, "--steps", "0"], "--steps must be a positive integer, got 0"),
    "sample --seeds -3": ([*_SAMPLE, "--seeds", "1", "-3"], "--seeds must be integers in [0, 2^63), got -3"),
    "sample --seeds 2^63": ([*_SAMPLE, "--seeds", str(2**63)], "--seeds must be integers in [0, 2^63)"),
    "sample --guidance-scale nan": ([*_SAMPLE, "--guidance-scale", "nan"],
                                    "--guidance-scale must be a finite number >= 0, got nan"),
    "sample --guidance-scale -1": ([*_SAMPLE, "--guidance-scale", "-1"], "--guidance-scale must be a finite number"),
    "sample --resolution 0": ([*_SAMPLE, "--resolution", "0"], "--resolution must be an integer in [1, 8192]"),
    "sample --width 100000": ([*_SAMPLE, "--width", "100000"], "--width must be an integer in [1, 8192]"),
    "sample --batch-size 0": ([*_SAMPLE, "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    "tiny-model --seed -5": (["tiny-model", "--family", "sd", "--out", "o", "--seed", "-5"], "--seed must be an"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_out_of_range_flags_exit_2_with_one_line_naming_them(tmp_path, monkeypatch, capsys, case):
    argv, needle = FLAG_CASES[case]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("dti: error: ") and err.count("\n") == 1
    assert needle in err
    assert list(tmp_path.iterdir()) == []  # refused before anything ran
