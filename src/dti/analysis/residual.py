"""Why an inflated token norm stops a learned token from being contextualized: two measurements.

The DTI paper's argument: every block of a pre-norm text encoder adds an update computed from a
*normalized* copy of the residual stream, so the update's size does not grow with the stream's; a learned
token whose embedding norm is many times the vocabulary's keeps a residual stream that the blocks barely
move, and its output stays close to its input embedding whatever the prompt says. These functions measure
both halves of that argument on any transformers text encoder (CLIP, T5, Gemma) with the token installed.

Definitions (what the analysis doc quotes):

- Residual stream. h_0 .. h_L are the encoder's residual stream at the token's positions: h_l enters block
  l and h_{l+1} leaves it (L blocks). They are transformers' `output_hidden_states` entries 0 .. L: entry 0
  is the embedding output (CLIP: token + position embedding; Gemma: the table row times sqrt(width)),
  entry l the output of block l-1, all *before* any final norm. Transformers gives T5 and Gemma a last
  entry after their final norm (it equals `last_hidden_state`); there h_L is read instead from a forward
  hook on the last block, so every h_{l+1} - h_l is exactly one block's update: attention and MLP
  together (with Gemma's norms on their outputs). CLIP's last entry is pre-norm as it is.
- Residual-update ratio of block l at one position p: r_l(p) = ||h_{l+1}[p] - h_l[p]|| / ||h_l[p]|| (L2
  norms over the width, in float64 from the encoder's own-dtype states). A k-vector token has one row per
  vector (and per occurrence, if a prompt writes it twice). Aggregation (`summarize`): the arithmetic mean
  of r over the rows of one prompt (its k vectors, and its layers unless `layer` is a group key), then
  the mean over prompts; a mean of ratios, not a ratio of means.
- Contextualization distance. f(P)_j is the feature the denoiser reads at the j-th vector of the token's
  first occurrence in prompt P (`FEATURES`: SD, SANA and Wan read `last_hidden_state`, i.e. CLIP after
  its final_layer_norm, Gemma and UMT5 after their final norm; SDXL reads `hidden_states[-2]`, the
  pre-norm stream entering the last block of each CLIP). The distance of a pair of prompts is
  d_j(P, Q) = 1 - cos(f(P)_j, f(Q)_j), over all unordered pairs P != Q. Aggregation (`summarize_pairs`):
  the mean over the k vectors per pair, then the mean over pairs. A token whose output ignores the prompt
  scores 0. Vocabulary words can be measured alike (their ids, no rescaling) as a reference.
- Interval: a 95% percentile bootstrap over prompts (prompts resampled with replacement, `n_boot` times,
  from a fresh `numpy.random.default_rng(seed)` per group, prompts in id order): for the ratio, the mean
  of the resampled per-prompt values; for the distance, the mean of d over the resample's pairs of two
  different original prompts (pairs of a prompt with its own copy are left out, as they are 0 by
  construction; a resample of one distinct prompt is dropped). One prompt (for the distance, two)
  collapses the interval to the mean.

Prompts are tokenized with truncation, padded to the batch's longest (or to `max_length`), and encoded
with their attention mask; at the token's positions this equals each pipeline's own padded encoding up
to rounding (the mask, and CLIP's causal attention, keep padding out of every non-padding position).
Pass prompts as the pipeline transforms them (SANA lower-cases, Wan cleans). The encoder runs in eval
mode (no dropout).

Norms: the functions measure the encoder as it is, token installed (dti.tokens.install_rows, diffusers'
`load_textual_inversion`, dti.sample.set_token_rows). `token_norm` sets the installed rows of the token
to a given norm in place, directions kept, and restores them afterwards; `vocab_mean_norm` is the m of
"k x m" (the mean norm of the non-zero vocabulary rows, in table units before any embed scale, as
dti.tokens states m); `norm_sweep` measures both quantities at each scale k.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn

from dti.analysis.modes import eval_mode
from dti.errors import DtiError

# What each family's denoiser reads from its text encoder(s) (dti.backbones: encode_prompts/token_features).
FEATURES = {"sd": "last", "sdxl": "penultimate", "sana": "last", "wan": "last"}
RESIDUAL_COLUMNS = ("prompt_id", "prompt", "layer", "vector", "occurrence", "position", "stream_norm",
                    "update_norm", "ratio")
CONTEXT_COLUMNS = ("prompt_a", "prompt_b", "vector", "distance")
SUMMARY_COLUMNS = ("mean", "ci_low", "ci_high", "n_prompts")


# --- the token's ids and rows ----------------------------------------------------------------------------
def placeholder_ids(tokenizer, placeholder: str) -> list[int]:
    """The ids of an installed placeholder's k tokens (`<p>`, `<p>_1`, ... as dti.token_names names them)."""
    from dti.token_names import placeholder_tokens

    vocab = tokenizer.get_vocab()
    k = 0
    while placeholder_tokens(placeholder, k + 1)[-1] in vocab:
        k += 1
    if k == 0:
        raise DtiError(f"placeholder {placeholder!r} is not in the tokenizer; install the token's rows first")
    return [vocab[t] for t in placeholder_tokens(placeholder, k)]


def _table_rows(encoder: nn.Module, token_id: int) -> tuple[torch.Tensor, int, float]:
    """(the tensor holding `token_id`'s row, its row index, the factor embedding = factor * row)."""
    from dti.tokens import PlaceholderEmbedding

    layer = encoder.get_input_embeddings()
    while isinstance(layer, PlaceholderEmbedding):
        if layer.first_id <= token_id < layer.first_id + layer.rows.shape[0]:
            return layer.rows, token_id - layer.first_id, 1.0 if layer.magnitude is None else layer.magnitude
        layer = layer.frozen  # an earlier token's rows sit deeper in the chain
    if not 0 <= token_id < layer.weight.shape[0]:
        raise DtiError(f"token id {token_id} has no row in the encoder's embedding table")
    return layer.weight, token_id, 1.0  # a table diffusers' loader resized and wrote the rows into


def resolve_ids(tokenizer, token: str | Sequence[int]) -> list[int]:
    """The token's ids: given as ids, or an installed placeholder's name (`placeholder_ids`)."""
    return placeholder_ids(tokenizer, token) if isinstance(token, str) else [int(i) for i in token]


def token_rows(encoder: nn.Module, token_ids: Sequence[int]) -> torch.Tensor:
    """The embedding rows [k, d] the encoder looks up for the ids (table units, fp32)."""
    rows = []
    for token_id in token_ids:
        table, index, factor = _table_rows(encoder, int(token_id))
        rows.append(factor * table[index].detach().float())
    return torch.stack(rows)


def vocab_mean_norm(encoder: nn.Module, exclude_ids: Sequence[int] = ()) -> float:
    """Mean L2 norm of the vocabulary's non-zero rows (the base table under any placeholder layers, less
    `exclude_ids`, e.g. tokens diffusers' loader wrote into the table): the m that scales are multiples of."""
    from dti.tokens import PlaceholderEmbedding, vocab_norms

    layer = encoder.get_input_embeddings()
    while isinstance(layer, PlaceholderEmbedding):
        layer = layer.frozen
    table = layer.weight.detach()
    keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
    keep[[i for i in exclude_ids if 0 <= i < table.shape[0]]] = False
    return vocab_norms(table[keep]).mean().item()


def set_token_norm(encoder: nn.Module, token_ids: Sequence[int], norm: float) -> torch.Tensor:
    """Give each of the token's installed rows L2 norm `norm`, its direction kept; returns the rows
    before (table units, as `token_rows`). A DTI layer (m * v) gets unit v and keeps m's factor."""
    if not (norm > 0 and np.isfinite(norm)):
        raise DtiError(f"token norm must be a positive finite number, got {norm}")
    before = token_rows(encoder, token_ids)
    with torch.no_grad():
        for token_id, row in zip(token_ids, before, strict=True):
            table, index, factor = _table_rows(encoder, int(token_id))
            if float(row.norm()) == 0.0:
                raise DtiError(f"token id {token_id} has an all-zero row: it has no direction to rescale")
            table[index] = (norm / factor * row / row.norm()).to(table.device, table.dtype)
    return before


@contextmanager
def token_norm(encoder: nn.Module, token_ids: Sequence[int], norm: float | None) -> Iterator[None]:
    """Within the block the token's rows have norm `norm` (None: leave them); restored afterwards."""
    if norm is None:
        yield
        return
    before = set_token_norm(encoder, token_ids, norm)
    try:
        yield
    finally:
        with torch.no_grad():
            for token_id, row in zip(token_ids, before, strict=True):
                table, index, factor = _table_rows(encoder, int(token_id))
                table[index] = (row / factor).to(table.device, table.dtype)


# --- encoding ---------------------------------------------------------------------------------------------
def _blocks(encoder: nn.Module) -> nn.ModuleList | None:
    """The encoder's list of blocks: the outermost ModuleList of num_hidden_layers modules of one class."""
    n = getattr(encoder.config, "num_hidden_layers", None)
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and len({type(m) for m in module}) == 1:
            return module
    return None


def token_positions(ids: Sequence[int], token_ids: Sequence[int]) -> list[list[int]]:
    """Where the k ids occur as one run in a tokenized prompt: a list of k positions per occurrence."""
    ids, run, k = list(ids), list(token_ids), len(token_ids)
    found, i = [], 0
    while i + k <= len(ids):
        if ids[i : i + k] == run:
            found.append(list(range(i, i + k)))
            i += k
        else:
            i += 1
    return found


def _feature_tensor(out, features: str | int) -> torch.Tensor:
    if features == "last":
        return out.last_hidden_state
    if features == "penultimate":
        return out.hidden_states[-2]
    if isinstance(features, int) and not isinstance(features, bool):
        return out.hidden_states[features]
    raise DtiError(f"features must be 'last', 'penultimate' or a hidden_states index, got {features!r}")


def _streams(encoder: nn.Module, out, captured: dict) -> torch.Tensor:
    """h_0 .. h_L of a batch, [batch, L+1, tokens, d]: output_hidden_states, its last entry replaced by
    the last block's own output where transformers put the final norm's output there (T5, Gemma)."""
    stream = list(out.hidden_states or ())
    if len(stream) < 2:
        raise DtiError("the encoder returned no hidden states (output_hidden_states)")
    last = out.last_hidden_state
    if stream[-1] is last or (stream[-1].shape == last.shape and torch.equal(stream[-1], last)):
        if "last" not in captured:
            raise DtiError("the encoder's last hidden state is after its final norm and its blocks were not "
                           "found, so the last block's update cannot be measured")
        stream[-1] = captured["last"]
    return torch.stack(stream, dim=1)


@torch.no_grad()
def token_states(encoder: nn.Module, tokenizer, prompts: Sequence[str], token: str | Sequence[int], *,
                 features: str | int = "last", max_length: int | None = None, batch_size: int = 32
                 ) -> list[dict]:
    """Per prompt: `positions` [(occurrence, vector, position)], `stream` [L+1, rows, d] (h_0 .. h_L at
    those positions, module docstring) and `features` [k, d] (the denoiser's input at the first
    occurrence), all float64 on the CPU. `token`: its ids or its placeholder name. Prompts without the
    token's k ids in one run are an error."""
    if not prompts:
        raise DtiError("no prompts to encode")
    token_ids = resolve_ids(tokenizer, token)
    device = next(encoder.parameters()).device
    blocks, captured = _blocks(encoder), {}
    hook = None if blocks is None else blocks[-1].register_forward_hook(
        lambda _m, _a, out: captured.__setitem__("last", out[0] if isinstance(out, tuple) else out))
    padding = "max_length" if max_length else "longest"
    states = []
    try:
        with eval_mode(encoder):
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start : start + batch_size])
                tok = tokenizer(batch, padding=padding, max_length=max_length, truncation=True,
                                return_tensors="pt")
                mask = tok.attention_mask.to(device)
                out = encoder(input_ids=tok.input_ids.to(device), attention_mask=mask,
                              output_hidden_states=True, return_dict=True)
                stream, feats = _streams(encoder, out, captured), _feature_tensor(out, features)
                for b, prompt in enumerate(batch):
                    runs = token_positions(tok.input_ids[b][tok.attention_mask[b].bool()].tolist(), token_ids)
                    if not runs:
                        raise DtiError(f"prompt {start + b} ({prompt!r}) does not contain the token's ids "
                                       f"{token_ids} (in order, within the tokenizer's length)")
                    where = [(o, j, p) for o, run in enumerate(runs) for j, p in enumerate(run)]
                    at = torch.tensor([p for _, _, p in where], device=stream.device)
                    first = torch.tensor(runs[0], device=feats.device)
                    states.append({"positions": where, "stream": stream[b][:, at].double().cpu(),
                                   "features": feats[b][first].double().cpu()})
    finally:
        if hook is not None:
            hook.remove()
    return states


# --- the two measurements -----------------------------------------------------------------------------
def residual_table(states: list[dict], prompts: Sequence[str]) -> pd.DataFrame:
    """One row per prompt x layer x token row: the stream's norm, the block's update norm and their ratio."""
    rows = []
    for prompt_id, (state, prompt) in enumerate(zip(states, prompts, strict=True)):
        h = state["stream"]
        stream_norm = h[:-1].norm(dim=-1)  # [L, rows]
        update_norm = (h[1:] - h[:-1]).norm(dim=-1)
        ratio = update_norm / stream_norm
        for layer in range(h.shape[0] - 1):
            for r, (occurrence, vector, position) in enumerate(state["positions"]):
                values = (stream_norm[layer, r].item(), update_norm[layer, r].item(), ratio[layer, r].item())
                rows.append((prompt_id, prompt, layer, vector, occurrence, position, *values))
    return pd.DataFrame(rows, columns=list(RESIDUAL_COLUMNS))


def context_table(states: list[dict]) -> pd.DataFrame:
    """One row per unordered prompt pair (prompt_a < prompt_b) x vector: 1 - cosine of their features."""
    if len(states) < 2:
        raise DtiError("contextualization needs at least two prompts (it compares the token across prompts)")
    feats = torch.stack([s["features"] for s in states])  # [n, k, d]
    unit = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    distance = 1 - torch.einsum("akd,bkd->kab", unit, unit)  # [k, n, n]
    rows = [(a, b, j, distance[j, a, b].item())
            for a, b in itertools.combinations(range(len(states)), 2) for j in range(feats.shape[1])]
    return pd.DataFrame(rows, columns=list(CONTEXT_COLUMNS))


def residual_updates(encoder: nn.Module, tokenizer, prompts: Sequence[str], token: str | Sequence[int],
                     **encode) -> pd.DataFrame:
    """The residual-update ratio table (module docstring) of the encoder as it is."""
    return residual_table(token_states(encoder, tokenizer, prompts, token, **encode), prompts)


def contextualization(encoder: nn.Module, tokenizer, prompts: Sequence[str], token: str | Sequence[int], *,
                      features: str | int = "last", **encode) -> pd.DataFrame:
    """The pairwise distance table of the token's features (`FEATURES[family]`) over the prompts."""
    return context_table(token_states(encoder, tokenizer, prompts, token, features=features, **encode))


def norm_sweep(encoder: nn.Module, tokenizer, prompts: Sequence[str], token: str | Sequence[int],
               scales: Sequence[float | None], *, features: str | int = "last",
               vocab_norm: float | None = None, **encode) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables with the token's rows at norm k x m for each k in `scales` (None: as installed, e.g. as
    trained), one encoding per scale; columns `scale` (NaN for None) and `norm_ratio` (the rows' mean norm
    over m) are added. m: `vocab_norm`, default `vocab_mean_norm` without the token's ids."""
    token_ids = resolve_ids(tokenizer, token)
    m = vocab_mean_norm(encoder, token_ids) if vocab_norm is None else float(vocab_norm)
    residual, context = [], []
    for scale in scales:
        with token_norm(encoder, token_ids, None if scale is None else scale * m):
            ratio = token_rows(encoder, token_ids).norm(dim=-1).mean().item() / m
            states = token_states(encoder, tokenizer, prompts, token_ids, features=features, **encode)
        label = {"scale": np.nan if scale is None else float(scale), "norm_ratio": ratio}
        residual.append(residual_table(states, prompts).assign(**label))
        context.append(context_table(states).assign(**label))
    return pd.concat(residual, ignore_index=True), pd.concat(context, ignore_index=True)


# --- summaries ------------------------------------------------------------------------------------------
def _percentiles(resampled: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(resampled[np.isfinite(resampled)], [2.5, 97.5])
    return float(low), float(high)


def _groups(table: pd.DataFrame, by: Sequence[str]):
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise DtiError(f"summary keys {missing} are not columns of the table ({list(table.columns)})")
    if table.empty:
        raise DtiError("nothing to summarize: the table is empty")
    if not by:
        return [((), table)]
    return [(key if isinstance(key, tuple) else (key,), part)
            for key, part in table.groupby(list(by), sort=True, dropna=False)]


def summarize(table: pd.DataFrame, value: str = "ratio", by: Sequence[str] = (), *, n_boot: int = 2000,
              seed: int = 0) -> pd.DataFrame:
    """Per group of `by`: the mean over prompts of each prompt's mean `value` (over the rows left: vectors,
    occurrences, and layers unless `layer` is in `by`) and its 95% percentile bootstrap interval over
    prompts."""
    out = []
    for key, part in _groups(table, by):
        per_prompt = part.groupby("prompt_id", sort=True)[value].mean().to_numpy(dtype="float64")
        mean = float(per_prompt.mean())
        if per_prompt.size == 1:
            low = high = mean
        else:
            rng = np.random.default_rng(seed)
            draws = rng.integers(0, per_prompt.size, size=(n_boot, per_prompt.size))
            low, high = _percentiles(per_prompt[draws].mean(axis=1))
        out.append((*key, mean, low, high, per_prompt.size))
    return pd.DataFrame(out, columns=[*by, *SUMMARY_COLUMNS])


def summarize_pairs(table: pd.DataFrame, by: Sequence[str] = (), *, n_boot: int = 2000, seed: int = 0
                    ) -> pd.DataFrame:
    """Per group of `by`: the mean distance over prompt pairs (each pair's mean over vectors) and its 95%
    percentile bootstrap interval over prompts (pairs of a prompt with its own copy left out)."""
    out = []
    for key, part in _groups(table, by):
        pairs = part.groupby(["prompt_a", "prompt_b"], sort=True)["distance"].mean()
        ids = sorted(set(pairs.index.get_level_values(0)) | set(pairs.index.get_level_values(1)))
        index = {p: i for i, p in enumerate(ids)}
        matrix = np.full((len(ids), len(ids)), np.nan)
        for (a, b), d in pairs.items():
            matrix[index[a], index[b]] = matrix[index[b], index[a]] = d
        mean = float(pairs.mean())
        if len(ids) == 2:
            low = high = mean  # one pair: every resample with two different prompts is that pair
        else:
            rng = np.random.default_rng(seed)
            draws = rng.integers(0, len(ids), size=(n_boot, len(ids)))
            sub = matrix[draws[:, :, None], draws[:, None, :]]  # [n_boot, n, n]; NaN: same prompt or no pair
            count = np.isfinite(sub).sum(axis=(1, 2))
            sums = np.nansum(sub, axis=(1, 2))
            low, high = _percentiles(np.where(count > 0, sums / np.maximum(count, 1), np.nan))
        out.append((*key, mean, low, high, len(ids)))
    return pd.DataFrame(out, columns=[*by, *SUMMARY_COLUMNS])
