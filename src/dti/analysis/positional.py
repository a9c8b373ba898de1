"""The positional probe: does an inflated token norm drown the position a CLIP text encoder adds to it?

A CLIP text encoder adds a position row p_i to each token row t and layer 0's self-attention reads
LN(t + p_i), LN being that layer's pre-attention LayerNorm (`layer_norm1`). LN takes out the scale of the
sum, so the larger |t| is against |p_i|, the less of p_i is left. The probe measures what is left: a small
classifier (Linear -> ReLU -> Linear) is trained to tell the position i from LN(t + p_i) on ordinary
prompts, then scored with the token at the evaluated positions rescaled to k times the vocabulary's mean
norm, or replaced by a learned token's rows. Only real positions count (start token through end token);
padding never enters training or scoring.

After the DTI authors' notebook (notebooks/positional_attenuation.ipynb in github.com/kunheek/dti): the same
LayerNorm, classifier shape (hidden width = the embedding width by default) and optimizer (AdamW, lr 1e-4,
weight decay 1e-2, 32 prompts a step, 1000 steps). Where this differs: a seeded generator drives the
initialization and the batches; padding is left out (the notebook trains on all 77 slots, padding too);
the notebook scores one random vocabulary token at position 0 with its norm set to an absolute value,
whereas here every real position of held-out prompts is scored and the norm is k times the vocabulary's
mean; and the corpus is built from this project's templates (`probe_corpus`), the authors' is not public.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dti.errors import DtiError

SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# Everyday nouns chosen for this project (some DreamBooth class words among them); every fifth is held
# out of training, so the probe is scored on prompts it has not seen (the templates are shared).
EVERYDAY_NOUNS = ("dog", "cat", "chair", "table", "lamp", "cup", "bicycle", "car", "house", "tree", "book",
                  "clock", "sneaker", "hat", "bottle", "teapot", "backpack", "guitar", "umbrella", "bird",
                  "horse", "apple", "vase", "candle", "bowl", "pillow", "boat", "bench", "kettle", "flower")
HELD_OUT_NOUNS = EVERYDAY_NOUNS[4::5]
TRAIN_NOUNS = tuple(n for n in EVERYDAY_NOUNS if n not in HELD_OUT_NOUNS)


def probe_corpus(nouns: Iterable[str] = TRAIN_NOUNS) -> list[str]:
    """Every template this project ships, each filled with every noun: the prompt files
    (src/dti/data/prompts/*.txt), CoRe's regularization prompts and the Textual Inversion training
    templates, without duplicates. Score on `probe_corpus(HELD_OUT_NOUNS)` after training on the default."""
    from dti.data import DATA_DIR
    from dti.methods.core_prompts import REGULARIZATION_PROMPTS
    from dti.prompts import TRAINING_TEMPLATES, read_prompt_file, render

    templates = [t for path in sorted((DATA_DIR / "prompts").glob("*.txt")) for t in read_prompt_file(path)]
    templates = dict.fromkeys([*templates, *REGULARIZATION_PROMPTS, *TRAINING_TEMPLATES])
    nouns = list(dict.fromkeys(nouns))
    if not nouns:
        raise DtiError("probe_corpus: no nouns given")
    return [render(t, n) for t in templates for n in nouns]


def first_norm_inputs(encoder, input_ids, *, at=None, rows=None, norm: float | None = None):
    """Layer 0's pre-attention LayerNorm applied to token row + position row, float32 (batch, length, dim).

    For slot (b, i): LN(t + p_i), p_i the encoder's position row i and t the token row of input_ids[b, i];
    where the bool mask `at` (batch, length; default every slot) is set, t is `rows` instead (anything that
    broadcasts to (batch, length, dim), e.g. one (dim,) row), and then, if `norm` is given, t is rescaled
    to L2 norm `norm` with its direction kept. This is what the first self-attention reads
    (CLIPTextEmbeddings adds the two rows, `encoder.layers[0].layer_norm1` normalizes), computed in
    float32 from the encoder's own weights.
    """
    import torch
    from torch.nn.functional import layer_norm

    text = _transformer(encoder)
    length = input_ids.shape[-1]
    if length > text.embeddings.position_embedding.num_embeddings:
        raise DtiError(f"{length} token slots, but the encoder has only "
                       f"{text.embeddings.position_embedding.num_embeddings} positions")
    token = text.embeddings.token_embedding(input_ids).float()
    if at is None:
        at = torch.ones(input_ids.shape, dtype=torch.bool)
    at = at.to(token.device)
    if rows is not None:
        token = torch.where(at[..., None], torch.as_tensor(rows).to(token).expand_as(token), token)
    if norm is not None:
        if not (norm > 0 and np.isfinite(norm)):
            raise DtiError(f"norm must be a positive number, got {norm}")
        scaled = token * (norm / token.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        token = torch.where(at[..., None], scaled, token)
    position = text.embeddings.position_embedding.weight[:length].float()
    ln = text.encoder.layers[0].layer_norm1
    return layer_norm(token + position, ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)


def _transformer(encoder):
    """The part of a CLIPTextModel(WithProjection) that holds `embeddings` and `encoder.layers`: the model
    itself in transformers 5's CLIPTextModel, its `text_model` otherwise."""
    return getattr(encoder, "text_model", encoder)


@dataclass(frozen=True)
class Probe:
    """A trained probe: `state` its weights (a state dict of CPU tensors, e.g. for safetensors) and `meta`
    its shape and recipe (JSON-able); the two are all it takes to cache and rebuild it."""

    state: dict
    meta: dict

    def module(self, device=None):
        """The classifier, Linear(dim, hidden) -> ReLU -> Linear(hidden, n_positions), with these weights."""
        probe = _classifier(self.meta["dim"], self.meta["hidden"], self.meta["n_positions"])
        probe.load_state_dict(self.state)
        return probe.to(device).eval()


def _classifier(dim: int, hidden: int, n_positions: int):
    """The classifier's layers, uninitialized (skip_init leaves the global random state alone)."""
    import torch
    from torch.nn.utils import skip_init

    return torch.nn.Sequential(skip_init(torch.nn.Linear, dim, hidden), torch.nn.ReLU(),
                               skip_init(torch.nn.Linear, hidden, n_positions))


def _tokenize(encoder, tokenizer, prompts: Sequence[str]):
    """(input_ids, real) of the prompts, padded to the encoder's positions; `real` marks start token
    through end token (the tokenizer's attention mask), so padding is excluded."""
    if not prompts:
        raise DtiError("no prompts given")
    positions = _transformer(encoder).embeddings.position_embedding.num_embeddings
    length = min(tokenizer.model_max_length, positions)
    batch = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                      return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"].bool()


def train_probe(encoder, tokenizer, prompts: Sequence[str], *, seed: int, steps: int = 1000,
                batch_size: int = 32, hidden: int | None = None, lr: float = 1e-4,
                weight_decay: float = 1e-2) -> Probe:
    """Train the classifier to tell the position from `first_norm_inputs` at every real position.

    The encoder is frozen; each step takes `batch_size` prompts (epochs of shuffled prompts) and minimizes
    the cross-entropy over all their real positions with AdamW. A generator seeded with `seed` draws the
    initial weights (uniform within 1/sqrt(fan_in), torch's default bound) and the shuffles, so the same
    seed gives the same probe on a CPU. `hidden` defaults to the embedding width, as in the notebook.
    meta["longest_prompt"] counts the slots of the longest prompt: later positions were never seen.
    """
    import torch
    from torch.nn.functional import cross_entropy

    if steps < 1 or batch_size < 1:
        raise DtiError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
    ids, real = _tokenize(encoder, tokenizer, prompts)
    dim = _transformer(encoder).embeddings.token_embedding.embedding_dim
    meta = {"dim": dim, "hidden": hidden or dim, "n_positions": ids.shape[1], "seed": seed, "steps": steps,
            "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "n_prompts": len(prompts),
            "longest_prompt": int(real.sum(-1).max())}
    generator = torch.Generator().manual_seed(seed)
    probe = _classifier(dim, meta["hidden"], meta["n_positions"])
    with torch.no_grad():
        for layer in (probe[0], probe[2]):
            bound = layer.in_features ** -0.5
            for param in (layer.weight, layer.bias):
                param.uniform_(-bound, bound, generator=generator)
    device = _transformer(encoder).embeddings.position_embedding.weight.device
    probe.to(device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    labels = torch.arange(ids.shape[1]).expand_as(ids)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(ids), generator=generator)])
        pick, order = order[:batch_size], order[batch_size:]
        with torch.no_grad():
            inputs = first_norm_inputs(encoder, ids[pick].to(device))[real[pick].to(device)]
        loss = cross_entropy(probe(inputs), labels[pick][real[pick]].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    meta["final_loss"] = loss.item()
    return Probe({k: v.detach().cpu().clone() for k, v in probe.state_dict().items()}, meta)


def probe_accuracy(probe: Probe, encoder, tokenizer, prompts: Sequence[str], *, scale: float | None = None,
                   token_rows=None, at_position: int | Sequence[int] | None = None, n_boot: int = 1000,
                   seed: int = 0, tokenized=None) -> dict:
    """How often the probe names the right position, with a 95% interval.

    Scored slots: the real positions of every prompt (start token through end token), or only those in
    `at_position`. At the scored slots the token row is, if `token_rows` (n, dim) is given, each learned
    row in turn (every row at every scored slot; the counts are pooled), and, if `scale` = k is given,
    rescaled to k * m, m the mean norm of the encoder's vocabulary rows (dti.tokens), direction kept.
    Each slot's LayerNorm output depends on that slot alone, so changing all scored slots at once equals
    changing them one at a time.

    Interval: percentile bootstrap over prompts (`n_boot` resamples of the prompts with replacement, each
    giving the pooled accuracy of its prompts; seeded), because the slots of one prompt are not independent.
    Baseline `chance`: the accuracy of always naming the most common scored position.
    `tokenized`: `_tokenize`'s (ids, real) of these prompts, when a caller scores them many times.
    """
    import torch

    from dti.tokens import resolve_magnitude

    ids, real = tokenized if tokenized is not None else _tokenize(encoder, tokenizer, prompts)
    if ids.shape[1] != probe.meta["n_positions"]:
        raise DtiError(f"the probe knows {probe.meta['n_positions']} positions, "
                       f"the prompts have {ids.shape[1]} slots")
    scored = real.clone()
    if at_position is not None:
        wanted = [int(p) for p in np.atleast_1d(at_position)]
        if not wanted or not all(0 <= p < ids.shape[1] for p in wanted):
            raise DtiError(f"at_position must name positions in 0..{ids.shape[1] - 1}, got {at_position!r}")
        scored &= torch.isin(torch.arange(ids.shape[1]), torch.tensor(wanted))
    if not scored.any():
        raise DtiError("no prompt has a real token at the positions to score")
    embeddings = _transformer(encoder).embeddings
    norm = None
    if scale is not None:
        if not (scale > 0 and np.isfinite(scale)):
            raise DtiError(f"scale must be a positive number, got {scale}")
        norm = scale * resolve_magnitude(embeddings.token_embedding.weight, "mean")
    if token_rows is not None:
        token_rows = torch.as_tensor(token_rows).reshape(-1, embeddings.token_embedding.embedding_dim)
    device = embeddings.position_embedding.weight.device
    classifier = probe.module(device)
    correct = torch.zeros(len(ids), dtype=torch.long)
    with torch.no_grad():
        for row in [None] if token_rows is None else token_rows:
            for start in range(0, len(ids), 256):
                part = slice(start, start + 256)
                at = scored[part].to(device)
                x = first_norm_inputs(encoder, ids[part].to(device), at=at, rows=row, norm=norm)
                hit = (classifier(x).argmax(-1) == torch.arange(ids.shape[1], device=device)) & at
                correct[part] += hit.sum(-1).cpu()
    counts = scored.sum(-1).numpy() * (1 if token_rows is None else len(token_rows))
    correct, keep = correct.numpy(), counts > 0
    low, high = _bootstrap(correct[keep], counts[keep], n_boot, seed)
    return {"accuracy": float(correct.sum() / counts.sum()), "ci_low": low, "ci_high": high,
            "chance": scored.sum(0).max().item() / scored.sum().item(), "n_scored": int(counts.sum()),
            "n_prompts": int(keep.sum())}


def _bootstrap(correct: np.ndarray, counts: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The 2.5% and 97.5% percentiles of the pooled accuracy over prompts resampled with replacement."""
    if n_boot < 1:
        raise DtiError(f"n_boot must be at least 1, got {n_boot}")
    pick = np.random.default_rng(seed).integers(0, len(correct), size=(n_boot, len(correct)))
    accuracy = correct[pick].sum(1) / counts[pick].sum(1)
    low, high = np.percentile(accuracy, [2.5, 97.5])
    return float(low), float(high)


def scale_sweep(probe: Probe, encoder, tokenizer, prompts: Sequence[str], *, scales: Iterable[float] = SCALES,
                learned: dict | None = None, at_position: int | Sequence[int] | None = None) -> pd.DataFrame:
    """`probe_accuracy` of the vocabulary's own tokens and of each learned token ({name: rows (n, dim)}), each
    as it is (scale NaN) and rescaled to every k * m in `scales`: one row per token and scale."""
    tokens = {"vocabulary": None, **(learned or {})}
    tokenized = _tokenize(encoder, tokenizer, prompts)  # once for every token and scale
    records = [{"token": name, "scale": np.nan if k is None else float(k),
                **probe_accuracy(probe, encoder, tokenizer, prompts, scale=k, token_rows=rows,
                                 at_position=at_position, tokenized=tokenized)}
               for name, rows in tokens.items() for k in [None, *scales]]
    return pd.DataFrame.from_records(records)
