"""Placeholder tokens: new vocabulary rows that train while the original vocabulary stays frozen.

The text encoder's token embedding is swapped for a `PlaceholderEmbedding` that keeps the original
table untouched (no resize, no copy-back after each step) and looks new ids up in a small fp32 table.
For DTI that table holds unit directions v and the embedding is m * v; for TI/CrossInit it holds raw
vectors. Either way the trainable parameters and their optimizer state stay fp32 under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dti.errors import DtiError
from dti.token_names import ZERO_PAD, placeholder_tokens

MAGNITUDE_STATS = ("mean", "min", "max")


class PlaceholderEmbedding(nn.Module):
    """Frozen vocabulary rows plus `rows` (trainable, fp32) for the placeholder ids first_id, first_id+1, ..."""

    def __init__(self, frozen: nn.Embedding, init_rows: torch.Tensor, magnitude: float | None,
                 first_id: int | None = None):
        super().__init__()
        self.frozen = frozen.requires_grad_(False)
        self.vocab_size = frozen.num_embeddings
        self.first_id = self.vocab_size if first_id is None else int(first_id)
        if self.first_id < self.vocab_size:
            raise ValueError(f"placeholder ids start at {self.first_id}, inside the vocabulary ({self.vocab_size})")
        self.rows = nn.Parameter(init_rows.detach().float().clone())
        # DTI: `rows` are directions and the embedding is magnitude * rows; None means raw vectors.
        self.magnitude = magnitude
        # Tables that scale what they look up (Gemma's multiplies every row by sqrt(hidden size)) scale
        # the new rows the same way, so a placeholder row and a vocabulary row of equal norm enter the
        # model alike: norms and m are those of the table's rows, before the scale.
        self.output_scale = getattr(frozen, "embed_scale", None)
        self.zero_rows = 0  # constant all-zero rows after `rows` (zero-pad tokens): looked up, never trained

    @property
    def weight(self) -> torch.Tensor:
        """The full table (frozen rows + current new rows); read-only view for inspection."""
        return torch.cat([self.frozen.weight, self._lookup_rows().to(self.frozen.weight.dtype)])

    @property
    def num_embeddings(self) -> int:
        return self.first_id + self.rows.shape[0] + self.zero_rows

    @property
    def embedding_dim(self) -> int:
        return self.frozen.embedding_dim

    @property
    def embed_scale(self):
        """The factor applied to looked-up rows (None: none), so a layer installed over this one scales alike."""
        return self.output_scale

    def embedding_rows(self) -> torch.Tensor:
        return self.rows if self.magnitude is None else self.magnitude * self.rows

    def _lookup_rows(self) -> torch.Tensor:
        rows = self.embedding_rows()
        return torch.cat([rows, rows.new_zeros(self.zero_rows, rows.shape[1])]) if self.zero_rows else rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_new = ids >= self.vocab_size
        base = self.frozen(ids.clamp(max=self.vocab_size - 1))
        if not bool(is_new.any()):
            return base
        offset = ids - self.first_id
        rows = self._lookup_rows()
        if bool(((offset < 0) | (offset >= rows.shape[0]))[is_new].any()):
            raise ValueError("prompt uses added tokens that have no rows in this embedding")
        new = rows[offset.clamp(0, rows.shape[0] - 1)].to(base.dtype)
        if self.output_scale is not None:
            new = new * self.output_scale.to(base.dtype)
        return torch.where(is_new.unsqueeze(-1), new, base)


@dataclass
class Placeholder:
    """The k tokens that stand for one subject in one text encoder."""

    slot: str  # clip_l / clip_g
    tokens: list[str]
    token_ids: list[int]
    init_ids: list[int]

    @property
    def text(self) -> str:
        """What to write in a prompt: all k tokens, space-separated (as diffusers expands them)."""
        return " ".join(self.tokens)


def initializer_ids(tokenizer, initializer: str) -> list[int]:
    ids = tokenizer.encode(initializer, add_special_tokens=False)
    if not ids:
        raise DtiError(f"initializer {initializer!r} has no tokens; give a word such as the subject's class noun")
    unk = tokenizer.unk_token_id
    # CLIP names its end-of-text token as unknown too, but its byte-level pieces cover any text.
    if unk is not None and unk in ids and unk != tokenizer.eos_token_id:
        words = [w for w in initializer.split() if unk in tokenizer.encode(w, add_special_tokens=False)]
        raise DtiError(f"initializer {initializer!r}: the tokenizer cannot split {' '.join(words) or initializer!r} "
                       f"into known pieces (it becomes {tokenizer.unk_token}); choose another word")
    return ids


def add_placeholder(tokenizer, slot: str, placeholder: str, initializer: str) -> Placeholder:
    """Add `placeholder` (k tokens for an initializer of k pieces) to the tokenizer."""
    if not placeholder.strip() or any(c.isspace() for c in placeholder):
        raise DtiError(f"placeholder {placeholder!r} must be one word without spaces, e.g. '<sks>'")
    init = initializer_ids(tokenizer, initializer)
    tokens = placeholder_tokens(placeholder, len(init))
    vocab = tokenizer.get_vocab()
    clash = [t for t in tokens if t in vocab or t + "</w>" in vocab]
    if clash:
        raise DtiError(f"placeholder {placeholder!r} is already in the {slot} vocabulary ({clash}); choose a new "
                       "string such as '<my-subject>'")
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise DtiError(f"could not add placeholder tokens {tokens} to the {slot} tokenizer")
    return Placeholder(slot, tokens, tokenizer.convert_tokens_to_ids(tokens), init)


def vocab_norms(table: torch.Tensor) -> torch.Tensor:
    """L2 norms of the non-zero rows (zero rows are unused ids that would drag statistics down)."""
    norms = table.detach().float().norm(dim=-1)
    return norms[norms > 0]


def vocab_norm_stats(table: torch.Tensor) -> dict[str, float]:
    norms = vocab_norms(table)
    return {"mean": norms.mean().item(), "std": norms.std().item(), "min": norms.min().item(),
            "max": norms.max().item()}


def resolve_magnitude(table: torch.Tensor, magnitude: str | float) -> float:
    """m from the vocabulary norms (mean/min/max) or an explicit positive number."""
    if isinstance(magnitude, str) and magnitude not in MAGNITUDE_STATS:
        try:
            magnitude = float(magnitude)
        except ValueError:
            raise DtiError(f"magnitude must be one of {MAGNITUDE_STATS} or a positive number, got {magnitude!r}") \
                from None
    if isinstance(magnitude, str):
        return vocab_norm_stats(table)[magnitude]
    if not (magnitude > 0 and math.isfinite(magnitude)):
        raise DtiError(f"magnitude must be a positive finite number, got {magnitude}")
    return float(magnitude)


def install(encoder: nn.Module, placeholder: Placeholder, init_rows: torch.Tensor,
            magnitude: float | None) -> PlaceholderEmbedding:
    """Swap the encoder's token embedding for a PlaceholderEmbedding with the placeholder's new rows."""
    frozen = encoder.get_input_embeddings()
    if isinstance(frozen, PlaceholderEmbedding):
        raise DtiError("this text encoder already has placeholder rows installed")
    ids = placeholder.token_ids
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise DtiError(f"placeholder tokens {placeholder.tokens} did not get consecutive ids: {ids}")
    layer = PlaceholderEmbedding(frozen, init_rows.to(frozen.weight.device), magnitude, first_id=ids[0])
    encoder.set_input_embeddings(layer)
    return layer


def add_zero_pad(tokenizer, layer: PlaceholderEmbedding, slot: str) -> None:
    """Add ZERO_PAD to the tokenizer as an all-zero row of `layer`, right after its placeholder rows."""
    if ZERO_PAD in tokenizer.get_vocab():
        raise DtiError(f"the {slot} tokenizer already has a {ZERO_PAD} token")
    if tokenizer.add_tokens([ZERO_PAD]) != 1 or tokenizer.convert_tokens_to_ids(ZERO_PAD) != layer.num_embeddings:
        raise DtiError(f"could not add {ZERO_PAD} to the {slot} tokenizer right after the placeholder's tokens")
    layer.zero_rows += 1


def install_rows(tokenizer, encoder: nn.Module, placeholder: str, rows: torch.Tensor) -> tuple[str, ...]:
    """Make saved rows usable in prompts: add the placeholder's k tokens to the tokenizer and look them up
    from `rows` (frozen) in the encoder, exactly as training did; returns the tokens. The loader of the
    families diffusers' `load_textual_inversion` does not know (SANA, Wan)."""
    rows = rows.detach().float().reshape(-1, rows.shape[-1])
    tokens = placeholder_tokens(placeholder, rows.shape[0])
    vocab = tokenizer.get_vocab()
    clash = [t for t in tokens if t in vocab]
    if clash:
        raise DtiError(f"placeholder {placeholder!r} is already in the tokenizer's vocabulary ({clash})")
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise DtiError(f"could not add placeholder tokens {tokens} to the tokenizer")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise DtiError(f"placeholder tokens {tokens} did not get consecutive ids: {ids}")
    # Over whatever table the encoder has, a previously installed token's included (as diffusers' loader
    # lets one pipeline hold several tokens).
    frozen = encoder.get_input_embeddings()
    layer = PlaceholderEmbedding(frozen, rows.to(frozen.weight.device), magnitude=None, first_id=ids[0])
    encoder.set_input_embeddings(layer.requires_grad_(False))
    return tuple(tokens)


def token_init(table: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Initial vectors: the vocabulary rows of the initializer pieces (fp32)."""
    return table[torch.tensor(ids, device=table.device)].detach().float().clone()


@torch.no_grad()
def contextual_init(encoder: nn.Module, tokenizer, initializer: str, device, max_length: int | None = None
                    ) -> torch.Tensor:
    """CrossInit's start: the encoder's final-layer output (after the final layer norm) at the
    initializer's token positions, with the phrase encoded alone like a prompt (special tokens, padding to
    the prompts' length `max_length`, default the tokenizer's model_max_length, attention mask)."""
    ids = initializer_ids(tokenizer, initializer)
    batch = tokenizer([initializer], padding="max_length", max_length=max_length or tokenizer.model_max_length,
                      truncation=True, return_tensors="pt")
    sequence = batch.input_ids[0].tolist()
    start = next((i for i in range(len(sequence) - len(ids) + 1) if sequence[i : i + len(ids)] == ids), None)
    if start is None:  # a tokenizer that splits the phrase differently inside a prompt
        raise DtiError(f"initializer {initializer!r}: its pieces {ids} are not found in its own encoding {sequence}")
    mask = batch.get("attention_mask")
    hidden = encoder(batch.input_ids.to(device),
                     attention_mask=None if mask is None else mask.to(device)).last_hidden_state[0]
    return hidden[start : start + len(ids)].float().clone()
