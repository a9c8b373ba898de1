"""The positional probe (dti.analysis.positional) on a toy CLIP text encoder built so the answer is known.

The toy: 98 words plus start and end tokens, 16 positions, width 32. Every token row has norm 2 (so the
vocabulary's mean norm m is 2) and every position row has norm 1, all in random directions: at 1x the
position survives the LayerNorm and a trained probe names it almost always; at 16x the LayerNorm output is
nearly the token's direction, which says nothing about the position of a word drawn at random, so the
probe falls to about chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dti.analysis.positional import (
    HELD_OUT_NOUNS,
    TRAIN_NOUNS,
    first_norm_inputs,
    probe_accuracy,
    probe_corpus,
    scale_sweep,
    train_probe,
)

N_WORDS, N_POSITIONS, DIM, TOKEN_NORM = 98, 16, 32, 2.0
BOS, EOS = "<bos>", "<eos>"
MIDDLE = range(1, N_POSITIONS - 1)  # a full prompt's word slots (start and end token give their place away)
CHANCE = 1 / len(MIDDLE)  # a guess from the word alone hits a word's slot 1 time in 14 at best
RECIPE = dict(steps=300, lr=1e-2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and spares the cores other jobs share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    """Whitespace words w0..w97, the start and end token around them, padded with the end token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(N_WORDS)} | {BOS: N_WORDS, EOS: N_WORDS + 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                       special_tokens=[(BOS, N_WORDS), (EOS, N_WORDS + 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                                   unk_token=EOS, model_max_length=N_POSITIONS)


@pytest.fixture(scope="module")
def encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=N_WORDS + 2, hidden_size=DIM, intermediate_size=2 * DIM,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=N_POSITIONS,
                            bos_token_id=N_WORDS, eos_token_id=N_WORDS + 1, pad_token_id=N_WORDS + 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPTextModel(config).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(N_WORDS + 2, DIM, generator=generator)
    positions = torch.randn(N_POSITIONS, DIM, generator=generator)
    with torch.no_grad():
        model.embeddings.token_embedding.weight.copy_(TOKEN_NORM * tokens / tokens.norm(dim=-1, keepdim=True))
        model.embeddings.position_embedding.weight.copy_(positions / positions.norm(dim=-1, keepdim=True))
    return model


def word_prompts(n: int, lengths: tuple[int, int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, N_WORDS, rng.integers(lengths[0], lengths[1] + 1)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def train_prompts():
    return word_prompts(400, (4, 14), seed=0)


@pytest.fixture(scope="module")
def full_prompts():
    """Held-out prompts that fill all 16 slots: 14 random words between start and end token."""
    return word_prompts(200, (14, 14), seed=1)


@pytest.fixture(scope="module")
def probe(encoder, tokenizer, train_prompts):
    return train_probe(encoder, tokenizer, train_prompts, seed=0, **RECIPE)


def test_first_norm_inputs_is_what_layer_zero_reads(encoder, tokenizer, full_prompts):
    ids = tokenizer(full_prompts[:4], return_tensors="pt")["input_ids"]
    seen = []
    hook = encoder.encoder.layers[0].layer_norm1.register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        encoder(input_ids=ids)
    finally:
        hook.remove()
    torch.testing.assert_close(first_norm_inputs(encoder, ids), seen[0])
    own = encoder.embeddings.token_embedding(ids)
    assert torch.equal(first_norm_inputs(encoder, ids, rows=own), first_norm_inputs(encoder, ids))
    at = torch.zeros(ids.shape, dtype=torch.bool)
    at[:, 3] = True
    rescaled = first_norm_inputs(encoder, ids, at=at, norm=7.0)
    by_hand = own * torch.where(at, 7.0 / TOKEN_NORM, 1.0)[..., None]
    torch.testing.assert_close(rescaled, first_norm_inputs(encoder, ids, rows=by_hand))
    assert torch.equal(rescaled[:, :3], first_norm_inputs(encoder, ids)[:, :3])  # other slots untouched


def test_probe_reads_positions_at_1x_and_about_chance_at_16x(probe, encoder, tokenizer, full_prompts):
    at = dict(at_position=MIDDLE)
    one = probe_accuracy(probe, encoder, tokenizer, full_prompts, scale=1.0, **at)
    big = probe_accuracy(probe, encoder, tokenizer, full_prompts, scale=16.0, **at)
    assert one["accuracy"] > 0.9
    assert big["accuracy"] < 2 * CHANCE < one["accuracy"] - 0.5
    for result in (one, big):
        assert result["ci_low"] <= result["accuracy"] <= result["ci_high"]
        assert result["n_scored"] == len(full_prompts) * len(MIDDLE)
        assert result["chance"] == pytest.approx(CHANCE)
    # Every row has norm m, so 1x changes nothing.
    assert one == probe_accuracy(probe, encoder, tokenizer, full_prompts, **at)


def test_padding_is_never_scored(probe, encoder, tokenizer):
    prompts = word_prompts(50, (2, 10), seed=2)
    result = probe_accuracy(probe, encoder, tokenizer, prompts)
    assert result["n_scored"] == sum(len(p.split()) + 2 for p in prompts)
    assert result["n_prompts"] == len(prompts)
    assert result["accuracy"] > 0.9


def test_vocabulary_rows_at_a_position_equal_the_plain_evaluation(probe, encoder, tokenizer, full_prompts):
    """Slot 3 holds w7 in every prompt: putting w7's own row there changes nothing, at any scale."""
    prompts = [" ".join(["w7" if i == 2 else w for i, w in enumerate(p.split())]) for p in full_prompts]
    row = encoder.embeddings.token_embedding.weight[7]
    for scale in (16.0, None):
        plain = probe_accuracy(probe, encoder, tokenizer, prompts, at_position=3, scale=scale)
        assert probe_accuracy(probe, encoder, tokenizer, prompts, at_position=3, scale=scale,
                              token_rows=row) == plain
    doubled = probe_accuracy(probe, encoder, tokenizer, prompts, at_position=3,
                             token_rows=torch.stack([row, row]))
    assert doubled["accuracy"] == plain["accuracy"] and doubled["n_scored"] == 2 * plain["n_scored"]


def test_inflated_learned_rows_drown_the_position_and_rescaling_restores_it(probe, encoder, tokenizer,
                                                                            full_prompts):
    """Two learned rows of norm 16m at every word slot: chance. At norm m the position is back (less often
    than for random words, since one direction at every slot does not average over words)."""
    directions = torch.randn(2, DIM, generator=torch.Generator().manual_seed(5))
    inflated = 16 * TOKEN_NORM * directions / directions.norm(dim=-1, keepdim=True)
    at = dict(at_position=MIDDLE, token_rows=inflated)
    drowned = probe_accuracy(probe, encoder, tokenizer, full_prompts, **at)["accuracy"]
    restored = probe_accuracy(probe, encoder, tokenizer, full_prompts, scale=1.0, **at)["accuracy"]
    assert drowned < 2 * CHANCE < 4 * CHANCE < restored


def test_same_seed_same_probe(probe, encoder, tokenizer, train_prompts, full_prompts):
    state = torch.random.get_rng_state()
    again = train_probe(encoder, tokenizer, train_prompts, seed=0, **RECIPE)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert again.meta == probe.meta
    assert all(torch.equal(again.state[k], v) for k, v in probe.state.items())
    accuracy = [probe_accuracy(p, encoder, tokenizer, full_prompts, scale=4.0) for p in (probe, again)]
    assert accuracy[0] == accuracy[1]
    other = train_probe(encoder, tokenizer, train_prompts, seed=1, steps=1)
    assert not torch.equal(other.state["0.weight"], probe.state["0.weight"])


def test_scale_sweep_rows(probe, encoder, tokenizer, full_prompts):
    learned = {"learned": TOKEN_NORM * torch.eye(DIM)[:1]}
    table = scale_sweep(probe, encoder, tokenizer, full_prompts, scales=(1.0, 16.0), learned=learned)
    assert list(table["token"]) == ["vocabulary"] * 3 + ["learned"] * 3
    plain = probe_accuracy(probe, encoder, tokenizer, full_prompts)
    assert table.iloc[0]["accuracy"] == plain["accuracy"] and np.isnan(table.iloc[0]["scale"])


def test_corpus_from_the_project_templates():
    from dti.prompts import TRAINING_TEMPLATES

    train, held_out = probe_corpus(), probe_corpus(HELD_OUT_NOUNS)
    assert "a photo of a dog" in train and not set(train) & set(held_out)
    assert len(train) == len(set(train))
    assert len(train) // len(TRAIN_NOUNS) == len(held_out) // len(HELD_OUT_NOUNS)  # the same templates
    assert len(train) >= len(TRAINING_TEMPLATES) * len(TRAIN_NOUNS)
