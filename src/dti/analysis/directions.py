"""Semantic directions: where learned tokens and their initializer point among the vocabulary.

DTI fixes a token's norm at the vocabulary's mean m and learns only its direction; TI learns the raw vector,
whose norm grows far past the vocabulary's. Two views of the same token embeddings (a text encoder's input
token table, the space both methods train in) show what the direction carries:

- `direction_projection`: principal components of *unit directions* e/|e|. The axes are fit on the
  vocabulary's directions; a sample of vocabulary tokens and every learned vector (and the initializer's
  rows) are projected onto them. The norm is divided out on purpose: a TI token at 30 m and a DTI token at
  m that point the same way land on the same point.
- `nearest_words`: the k vocabulary tokens nearest each learned vector, by direction (cosine, the ranking
  `dti inspect` prints: dti.inspect.nearest_tokens) and by raw vector (Euclidean distance). For a token
  of in-distribution norm the two lists tend to agree; for an inflated one the raw-vector neighbours are
  whatever vocabulary rows have the largest norms in its half-space, not words of its meaning.

Library code only (numpy, pandas): no model is built; the vocabulary comes from dti.vocab.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from dti.errors import DtiError
from dti.vocab import Vocabulary, readable

VOCABULARY, TOKEN = "vocabulary", "token"  # the `kind` of a projected point
FIT_ON = ("vocabulary", "tokens")
BY = ("direction", "vector")
# Vocabulary points drawn for a figure: enough to show the cloud, few enough that the tokens stay visible.
DEFAULT_SAMPLE = 2000


class DirectionProjection(NamedTuple):
    """What `direction_projection` returns (a tuple: `points, ratios, *_ = ...` works too).

    points: one row per projected point, columns `kind` ("vocabulary" or "token"), `label` (the token's key in
    `tokens`, None for vocabulary rows), `vector` (row index within that token; None for vocabulary rows),
    `token_id` and `token` (vocabulary rows: id and readable text, when a tokenizer is given), `norm` (the
    raw vector's L2 norm, which the projection discards), `pc1`..`pcN` and `in_plane`: the share of the
    centred direction's squared length that the N components keep (1: the point is exactly where it is
    drawn; near 0: its direction is mostly orthogonal to the plane and its position says little).
    explained_variance_ratio: each component's share of the total variance of what the fit was on.
    components: [N, d] unit principal axes; mean: [d] the mean direction subtracted before projecting.
    fit_on: what the axes were fit on ("vocabulary" or "tokens"), for a caption to say.
    """

    points: pd.DataFrame
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    mean: np.ndarray
    fit_on: str = "vocabulary"


def _table(vocab_table) -> np.ndarray:
    """The vocabulary's token table [n, d] as float64 (a Vocabulary's table, or an array-like)."""
    table = vocab_table.table if isinstance(vocab_table, Vocabulary) else vocab_table
    table = _as_array(table)
    if table.ndim != 2 or table.shape[0] == 0:
        raise DtiError(f"the vocabulary table must be a non-empty [n, d] matrix, got shape {table.shape}")
    return table


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly bf16 or on a device
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def unit_directions(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, units): the non-zero rows of a token table and their unit directions. Zero rows are unused ids
    with no direction (dti.tokens.vocab_norms and dti.inspect.nearest_tokens drop them too)."""
    norms = np.linalg.norm(table, axis=1)
    ids = np.flatnonzero(norms > 0)
    return ids, table[ids] / norms[ids, None]


def _token_rows(label, rows, width: int) -> np.ndarray:
    """One token's rows as float64 [k, d]: checked to be finite, non-zero and as wide as the vocabulary."""
    array = _as_array(rows)
    array = array[None, :] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != width:
        raise DtiError(f"token {label!r}: expected rows of width {width} ([k, {width}] or [{width}]), "
                       f"got shape {tuple(np.shape(rows))}")
    if not np.isfinite(array).all():
        raise DtiError(f"token {label!r}: its rows hold NaN or infinite values")
    zero = np.flatnonzero(np.linalg.norm(array, axis=1) == 0)
    if zero.size:
        raise DtiError(f"token {label!r}: vector {int(zero[0])} is zero and has no direction")
    return array


def token_strings(tokenizer, size: int) -> list[str | None]:
    """The token string of each of the table's `size` ids, from a Vocabulary, a transformers tokenizer
    (convert_ids_to_tokens) or a sequence of strings in id order (Vocabulary.tokens, read_token_strings)."""
    if isinstance(tokenizer, Vocabulary):
        tokens = list(tokenizer.tokens)
    elif hasattr(tokenizer, "convert_ids_to_tokens"):
        tokens = list(tokenizer.convert_ids_to_tokens(list(range(size))))
    elif isinstance(tokenizer, Sequence) and not isinstance(tokenizer, str):
        tokens = list(tokenizer)
    else:
        raise DtiError(f"tokenizer: expected a Vocabulary, a tokenizer or a list of token strings, "
                       f"got {type(tokenizer).__name__}")
    if len(tokens) < size:
        raise DtiError(f"tokenizer: {len(tokens)} token strings for a vocabulary table of {size} rows")
    return tokens[:size]


def _positions(ids: np.ndarray, wanted, size: int) -> np.ndarray:
    """Where each of the vocabulary ids `wanted` sits among `ids` (the non-zero rows)."""
    wanted = np.asarray(list(wanted))
    if wanted.dtype.kind not in "iu":
        raise DtiError(f"include_ids: expected vocabulary ids (integers), got {wanted.tolist()!r}")
    at = np.searchsorted(ids, wanted)
    bad = [int(w) for w, a in zip(wanted, at, strict=True) if a >= len(ids) or ids[a] != w]
    if bad:
        raise DtiError(f"include_ids: {bad} are not non-zero rows of the {size}-row vocabulary table")
    return at


def _pca(units: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components [N, d], explained variance ratios [N]) of the rows of `units`, from the d x d
    covariance (cheaper than an SVD of the n x d rows for a 49k-token vocabulary). Each axis's sign is fixed
    so that its largest loading is positive: the same inputs always draw the same picture."""
    n = units.shape[0]
    mean = units.mean(axis=0)
    scatter = units.T @ units - n * np.outer(mean, mean)  # sum of (u - mean)(u - mean)^T
    values, vectors = np.linalg.eigh((scatter + scatter.T) / 2)
    order = np.argsort(values)[::-1][:n_components]
    values, components = np.clip(values[order], 0, None), vectors[:, order].T
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1, signs)[:, None]
    total = float(np.clip(np.trace(scatter), 0, None))
    return mean, components, values / total if total > 0 else np.zeros_like(values)


def _projected(units: np.ndarray, mean: np.ndarray, components: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [n, N], in_plane [n]) of unit directions on the principal axes."""
    centred = units - mean
    coords = centred @ components.T
    length = np.einsum("ij,ij->i", centred, centred)
    kept = np.einsum("ij,ij->i", coords, coords)
    with np.errstate(invalid="ignore", divide="ignore"):
        in_plane = np.where(length > 1e-24, np.minimum(kept / length, 1.0), np.nan)
    return coords, in_plane


def direction_projection(vocab_table, tokens: Mapping[str, object], *, n_components: int = 2,
                         fit_on: str = "vocabulary", sample: int | None = DEFAULT_SAMPLE, seed: int = 0,
                         include_ids=(), tokenizer=None) -> DirectionProjection:
    """Principal components of unit directions, with a vocabulary sample and every token row projected.

    vocab_table: a text encoder's input token table [n, d] (array, tensor or dti.vocab.Vocabulary).
    tokens: {label: rows [k, d] or [d]}, e.g. {"dti/cat2": ..., "ti/cat2": ..., "initializer/cat": ...};
    a label is free text, by convention "method[/detail]" (dti.figures.directions colours by the part
    before the slash, and marks the label "initializer" and those starting "initializer/").
    fit_on: "vocabulary" (default) fits the axes on every non-zero vocabulary row's direction, and the
    tokens are only projected; "tokens" fits on the token rows alone (what the authors' notebook does, on
    its hand-picked words plus the learned token).
    Why the vocabulary: the axes then depend on the model alone, so every method, subject and run is drawn in
    one and the same frame, and adding or leaving out a method moves nothing; a handful of token rows cannot
    define stable axes (k points span at most k - 1 dimensions, so the PCA would place the axes through
    exactly the points it is asked to compare and exaggerate their separation). The price is honesty about
    scale: two components of a 768- or 1280-dimensional vocabulary keep only a small share of its variance
    (a few percent at most), which the explained variance ratios and each point's `in_plane` state.
    sample: how many vocabulary rows to include as points (drawn without replacement, in id order, by a
    numpy Generator seeded with `seed`, so a figure redraws identically); None for all. The fit always
    uses the whole vocabulary, whatever the sample.
    include_ids: vocabulary ids drawn whatever the sample (the initializer's pieces, words a figure labels).
    tokenizer: optional, to give the vocabulary points their readable token text (see token_strings).
    """
    if fit_on not in FIT_ON:
        raise DtiError(f"fit_on must be one of {list(FIT_ON)}, got {fit_on!r}")
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise DtiError(f"n_components must be a positive integer, got {n_components!r}")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 0):
        raise DtiError(f"sample must be a non-negative integer or None, got {sample!r}")
    if not tokens:
        raise DtiError("tokens: no token to project")
    table = _table(vocab_table)
    ids, vocab_units = unit_directions(table)
    rows = {label: _token_rows(label, value, table.shape[1]) for label, value in tokens.items()}
    token_units = {label: r / np.linalg.norm(r, axis=1, keepdims=True) for label, r in rows.items()}
    fit = vocab_units if fit_on == "vocabulary" else np.concatenate(list(token_units.values()))
    if fit.shape[0] <= n_components or n_components > table.shape[1]:
        raise DtiError(f"{n_components} components need more than {n_components} {fit_on} directions of "
                       f"width >= {n_components}; got {fit.shape[0]} of width {table.shape[1]}")
    mean, components, ratios = _pca(fit, n_components)

    pick = np.arange(len(ids))
    if sample is not None and sample < len(ids):
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), size=sample, replace=False))
    include = list(include_ids)
    if include:
        pick = np.union1d(pick, _positions(ids, include, table.shape[0]))
    texts = None
    if tokenizer is not None:
        strings = token_strings(tokenizer, table.shape[0])
        byte_level = any(t is not None and t.endswith("</w>") for t in strings)
        texts = [readable(strings[i], byte_level) for i in ids[pick]]
    pcs = [f"pc{i + 1}" for i in range(n_components)]
    coords, in_plane = _projected(vocab_units[pick], mean, components)
    frames = [pd.DataFrame({"kind": VOCABULARY, "label": None, "vector": None, "token_id": ids[pick],
                            "token": texts, "norm": np.linalg.norm(table[ids[pick]], axis=1),
                            **dict(zip(pcs, coords.T, strict=True)), "in_plane": in_plane})]
    for label, units in token_units.items():
        coords, in_plane = _projected(units, mean, components)
        frames.append(pd.DataFrame({"kind": TOKEN, "label": str(label), "vector": np.arange(len(units)),
                                    "token_id": None, "token": None,
                                    "norm": np.linalg.norm(rows[label], axis=1),
                                    **dict(zip(pcs, coords.T, strict=True)), "in_plane": in_plane}))
    points = pd.concat(frames, ignore_index=True)
    points["vector"] = points["vector"].astype("Int64")
    points["token_id"] = points["token_id"].astype("Int64")
    return DirectionProjection(points, ratios, components, mean, fit_on)


def nearest_words(vocab_table, tokenizer, rows, *, k: int = 5, by: str = "direction") -> pd.DataFrame:
    """The k vocabulary tokens nearest each row of `rows` ([m, d] or [d]), best first.

    by="direction": largest cosine similarity, the same ranking and text as `dti inspect`
    (dti.inspect.nearest_tokens). Columns: vector (row index), by, rank (1 = nearest), token, cosine.
    by="vector": smallest Euclidean distance between the raw vectors, so the norm counts. Columns: vector,
    by, rank, token, distance, and the token's cosine with the row (to show how far in direction a raw-vector
    neighbour is). Ties keep the lower token id first in both.
    Token text is readable: CLIP's byte-level BPE decoded and its end-of-word `</w>` stripped, a piece that
    does not end a word marked with a trailing '-' (dti.vocab.readable). Zero rows of the table (unused ids)
    are never neighbours.
    """
    if by not in BY:
        raise DtiError(f"by must be one of {list(BY)}, got {by!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DtiError(f"k must be a positive integer (nearest words per vector), got {k!r}")
    table = _table(vocab_table)
    rows = _token_rows("rows", rows, table.shape[1])
    vocab = Vocabulary("vocabulary", table, token_strings(tokenizer, table.shape[0]))
    out = []
    if by == "direction":
        from dti.inspect import nearest_tokens

        for vector, hits in enumerate(nearest_tokens(rows, vocab, k)):
            out += [(vector, by, rank, text, cosine) for rank, (text, cosine) in enumerate(hits, 1)]
        return pd.DataFrame(out, columns=["vector", "by", "rank", "token", "cosine"])
    ids, units = unit_directions(table)
    candidates = table[ids]
    squared = np.einsum("ij,ij->i", candidates, candidates)
    byte_level = vocab.byte_level
    for vector, row in enumerate(rows):
        distance = np.sqrt(np.clip(squared - 2 * candidates @ row + row @ row, 0, None))
        best = np.argsort(distance, kind="stable")[:k]
        cosine = units[best] @ (row / np.linalg.norm(row))
        out += [(vector, by, rank, readable(vocab.tokens[ids[i]], byte_level), float(distance[i]), float(c))
                for rank, (i, c) in enumerate(zip(best, cosine, strict=True), 1)]
    return pd.DataFrame(out, columns=["vector", "by", "rank", "token", "distance", "cosine"])


def nearest_words_table(vocab_table, tokenizer, tokens: Mapping[str, object], *, k: int = 5) -> pd.DataFrame:
    """nearest_words by direction and by vector for every token of {label: rows}, in one long table with a
    `label` column first (a direction row's `distance` is empty: that ranking is by cosine alone)."""
    if not tokens:
        raise DtiError("tokens: no token to look up")
    table = _table(vocab_table)
    rows = {label: _token_rows(label, value, table.shape[1]) for label, value in tokens.items()}
    # Every token's rows in one call per ranking (each call reads the whole vocabulary once), then split.
    stacked = np.concatenate(list(rows.values()))
    counts = [len(r) for r in rows.values()]
    owner = np.repeat([str(label) for label in rows], counts)  # per stacked row: its token's label
    first = np.repeat(np.cumsum([0, *counts])[:-1], counts)  # and where that token's rows start
    frames = []
    for by in BY:
        frame = nearest_words(table, tokenizer, stacked, k=k, by=by)
        at = frame["vector"].to_numpy()
        frames.append(frame.assign(label=owner[at], vector=at - first[at]))
    found = pd.concat(frames, ignore_index=True)
    # In the order of `tokens`, then direction before vector, each vector's neighbours by rank.
    found["label"] = pd.Categorical(found["label"], categories=list(dict.fromkeys(owner)))
    found["by"] = pd.Categorical(found["by"], categories=list(BY))
    found = found.sort_values(["label", "vector", "by", "rank"], kind="stable")
    found["label"], found["by"] = found["label"].astype(str), found["by"].astype(str)
    return found.reset_index(drop=True)[["label", "vector", "by", "rank", "token", "cosine", "distance"]]
