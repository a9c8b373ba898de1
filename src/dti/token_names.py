"""Placeholder names and token counts, without torch: planning (dti.text_windows) uses them, and
importing torch would cost a Snakemake plan seconds. dti.tokens re-exports them beside the embedding code."""

from __future__ import annotations

ZERO_PAD = "<zero-pad>"  # the padding token of zero-pad training: an all-zero row, never trained


def normalize_placeholder(placeholder: str) -> str:
    """The placeholder in lower case, as every file and prompt writes it. CLIP's tokenizers lower-case a
    prompt before matching added tokens, and diffusers expands a multi-vector token into its k tokens only
    where the prompt's tokens equal the file's key: a key with capitals ("<Bear>") would get its first
    vector only."""
    return placeholder.lower()


def token_count(tokenizer, text: str) -> int:
    """How many tokens the text encoder would be given for `text` if nothing were cut: its pieces with the
    tokenizer's special tokens (CLIP's start and end, Gemma's start, T5's end). Tokenizers cut a prompt at
    the encoder's window with a mere warning, so callers compare this with the window first."""
    return len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])


def short_text(text: str, limit: int = 60) -> str:
    """`text` quoted for a one-line message, cut after `limit` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def placeholder_tokens(placeholder: str, k: int) -> list[str]:
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, k)]
