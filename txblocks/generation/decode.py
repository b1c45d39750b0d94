"""Greedy, sampling and beam-search decoding over a session with a KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from txblocks.generation.config import GenerationConfig, process_logits, sample_filter
from txblocks.generation.onednn_linear import onednn_linear
from txblocks.generation.sessions import DecoderSession, Seq2SeqSession
from txblocks.nn.model import Seq2SeqModel, TransformerModel, check_index_tensor

__all__ = ["generate", "stream"]

Session = DecoderSession | Seq2SeqSession


def _check_request(model: Any, input_ids: Tensor, config: GenerationConfig) -> None:
    """ValueError naming the argument for a request the model cannot serve.

    The prompt's ids are checked by the prefill forward; the ids given as settings are
    checked here, once, since decoding steps feed them back without checks.
    """
    stack = model.decoder if isinstance(model, Seq2SeqModel) else model
    check_index_tensor(input_ids, "input_ids")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
    vocab = stack.vocab_size
    if vocab is not None:
        start = config.decoder_start_token_id if isinstance(model, Seq2SeqModel) else None
        named = [("pad_token_id", config.pad_token_id), ("decoder_start_token_id", start)]
        named += [("eos_token_id", eos) for eos in config.eos_token_id]
        for name, value in named:
            if value is not None and not 0 <= value < vocab:
                raise ValueError(
                    f"{name} {value} is outside the vocabulary: ids must be in 0..{vocab - 1} "
                    f"(vocab_size {vocab})"
                )
    limit = stack.max_seq_len
    seq2seq = isinstance(model, Seq2SeqModel)
    length = 1 if seq2seq else input_ids.shape[1]  # seq2seq decoders start from one token
    if limit is not None and length + config.max_new_tokens > limit:
        what = "the start token" if seq2seq else f"a prompt of {length} tokens"
        fix = (f"lower max_new_tokens to {limit - length} or less" if length < limit
               else "shorten the prompt")
        raise ValueError(
            f"max_new_tokens {config.max_new_tokens} after {what} needs "
            f"{length + config.max_new_tokens} positions, more than this model's max_seq_len "
            f"{limit}: {fix}"
        )


def _session(model: Any, input_ids: Tensor, attention_mask: Tensor | None,
             config: GenerationConfig, expand: int = 1) -> Session:
    if isinstance(model, (Seq2SeqModel, TransformerModel)):
        _check_request(model, input_ids, config)
    if isinstance(model, Seq2SeqModel):
        start = config.decoder_start_token_id
        start = config.pad_token_id if start is None else start
        return Seq2SeqSession(model, input_ids, attention_mask, config.max_new_tokens, start, expand)
    if isinstance(model, TransformerModel):
        if model.spec is not None and getattr(model.spec, "arch", "decoder") != "decoder":
            raise ValueError(f"generate needs a decoder or seq2seq model, not {model.spec.arch}")
        return DecoderSession(model, input_ids, attention_mask, config.max_new_tokens, expand)
    raise TypeError(f"cannot generate with {type(model).__name__}")


class _EmbedsSession(DecoderSession):
    """A decoder prompt given as ``inputs_embeds`` (B, T, E): the prefill reads them, the
    steps feed back the generated tokens. Its prompt has no tokens: (B, 0)."""

    def __init__(self, model: TransformerModel, inputs_embeds: Tensor, attention_mask: Tensor | None,
                 config: GenerationConfig) -> None:
        if not isinstance(model, TransformerModel) or (
                model.spec is not None and getattr(model.spec, "arch", "decoder") != "decoder"):
            raise ValueError("generate(inputs_embeds=...) needs a decoder model")
        if config.num_beams > 1 or config.compile:
            raise ValueError("generate(inputs_embeds=...) does not do beam search nor compile; "
                             "pass input_ids")
        if not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3:
            raise ValueError("inputs_embeds must be a (batch, time, width) tensor")
        batch, length = inputs_embeds.shape[:2]
        limit = model.max_seq_len
        if limit is not None and length + config.max_new_tokens > limit:
            raise ValueError(
                f"max_new_tokens {config.max_new_tokens} after a prompt of {length} positions "
                f"needs {length + config.max_new_tokens}, more than this model's max_seq_len {limit}")
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
        super().__init__(model, attention_mask.long(), attention_mask, config.max_new_tokens)
        self.inputs_embeds = inputs_embeds

    @property
    def prompt(self) -> Tensor:
        return self.input_ids[:, :0]

    def prefill(self) -> Tensor:
        out = self.model(inputs_embeds=self.inputs_embeds, attention_mask=self.mask,
                         position_ids=self.positions, cache=self.cache, logits_to_keep=1)
        self.next_position = self.positions[:, -1:] + 1
        self.cache.skip_input_checks = True
        return out.logits[:, -1]


class _EmbedsSeq2SeqSession(Seq2SeqSession):
    """A seq2seq source given as the encoder's ``inputs_embeds`` (B, S, E), encoded once."""

    def __init__(self, model: Seq2SeqModel, inputs_embeds: Tensor, attention_mask: Tensor | None,
                 config: GenerationConfig) -> None:
        if model.head is None:
            raise ValueError("generation needs a model with an lm head")
        if config.num_beams > 1 or config.compile:
            raise ValueError("generate(inputs_embeds=...) does not do beam search nor compile")
        start = config.decoder_start_token_id
        start = config.pad_token_id if start is None else start
        _check_request(model, torch.full((inputs_embeds.shape[0], 1), start,
                                         device=inputs_embeds.device), config)
        self.model, self.source_mask = model, attention_mask
        self.encoded = model.encode(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        self.cache = model.decoder.new_cache(inputs_embeds.shape[0], config.max_new_tokens + 1)
        self.input_ids = torch.full((inputs_embeds.shape[0], 1), start, device=inputs_embeds.device)


def _embeds_session(model: Any, inputs_embeds: Tensor, attention_mask: Tensor | None,
                    config: GenerationConfig) -> Session:
    if isinstance(model, Seq2SeqModel):
        return _EmbedsSeq2SeqSession(model, inputs_embeds, attention_mask, config)
    return _EmbedsSession(model, inputs_embeds, attention_mask, config)


def _choose(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    if not config.do_sample:
        return logits.argmax(-1)
    probs = sample_filter(logits, config).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def stream(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None,
           **settings: Any) -> Iterator[Tensor]:
    """Yield the next token of every row, (B,), one step at a time.

    Rows that produced an end-of-sequence id yield ``pad_token_id`` afterwards; the
    stream stops when every row has finished or after ``max_new_tokens``.
    Accepts the fields of :class:`GenerationConfig` as keywords (not beam search);
    ``compile=True`` streams from the compiled decoding step.
    """
    inputs_embeds = settings.pop("inputs_embeds", None)
    config = GenerationConfig(**settings)
    if inputs_embeds is not None:
        if input_ids is not None:
            raise ValueError("pass input_ids or inputs_embeds, not both")
        yield from _stream_session(model, _embeds_session(model, inputs_embeds, attention_mask, config),
                                   config, inputs_embeds.device)
        return
    if config.num_beams > 1:
        raise ValueError("stream does not do beam search; use generate(num_beams=...)")
    if config.compile:
        from txblocks.generation.compiled import stream_compiled

        yield from stream_compiled(model, input_ids, attention_mask, config)
        return
    yield from _stream_session(model, lambda: _session(model, input_ids, attention_mask, config),
                               config, input_ids.device)


def _stream_session(model: Any, session: Any, config: GenerationConfig,
                    device: torch.device) -> Iterator[Tensor]:
    """Greedy or sampled decoding of ``session`` (or of what a callable returns), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with onednn_linear(model):
            session = session() if callable(session) else session
        generator = config.make_generator(device)
        tokens = session.prompt
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        eos = torch.tensor(config.eos_token_id, device=tokens.device, dtype=torch.long)
        with onednn_linear(model):
            logits = session.prefill()
        for step in range(config.max_new_tokens):
            scores = process_logits(logits, tokens, config, step)
            nxt = _choose(scores, config, generator)
            nxt = torch.where(finished, config.pad_token_id, nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            yield nxt
            if eos.numel():
                finished |= torch.isin(nxt, eos)
            if finished.all() or step + 1 == config.max_new_tokens:
                return
            with onednn_linear(model):
                logits = session.step(nxt)
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model: Any, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
             **settings: Any) -> Tensor:
    """Generate continuations.

    Args:
        model: a decoder (``TransformerModel`` with an lm head) or a seq2seq model.
        input_ids: (B, T) prompts, left-padded in a batch (decoders) or sources (seq2seq).
        attention_mask: (B, T), 0 on padding.
        **settings: fields of :class:`GenerationConfig` (``max_new_tokens``,
            ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``,
            ``min_new_tokens``, ``eos_token_id``, ``pad_token_id``, ``num_beams``,
            ``length_penalty``, ``seed`` / ``generator``, ``decoder_start_token_id``,
            ``compile`` / ``compile_backend``: a compiled static-shape decoding step).

        inputs_embeds: (B, T, E) instead of ``input_ids`` (rows standing for the token
            table's, as in the forward; a seq2seq model's encoder inputs); greedy or sampled
            only.

    Returns:
        Decoders: (B, T + new) prompt and continuation; with ``inputs_embeds``, (B, new)
        the continuation only. Seq2seq: (B, 1 + new) decoder
        tokens starting with the start token. Finished rows are padded with ``pad_token_id``.
    """
    if settings.get("inputs_embeds") is not None:
        new = torch.stack(list(stream(model, input_ids, attention_mask, **settings)), dim=1)
        if not isinstance(model, Seq2SeqModel):
            return new
        start = settings.get("decoder_start_token_id")
        start = settings.get("pad_token_id", 0) if start is None else start
        return torch.cat([torch.full_like(new[:, :1], start), new], dim=1)
    config = GenerationConfig(**settings)
    if config.compile:
        from txblocks.generation.compiled import generate_compiled

        return generate_compiled(model, input_ids, attention_mask, config)
    if config.num_beams > 1:
        from txblocks.generation.beam import beam_search

        was_training = model.training
        model.eval()
        try:
            with onednn_linear(model):
                session = _session(model, input_ids, attention_mask, config, expand=config.num_beams)
                return beam_search(session, config)
        finally:
            model.train(was_training)
    prompt = input_ids
    if isinstance(model, Seq2SeqModel):
        start = config.pad_token_id if config.decoder_start_token_id is None else config.decoder_start_token_id
        prompt = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    new = list(stream(model, input_ids, attention_mask, **settings))
    return torch.cat([prompt, torch.stack(new, dim=1)], dim=1)
