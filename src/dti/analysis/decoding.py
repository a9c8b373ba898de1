"""Decoding a learned token with the text encoder's own language model: what does the LM say it is?

SANA's text encoder is Gemma-2 (transformers' `Gemma2Model`: the token table, the decoder layers and the
final norm, no LM head). Gemma-2 ties its LM head to its input token table, so those weights *are* the
causal language model, and a token learned in that table can be read back as text without any other
download. `causal_lm_from_encoder` builds it; `decode_token` asks it about the token.

Why the encoder's weights are the whole LM (transformers' Gemma-2 code): `Gemma2Config.tie_word_embeddings`
defaults to True and `Gemma2ForCausalLM` declares `_tied_weights_keys = {"lm_head.weight":
"model.embed_tokens.weight"}`, so a Gemma-2 checkpoint holds no head of its own; `Gemma2ForCausalLM.forward`
is `logits = lm_head(model(ids).last_hidden_state)`, then, with `config.final_logit_softcapping` = c (30.0
for Gemma-2; None skips it), `logits = c * tanh(logits / c)`. `model` is exactly a `Gemma2Model` (what the
SANA pipeline loads as text_encoder, its config with the soft-capping value included). Note the scale: the
table's looked-up rows are multiplied by sqrt(width) on the way in (`Gemma2TextScaledWordEmbedding`), the
head uses the unscaled rows. The same holds for any decoder-only model transformers has a causal-LM class
for whose config ties the embeddings (Gemma, Gemma-3's text model); CLIP and T5/UMT5 encoders have no such
LM and are refused, as are untied models (their head is a matrix the encoder's weights do not hold).

Definitions (what the table holds):

- The LM. `causal_lm_from_encoder(encoder)` is transformers' causal-LM class for the encoder's config
  (Gemma2ForCausalLM for SANA), with the encoder itself as its base model (shared, not copied: rows
  installed or overwritten later, by dti.tokens.install_rows or dti.sample.set_token_rows, are seen by the
  next call) and a head tied to the encoder's *current* input table, read at every call:
  logits(h) = h @ W^T, then the class's own soft-capping. W, the output vocabulary: with
  `learned_outputs=False` (default) the vocabulary table the encoder was loaded with (the bottom
  nn.Embedding under any dti placeholder layers: Gemma-2's 256000 ids), so the learned token is an input
  only and every probability is over the model's own vocabulary; with `learned_outputs=True` that table
  and every installed placeholder row after it (each row as the encoder looks it up, a DTI row as m * v),
  which is the LM one gets by resizing a tied model's embeddings and writing the rows in, as the authors'
  notebook does; the LM can then emit the learned token itself.
- The token: its k ids, an installed placeholder's (`<p>`, `<p>_1`, ...: dti.analysis.residual.resolve_ids)
  or any vocabulary ids (a word's pieces, to compare with). Its ids are spliced into the prompt where a
  question says `{token}`, the text around tokenized on its own (add_special_tokens=False), which is how
  the tokenizer itself splits a text around an added token; so a word's ids and a placeholder's enter the
  same question at the same positions between the same ids.
- Prompt of a question: with the tokenizer's chat template (`chat=None` uses it when there is one, as
  gemma-2-2b-it's tokenizer has): one user turn holding the question and the template's generation prompt
  (for Gemma `<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n`), rendered by
  `apply_chat_template`; the template's own special tokens are the only ones. Plain text (`chat=False`, or
  no template): the tokenizer's start token where it adds one (Gemma's <bos>), then the question.
- Next-token distribution: p = softmax(logits at the prompt's last position) over the head's outputs
  (float32); rows `kind="next"` are its top_k outputs, highest first (ties: the lower id first).
- Continuation: greedy decoding (transformers' `generate` with do_sample=False, one beam), at most
  `max_new_tokens` tokens, stopping at the first stop token: the tokenizer's and the config's end-of-text
  ids and any end-of-turn piece in the vocabulary (`END_OF_TURN`; Gemma's chat turns end in
  <end_of_turn>, which its published generation config stops on too). Deterministic: each token is the
  argmax of the logits (the first id on a tie). The text is `tokenizer.decode` of the new ids, special
  tokens (the stop token among them) skipped; its first token is the rank-1 row of `kind="next"`.
- Token lens: the input is the start token (where the tokenizer adds one) followed by the token's k ids
  and nothing else; rows `kind="lens"`, `vector=j`, are the top_k outputs of the softmax at the position of
  the token's j-th id, i.e. the model's next-token prediction when the token (through its j-th vector) is
  the last input: the vocabulary words the LM's output puts nearest the token in context. For a
  1-vector token, `vector=0` is the only one.

After the DTI authors' notebook (notebooks/gemma_decoding.ipynb in github.com/kunheek/dti), which loads
google/gemma-2-2b-it's causal LM, adds the learned SANA token to it (resizing the tied table, so the head
gains the row) and samples 100 new tokens (top_p 0.9, temperature 0.7) after the plain-text prompt
"<token> What is the Machine Learning?"; it also prints the vocabulary's norm range and the learned token's
norm (dti.analysis.norms measures those). Where this differs: no second download (the encoder's own
weights; SANA 1.5's text encoder is a copy of gemma-2-2b-it's base model, dti.backbones.sana); greedy decoding, so a rerun gives the same text, plus the
top-k probabilities that make a comparison between tokens quantitative and the token lens; the head covers
the vocabulary only unless `learned_outputs=True` (the notebook's setting, where its sample repeats the
token); and the authors' prompt is one of `DEFAULT_QUESTIONS`, beside two that ask what the token is
(in a chat turn where the tokenizer has a template, as gemma-2-2b-it's has; `chat=False` gives their plain
text).

Library code only; the caller builds the backbone, installs the token and picks the questions.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from dti.analysis.modes import eval_mode
from dti.errors import DtiError

TOKEN_FIELD = "{token}"  # where a question puts the token
DEFAULT_QUESTIONS = (
    "What is {token}?",
    "Describe {token} in one sentence.",
    "{token} What is the Machine Learning?",  # the authors' notebook prompt (plain text there)
)
# End-of-turn pieces of common chat templates: generation stops at any of them in the vocabulary.
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")
COLUMNS = ("kind", "question_id", "question", "prompt", "vector", "continuation", "stopped", "rank",
           "token_id", "token", "probability", "logit")


# --- the LM -------------------------------------------------------------------------------------------
def vocabulary_table(encoder: nn.Module) -> torch.Tensor:
    """The table the encoder was loaded with: the bottom nn.Embedding's weight under any dti placeholder
    layers (dti.tokens.PlaceholderEmbedding), unscaled."""
    from dti.tokens import PlaceholderEmbedding

    layer = encoder.get_input_embeddings()
    while isinstance(layer, PlaceholderEmbedding):
        layer = layer.frozen
    return layer.weight


class TiedHead(nn.Module):
    """An LM head tied to an encoder's input table as it is at each call (module docstring: "The LM").

    The encoder is held by reference, not registered as a submodule: its parameters are the LM's base
    model's already, and a second path to them would double them in a state dict.
    """

    def __init__(self, encoder: nn.Module, learned_outputs: bool = False):
        super().__init__()
        object.__setattr__(self, "encoder", encoder)
        self.learned_outputs = bool(learned_outputs)

    @property
    def weight(self) -> torch.Tensor:
        """W [outputs, width]: the vocabulary table, and with learned_outputs every installed row after it."""
        if self.learned_outputs:
            return self.encoder.get_input_embeddings().weight  # a placeholder layer's full table
        return vocabulary_table(self.encoder)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        return nn.functional.linear(hidden, weight.to(hidden.device, hidden.dtype))

    def extra_repr(self) -> str:
        return f"learned_outputs={self.learned_outputs}"


def _refuse(encoder: nn.Module, why: str) -> DtiError:
    return DtiError(f"a {type(encoder).__name__} text encoder cannot decode a token: {why}")


def causal_lm_from_encoder(encoder: nn.Module, *, learned_outputs: bool = False):
    """The causal LM whose base model is `encoder` and whose head is tied to its input table (module
    docstring): transformers' causal-LM class for the encoder's config (Gemma2ForCausalLM for SANA's
    Gemma2Model), sharing the encoder's modules (nothing is copied; the encoder's device, dtype and
    train/eval mode).

    A DtiError names the encoder's class where it is not the base model of a decoder-only LM with tied
    embeddings: CLIP, T5 and UMT5 encoders (no causal-LM class), untied models (a head of their own).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = getattr(encoder, "config", None)
    model_type = getattr(config, "model_type", None)
    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if model_type else None
    if class_name is None:
        raise _refuse(encoder, f"it is not a decoder-only language model (transformers has no causal LM for "
                               f"model type {model_type!r}); only a decoder LM's text encoder (SANA's Gemma-2) "
                               "can be decoded")
    if not getattr(config, "tie_word_embeddings", False):
        raise _refuse(encoder, "its config does not tie the LM head to the input embeddings, so the head is "
                               "a separate matrix that the text encoder's weights do not hold")
    import transformers

    lm_class = getattr(transformers, class_name)
    with torch.device("meta"):  # the shell only: every module of it is replaced by the encoder's below
        lm = lm_class(copy.deepcopy(config))
    prefix = lm.base_model_prefix
    base = getattr(lm, prefix, None)
    if type(base) is not type(encoder):
        raise _refuse(encoder, f"{class_name} is built over a {type(base).__name__}, not over this class "
                               f"(pass the base model, e.g. a {class_name}'s .{prefix})")
    setattr(lm, prefix, encoder)
    lm.set_output_embeddings(TiedHead(encoder, learned_outputs))
    left = [name for name, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:
        raise _refuse(encoder, f"{class_name} has weights besides its base model and head ({left[:3]})")
    lm.training = False  # the shell's flag only: the shared encoder keeps its mode (decode_token runs in eval)
    return lm


# --- prompts ------------------------------------------------------------------------------------------
def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def start_ids(tokenizer) -> list[int]:
    """The start token the tokenizer puts before a text (Gemma: [<bos>]), or [] where it adds none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    empty = list(tokenizer("", add_special_tokens=True)["input_ids"])
    return [bos] if bos is not None and empty[:1] == [bos] else []


def _use_chat(tokenizer, chat: bool | None) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has:
        raise DtiError("chat=True, but the tokenizer has no chat template; use chat=False (plain text) or None")
    return has if chat is None else bool(chat)


def question_ids(tokenizer, question: str, token_ids: Sequence[int], *, chat: bool) -> list[int]:
    """The prompt of one question (module docstring): the token's ids spliced in at each `{token}`."""
    if TOKEN_FIELD not in question:
        raise DtiError(f"question {question!r} does not say where the token goes: write {TOKEN_FIELD} in it")
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        if text.count(TOKEN_FIELD) != question.count(TOKEN_FIELD):
            raise DtiError(f"the chat template changed question {question!r}: its {TOKEN_FIELD} is not in "
                           "the rendered prompt")
        ids: list[int] = []
    else:
        text, ids = question, start_ids(tokenizer)
    parts = text.split(TOKEN_FIELD)
    for i, part in enumerate(parts):
        ids += _ids(tokenizer, part)
        if i < len(parts) - 1:
            ids += list(token_ids)
    return ids


def stop_ids(lm, tokenizer) -> list[int]:
    """Where greedy decoding stops: the tokenizer's and the config's end-of-text ids and the vocabulary's
    end-of-turn pieces (`END_OF_TURN`)."""
    found = [getattr(tokenizer, "eos_token_id", None)]
    config_eos = getattr(lm.config, "eos_token_id", None)
    found += list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]
    vocab = tokenizer.get_vocab()
    found += [vocab[piece] for piece in END_OF_TURN if piece in vocab]
    return sorted({int(i) for i in found if i is not None})


# --- the measurement ----------------------------------------------------------------------------------
def _device(lm) -> torch.device:
    return next(lm.parameters()).device


def _logits(lm, ids: Sequence[int]) -> torch.Tensor:
    """The LM's (soft-capped) logits [len(ids), outputs] of one unpadded sequence, float32 on the CPU."""
    batch = torch.tensor([list(ids)], device=_device(lm))
    return lm(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False).logits[0].float().cpu()


def greedy_continuation(lm, ids: Sequence[int], *, max_new_tokens: int, stops: Sequence[int]) -> list[int]:
    """The ids greedy decoding appends to `ids` (module docstring: "Continuation"), the stop token included
    when it is reached."""
    from transformers import GenerationConfig

    batch = torch.tensor([list(ids)], device=_device(lm))
    pad = getattr(lm.config, "pad_token_id", None)
    settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                eos_token_id=list(stops) or None,
                                pad_token_id=pad if pad is not None else (list(stops) or [0])[0])
    out = lm.generate(input_ids=batch, attention_mask=torch.ones_like(batch), generation_config=settings)
    return out[0, batch.shape[1]:].tolist()


def _top(logits: torch.Tensor, top_k: int) -> list[tuple[int, float, float]]:
    """(id, probability, logit) of the top_k outputs of one position, highest first; a stable sort, so
    ties keep the lower id first."""
    probs = torch.softmax(logits, dim=-1)
    order = torch.sort(probs, descending=True, stable=True).indices[:top_k].tolist()
    return [(i, probs[i].item(), logits[i].item()) for i in order]


def _check_ids(lm, token_ids: Sequence[int]) -> None:
    if not token_ids:
        raise DtiError("the token has no ids")
    rows = lm.get_input_embeddings().num_embeddings
    bad = [i for i in token_ids if not 0 <= i < rows]
    if bad:
        raise DtiError(f"token ids {bad} have no row in the text encoder's table of {rows} rows")


@torch.no_grad()
def decode_token(lm, tokenizer, token: str | Sequence[int], *, questions: Sequence[str] = DEFAULT_QUESTIONS,
                 max_new_tokens: int = 32, top_k: int = 10, chat: bool | None = None) -> pd.DataFrame:
    """What the LM (`causal_lm_from_encoder`) says about a token: per question its greedy continuation and
    next-token distribution, and the token lens (module docstring for every definition).

    token: an installed placeholder's name (its k ids) or token ids (a word's: e.g. Gemma's
    `tokenizer.encode(" dog", add_special_tokens=False)`, the piece '\u2581dog'). questions: texts with
    `{token}` where the token goes (none: the token lens only). chat: use the tokenizer's chat template
    (None: when it has one; False: plain text, as the authors' notebook prompts).

    Columns (`COLUMNS`), one row per output shown:
    kind: "next" (after a question's prompt) or "lens" (the token alone as the last input);
    question_id, question: the question's index in `questions` and its text (NA / None for "lens");
    prompt: the input as text (`tokenizer.decode` of its ids, special tokens kept);
    vector: "lens": which of the token's k ids is the last input (NA for "next");
    continuation: the greedy continuation's text (the same on each row of a question; None for "lens");
    stopped: whether it ended at a stop token (False: it ran to max_new_tokens; NA for "lens");
    rank: 1 = most probable; token_id; token: the output's text (dti.vocab.readable: SentencePiece's word
    start dropped, a word-inner piece marked with a leading '-'); probability: softmax over the head's
    outputs; logit: the soft-capped logit.
    """
    from dti.analysis.directions import token_strings
    from dti.analysis.residual import resolve_ids
    from dti.vocab import readable

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DtiError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DtiError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(questions, str):
        raise DtiError("questions: expected a list of questions, got one string")
    token_ids = resolve_ids(tokenizer, token)
    _check_ids(lm, token_ids)
    use_chat = _use_chat(tokenizer, chat)
    stops = stop_ids(lm, tokenizer)
    outputs = lm.get_output_embeddings().out_features
    strings = token_strings(tokenizer, outputs)
    byte_level = any(t is not None and t.endswith("</w>") for t in strings)

    def text(i: int) -> str:
        return readable(strings[i], byte_level)

    rows = []
    with eval_mode(lm):
        for q, question in enumerate(questions):
            ids = question_ids(tokenizer, question, token_ids, chat=use_chat)
            new = greedy_continuation(lm, ids, max_new_tokens=max_new_tokens, stops=stops)
            stopped = bool(new) and new[-1] in stops
            continuation = tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
            prompt = tokenizer.decode(ids, skip_special_tokens=False)
            for rank, (i, p, logit) in enumerate(_top(_logits(lm, ids)[-1], top_k), 1):
                rows.append(("next", q, question, prompt, None, continuation, stopped, rank, i, text(i), p, logit))
        ids = start_ids(tokenizer) + list(token_ids)
        logits = _logits(lm, ids)
        prompt = tokenizer.decode(ids, skip_special_tokens=False)
        first = len(ids) - len(token_ids)
        for vector in range(len(token_ids)):
            for rank, (i, p, logit) in enumerate(_top(logits[first + vector], top_k), 1):
                rows.append(("lens", None, None, prompt, vector, None, None, rank, i, text(i), p, logit))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("question_id", "vector"):
        table[column] = table[column].astype("Int64")
    table["stopped"] = table["stopped"].astype("boolean")
    return table


__all__ = ["COLUMNS", "DEFAULT_QUESTIONS", "END_OF_TURN", "TiedHead", "causal_lm_from_encoder", "decode_token",
           "question_ids", "start_ids", "stop_ids", "vocabulary_table"]
