"""Decoding a learned token with the text encoder's own LM (dti.analysis.decoding) on the tiny SANA: the LM
built over the Gemma-2 encoder is transformers' Gemma2ForCausalLM with the tied head, a placeholder with a
word's rows decodes as that word, greedy decoding is deterministic and is the argmax chain, other encoders
are refused, and the LM sees rows installed or overwritten after it was built."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from conftest import fresh_backbone
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma2Model, UMT5Config, UMT5EncoderModel

from dti.analysis import decoding as D
from dti.errors import DtiError
from dti.sample import set_token_rows
from dti.tokens import install_rows

QUESTIONS = ("What is {token}?", "{token} What is the Machine Learning?")
# What must agree between two decodings whose prompts spell the token differently.
SAME = ["kind", "question_id", "vector", "continuation", "stopped", "rank", "token_id", "token", "probability",
        "logit"]


@pytest.fixture(scope="module")
def sana(tiny_sana):
    """A tiny SANA backbone shared by the tests that install nothing."""
    return fresh_backbone(tiny_sana)


def _slot(backbone):
    (slot,) = backbone.slots
    return slot


def _word(tokenizer, piece: str = "\u2581dog") -> int:
    token_id = tokenizer.convert_tokens_to_ids(piece)
    assert token_id != tokenizer.unk_token_id
    return token_id


def _decode(lm, tokenizer, token, **kwargs) -> pd.DataFrame:
    return D.decode_token(lm, tokenizer, token, **{"questions": QUESTIONS, "max_new_tokens": 6, "top_k": 5,
                                                   **kwargs})


def _reference(config, state: dict) -> Gemma2ForCausalLM:
    """Gemma2ForCausalLM built apart from dti: the config, the encoder's state dict under `model.`, and the
    head transformers ties to the embedding table itself."""
    torch.manual_seed(123)  # its own random head is dropped by the tie; the seed only keeps it reproducible
    ref = Gemma2ForCausalLM(copy.deepcopy(config)).eval()
    result = ref.load_state_dict({f"model.{k}": v for k, v in state.items()}, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys
    assert ref.lm_head.weight is ref.model.embed_tokens.weight  # tied: the head is the table
    return ref


def test_lm_is_gemma2_for_causal_lm_over_the_encoder(tiny_sana):
    backbone = fresh_backbone(tiny_sana)
    slot = _slot(backbone)
    encoder = slot.encoder
    assert encoder.config.tie_word_embeddings is True
    # A cap small enough to bend the tiny model's logits (|logit| < 1), so leaving it out would show.
    encoder.config.final_logit_softcapping = 0.5
    lm = D.causal_lm_from_encoder(encoder)
    assert type(lm) is Gemma2ForCausalLM and lm.model is encoder  # shared, not copied
    ref = _reference(encoder.config, encoder.state_dict())
    ids = torch.tensor([D.question_ids(slot.tokenizer, "a photo of {token} on the beach", [_word(slot.tokenizer)],
                                       chat=False)])
    with torch.no_grad():
        ours, theirs = lm(ids).logits, ref(ids).logits
        raw = encoder(ids).last_hidden_state @ encoder.get_input_embeddings().weight.T
    assert ours.shape == (1, ids.shape[1], len(slot.tokenizer))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, 0.5 * torch.tanh(raw / 0.5), rtol=0, atol=1e-6)
    assert (raw.abs() - ours.abs()).max() > 0.01  # the cap did bend them


def test_learned_rows_enter_as_inputs_and_with_learned_outputs_as_outputs_too(tiny_sana):
    """The authors' route (a tied LM whose table is resized and given the row) equals learned_outputs=True;
    the default head is that LM's vocabulary part."""
    backbone = fresh_backbone(tiny_sana)
    slot = _slot(backbone)
    encoder, tokenizer = slot.encoder, slot.tokenizer
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    torch.manual_seed(0)
    row = torch.randn(1, encoder.config.hidden_size) * 3  # well off the vocabulary, to be seen in both roles
    (token,) = install_rows(tokenizer, encoder, "<tok>", row)
    vocab = state["embed_tokens.weight"].shape[0]
    assert tokenizer.convert_tokens_to_ids(token) == vocab
    config = copy.deepcopy(encoder.config)
    config.vocab_size = vocab + 1
    state["embed_tokens.weight"] = torch.cat([state["embed_tokens.weight"], row])
    ref = _reference(config, state)
    ids = torch.tensor([D.question_ids(tokenizer, "What is {token}?", [vocab], chat=False)])
    with torch.no_grad():
        theirs = ref(ids).logits
        only_vocab = D.causal_lm_from_encoder(encoder)(ids).logits
        with_learned = D.causal_lm_from_encoder(encoder, learned_outputs=True)(ids).logits
    torch.testing.assert_close(with_learned, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(only_vocab, theirs[..., :vocab], rtol=0, atol=1e-6)
    # The installed row is an output of the second LM only: every output of each, in the token lens.
    every = D.decode_token(D.causal_lm_from_encoder(encoder, learned_outputs=True), tokenizer, "<tok>",
                           questions=(), top_k=vocab + 1)
    assert sorted(every.token_id) == list(range(vocab + 1)) and (every.kind == "lens").all()
    with torch.no_grad():
        probs = torch.softmax(ref(torch.tensor([[tokenizer.bos_token_id, vocab]])).logits[0, -1], dim=-1)
    assert every.set_index("token_id").probability[vocab] == pytest.approx(probs[vocab].item(), abs=1e-7)
    assert every.set_index("token_id").token[vocab] == "<tok>"
    default = D.decode_token(D.causal_lm_from_encoder(encoder), tokenizer, "<tok>", questions=(), top_k=vocab + 1)
    assert sorted(default.token_id) == list(range(vocab))


def test_a_token_with_a_words_rows_decodes_as_that_word(tiny_sana):
    backbone = fresh_backbone(tiny_sana)
    slot = _slot(backbone)
    dog, cat = _word(slot.tokenizer), _word(slot.tokenizer, "\u2581cat")
    lm = D.causal_lm_from_encoder(slot.encoder)
    as_word = _decode(lm, slot.tokenizer, [dog])
    set_token_rows(backbone, "<dog>", {slot.name: D.vocabulary_table(slot.encoder)[dog : dog + 1].clone()})
    as_token = _decode(lm, slot.tokenizer, "<dog>")
    assert len(as_word) == (len(QUESTIONS) + 1) * 5 and as_word.continuation.str.len().dropna().gt(0).all()
    pd.testing.assert_frame_equal(as_token[SAME], as_word[SAME])
    assert "<dog>" in as_token.prompt[0] and "<dog>" not in as_word.prompt[0]
    # ... and not as another word: the table depends on the token's rows.
    as_cat = _decode(lm, slot.tokenizer, [cat])
    assert not as_cat.probability.equals(as_word.probability)


def test_greedy_decoding_is_deterministic_and_the_argmax_chain(sana):
    slot = _slot(sana)
    lm = D.causal_lm_from_encoder(slot.encoder)
    first = _decode(lm, slot.tokenizer, [_word(slot.tokenizer)], max_new_tokens=8)
    pd.testing.assert_frame_equal(first, _decode(lm, slot.tokenizer, [_word(slot.tokenizer)], max_new_tokens=8))
    assert list(first.columns) == list(D.COLUMNS)
    # The continuation is the argmax chain, computed here one full forward per token.
    ids = D.question_ids(slot.tokenizer, QUESTIONS[0], [_word(slot.tokenizer)], chat=False)
    chain = list(ids)
    stops = D.stop_ids(lm, slot.tokenizer)
    with torch.no_grad():
        for _ in range(8):
            chain.append(int(lm(torch.tensor([chain])).logits[0, -1].argmax()))
            if chain[-1] in stops:
                break
    new = chain[len(ids) :]
    assert D.greedy_continuation(lm, ids, max_new_tokens=8, stops=stops) == new
    rows = first[(first.kind == "next") & (first.question_id == 0)]
    assert rows.continuation.iloc[0] == slot.tokenizer.decode(new, skip_special_tokens=True)
    assert rows.token_id.iloc[0] == new[0]  # the first new token is the rank-1 next token
    assert rows.probability.is_monotonic_decreasing and (rows.probability > 0).all()
    # The lens: the token alone after <bos>, its rank-1 output the argmax there.
    lens = first[first.kind == "lens"]
    assert lens.prompt.iloc[0].startswith("<bos>") and lens.vector.tolist() == [0] * 5
    with torch.no_grad():
        probs = torch.softmax(lm(torch.tensor([[slot.tokenizer.bos_token_id, _word(slot.tokenizer)]])).logits[0, -1],
                              dim=-1)
    assert lens.token_id.tolist() == probs.argsort(descending=True, stable=True)[:5].tolist()
    assert lens.probability.tolist() == pytest.approx(probs.sort(descending=True).values[:5].tolist(), abs=1e-7)


def _umt5():
    return UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))


def _untied_gemma():
    return Gemma2Model(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                    tie_word_embeddings=False))


@pytest.mark.parametrize("build, name, why", [
    ("clip", "CLIPTextModel", "not a decoder-only language model"),
    (_umt5, "UMT5EncoderModel", "not a decoder-only language model"),
    (_untied_gemma, "Gemma2Model", "does not tie"),
])
def test_encoders_without_a_tied_causal_lm_are_refused(build, name, why, tiny_sd):
    encoder = _slot(fresh_backbone(tiny_sd)).encoder if build == "clip" else build()
    with pytest.raises(DtiError, match=f"^a {name} text encoder cannot decode a token: .*{why}") as info:
        D.causal_lm_from_encoder(encoder)
    assert "\n" not in str(info.value)


def test_a_causal_lm_itself_is_refused_with_its_base_model_named(sana):
    lm = D.causal_lm_from_encoder(_slot(sana).encoder)
    with pytest.raises(DtiError, match="a Gemma2ForCausalLM text encoder .* not over this class .*'s .model"):
        D.causal_lm_from_encoder(lm)


def test_installed_rows_are_read_at_each_call(tiny_sana):
    """One LM, built before the token exists: installing it, then overwriting its rows in place
    (dti.sample.set_token_rows), changes what the LM says; writing the first rows back restores it."""
    backbone = fresh_backbone(tiny_sana)
    slot = _slot(backbone)
    lm = D.causal_lm_from_encoder(slot.encoder)
    table = D.vocabulary_table(slot.encoder)
    dog, cat = _word(slot.tokenizer), _word(slot.tokenizer, "\u2581cat")
    rows_a = {slot.name: table[[dog, cat]].clone()}  # a 2-vector token: the lens has a row set per vector
    set_token_rows(backbone, "<tok>", rows_a)
    a = _decode(lm, slot.tokenizer, "<tok>")
    assert sorted(a[a.kind == "lens"].vector.unique()) == [0, 1]
    set_token_rows(backbone, "<tok>", {slot.name: 4 * table[[cat, dog]].clone()})
    b = _decode(lm, slot.tokenizer, "<tok>")
    for kind in ("next", "lens"):
        assert not a[a.kind == kind].probability.equals(b[b.kind == kind].probability)
    set_token_rows(backbone, "<tok>", rows_a)
    pd.testing.assert_frame_equal(_decode(lm, slot.tokenizer, "<tok>"), a)


def test_the_chat_template_wraps_the_question(sana):
    """With a chat template the prompt is its rendering, the token's ids spliced in; chat=False ignores it."""
    slot = _slot(sana)
    tokenizer = copy.deepcopy(slot.tokenizer)
    tokenizer.chat_template = (  # Gemma's layout
        "{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + m['role'] + '\\n' + m['content'] "
        "+ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
    dog = _word(tokenizer)
    ids = D.question_ids(tokenizer, "What is {token}?", [dog], chat=True)
    rendered = "<bos><start_of_turn>user\nWhat is {token}?<end_of_turn>\n<start_of_turn>model\n"
    before, after = rendered.split("{token}")
    expected = tokenizer(before, add_special_tokens=False).input_ids + [dog] \
        + tokenizer(after, add_special_tokens=False).input_ids
    assert ids == expected and ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    plain = D.question_ids(tokenizer, "What is {token}?", [dog], chat=False)
    assert plain == [tokenizer.bos_token_id, *tokenizer("What is ", add_special_tokens=False).input_ids, dog,
                     *tokenizer("?", add_special_tokens=False).input_ids]
    lm = D.causal_lm_from_encoder(slot.encoder)
    table = D.decode_token(lm, tokenizer, [dog], questions=("What is {token}?",), max_new_tokens=2, top_k=2)
    assert table.prompt.iloc[0] == tokenizer.decode(ids, skip_special_tokens=False)
    # Generation stops at end of text and, where the vocabulary has one, at the end of a turn.
    assert D.stop_ids(lm, tokenizer) == [tokenizer.eos_token_id]
    tokenizer.add_tokens(["<end_of_turn>"], special_tokens=True)
    assert D.stop_ids(lm, tokenizer) == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    with pytest.raises(DtiError, match="no chat template"):
        D.decode_token(lm, slot.tokenizer, [dog], chat=True)
    with pytest.raises(DtiError, match=r"write \{token\} in it"):
        D.decode_token(lm, slot.tokenizer, [dog], questions=("What is it?",))
