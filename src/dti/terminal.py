"""Text from files, made safe to print: one function, `visible`, used wherever such text reaches a terminal.

A safetensors file's metadata, its tensor names, a tokenizer's tokens and file names are chosen by whoever
made the file. Printed raw, a newline in one of them starts a forged line of a report, an escape sequence
(ESC [ ... for the cursor and colours, ESC ] ... BEL for the window title) drives the terminal, and a bidi
override (U+202E) shows the rest of a line reversed. `visible` writes every such character as an escape
you can read instead: control characters (C0, DEL, C1), format characters (bidi controls, zero-width
characters), line and paragraph separators, and lone surrogates (undecodable bytes of a file name, which
would otherwise make print() fail). Everything else, accented letters included, is left as it is.
"""

from __future__ import annotations

import unicodedata

LIMIT = 200  # characters of one value (a metadata value, a tensor name) shown at most
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # control, format, surrogate, line and paragraph separator


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: object, limit: int | None = None) -> str:
    """`text` (str() of it) with every control or format character written as a visible \\xNN, \\uNNNN or
    \\UNNNNNNNN escape, so that it prints as one line that only shows characters; with `limit`, at most
    that many of its characters followed by "… (N more characters)". Idempotent: its output has nothing
    left to escape."""
    text = str(text)
    more = 0
    if limit is not None and len(text) > limit:
        text, more = text[:limit], len(text) - limit
    if not text.isprintable():  # the fast path: isprintable() is False for every character escaped here
        text = "".join(_escape(c) if unicodedata.category(c) in _HIDDEN else c for c in text)
    return f"{text}… ({more} more characters)" if more else text
