"""``generate(..., compile=True)``: an eager prefill, then a compiled static-shape step.

Seq2seq models encode the source and run the start token eagerly; the cross-attention keys
and values that this first step computes stay fixed in the static cache for the later steps.

The prefill runs the prompt eagerly (logits of the last position only) into an ordinary
cache, which is copied into a :class:`~txblocks.nn.cache.StaticKVCache` of L slots; each
later token runs :func:`~txblocks.generation.static_step.decode_step` compiled with
``torch.compile(fullgraph=True, dynamic=False)``: one compilation per (batch, cache length,
dtype, device, sampling settings), reused by later calls of the same shapes. On CUDA the
compiled step is captured once per generation and replayed as a CUDA graph
(:class:`~txblocks.generation.cuda_graph.GraphedStep`). L is the
prompt plus ``max_new_tokens`` rounded up to a multiple of :data:`CACHE_BUCKET` (at most
the model's ``max_seq_len``), so prompts of nearby lengths share a compilation.

The host reads the device ``done`` flags once every :data:`CHECK_EVERY` steps, so a batch
whose rows all ended may run up to that many steps more; the output is cut where eager
decoding stops, so the two return the same tensor. :func:`stream_compiled` reads each token
(and the flags) every step: a stream needs each token on the host anyway.

Shapes: B batch, T prompt, L cache slots, V vocabulary.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from txblocks.generation.config import GenerationConfig
from txblocks.generation.cuda_graph import WARMUP_STEPS, GraphedStep, use_cuda_graph
from txblocks.generation.kept import Kept, clear, keep, kept_for, refill
from txblocks.generation.onednn_linear import onednn_linear
from txblocks.generation.replay import RecordingBackend, run_recorded
from txblocks.generation.sessions import _left_padded
from txblocks.generation.static_sampling import DecodeState, Sampling, pick
from txblocks.generation.static_step import decode_step, stack_and_head, static_step_problems
from txblocks.generation.streaming_matvec import StreamingMatVec
from txblocks.nn.cache import StaticKVCache
from txblocks.nn.model import Seq2SeqModel, TransformerModel

__all__ = ["CACHE_BUCKET", "CHECK_EVERY", "cache_length", "compiled_step", "generate_compiled",
           "stream_compiled"]

#: Cache lengths are rounded up to a multiple of this.
CACHE_BUCKET = 64
#: Steps between two reads of the device ``done`` flags.
CHECK_EVERY = 8
#: Compilations one model may keep (``torch.compile``'s ``recompile_limit``, per model).
RECOMPILE_LIMIT = 64
#: Keep a decoder's cache and state for its next generation without CUDA graphs too (off:
#: only a graph needs the same tensors; tests turn it on to check the refill on CPU).
KEEP_WITHOUT_GRAPHS = False

#: Inductor settings of the step: no size, stride and alignment checks of its inputs in the
#: generated wrapper (~150 of them, one per weight; 75 us of a step). Dynamo's guards check
#: the same on a generation's first step, and later steps pass the same tensors.
STEP_INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False}

_compiled: weakref.WeakKeyDictionary[Any, dict[str, Callable[..., None]]] = weakref.WeakKeyDictionary()
#: Per model, the (backend, batch, cache slots, dtype, sampling) its compiled step has run
#: for on CUDA: a later generation of those captures its graph without warm-up steps.
_warmed: weakref.WeakKeyDictionary[Any, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def cache_length(needed: int, limit: int | None) -> int:
    """``needed`` slots rounded up to a multiple of :data:`CACHE_BUCKET`, at most ``limit``."""
    rounded = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
    return rounded if limit is None else max(needed, min(rounded, limit))


def compiled_step(model: TransformerModel, backend: str = "inductor") -> Callable[..., None]:
    """``decode_step`` compiled for ``model`` with ``backend``, its compilations kept apart
    from other models' (so each has its own :data:`RECOMPILE_LIMIT`). With inductor, the
    step's CPU matrix-vector products and one-query attention are compiled as streaming
    reductions (:class:`~txblocks.generation.streaming_matvec.StreamingMatVec`)."""
    per_model = _compiled.setdefault(model, {})
    if backend not in per_model:
        options = {"pre_grad_custom_pass": StreamingMatVec(), **STEP_INDUCTOR_OPTIONS} \
            if backend == "inductor" else None
        per_model[backend] = torch.compile(decode_step, fullgraph=True, dynamic=False,
                                           backend=RecordingBackend(backend, options),
                                           recompile_limit=RECOMPILE_LIMIT, isolate_recompiles=True)
    return per_model[backend]


def _first_step(step: Callable[..., None], args: tuple[Any, ...], graphed: bool) -> Callable[[], None]:
    """Run a generation's first compiled step (dynamo checks every guard); return what runs
    each later one, with the same tensors: the CUDA graph (``step`` is a
    :class:`~txblocks.generation.cuda_graph.GraphedStep`), else the compiled graph called
    directly (:func:`~txblocks.generation.replay.run_recorded`), else (the step did not run
    compiled) ``step`` without dynamo's guard checks (``skip_guard_eval_unsafe``)."""
    if graphed:
        step(*args)
        return lambda: step(*args)
    replay = run_recorded(lambda: step(*args))
    if replay is not None:
        return replay

    def unguarded() -> None:
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            step(*args)

    return unguarded


def _check(model: Any, config: GenerationConfig) -> None:
    seq2seq = isinstance(model, Seq2SeqModel)
    if not (seq2seq or isinstance(model, TransformerModel)) or (
            not seq2seq and model.spec is not None
            and getattr(model.spec, "arch", "decoder") != "decoder"):
        kind = getattr(getattr(model, "spec", None), "arch", None) or type(model).__name__
        raise ValueError(f"compile=True decodes decoder and seq2seq models only, not {kind}; "
                         "use compile=False (the default)")
    if config.num_beams > 1:
        raise ValueError("compile=True does not do beam search (num_beams > 1)")
    if model.head is None:
        raise ValueError("generation needs a model with an lm head")
    problems = static_step_problems(stack_and_head(model)[0])
    if problems:
        raise ValueError("compile=True cannot decode this model: " + "; ".join(problems))


def _state(input_ids: Tensor, positions: Tensor, cache: StaticKVCache, vocab: int,
           config: GenerationConfig) -> DecodeState:
    batch, prompt = input_ids.shape
    device = input_ids.device
    tokens = torch.full((batch, cache.capacity), config.pad_token_id, dtype=torch.long, device=device)
    tokens[:, :prompt] = input_ids
    state = DecodeState(
        tokens=tokens, index=cache.index, position=positions[:, -1:] + 1,
        step=torch.zeros(1, dtype=torch.long, device=device),
        done=torch.zeros(batch, dtype=torch.bool, device=device),
        end=torch.full((batch,), config.max_new_tokens, dtype=torch.long, device=device))
    if config.eos_token_id:
        state.eos_ids = torch.tensor(config.eos_token_id, dtype=torch.long, device=device)
        state.eos_vocab = torch.zeros(vocab, dtype=torch.bool, device=device)
        state.eos_vocab[state.eos_ids] = True
    if config.repetition_penalty != 1.0:
        state.seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
        state.seen.scatter_(1, input_ids, True)
    if config.do_sample:
        state.noise = torch.empty(batch, vocab, dtype=torch.float32, device=device)
    return state


def _prefill(model: TransformerModel | Seq2SeqModel, input_ids: Tensor, attention_mask: Tensor | None,
             config: GenerationConfig, into: StaticKVCache | None = None,
             ) -> tuple[Tensor, Tensor, Tensor, StaticKVCache]:
    """Run the prompt eagerly: (the decoder's prompt (B, T), its positions (B, T), the logits
    of its last position (B, V), the static cache holding its keys and values: ``into``, a
    kept decoder cache of the same shapes, cleared and refilled, else a new one).

    Seq2seq: the source is encoded once, the decoder's prompt is the start token, and the
    cross-attention keys and values that its forward computes stay in the cache."""
    stack, _ = stack_and_head(model)
    param = next(model.parameters())
    windows = [getattr(strategy, "cache_window", None) for strategy in stack.masks]
    shapes = [(b.attention.n_kv_heads, b.attention.head_dim) for b in stack.blocks]
    if isinstance(model, Seq2SeqModel):
        batch = input_ids.shape[0]
        start = config.decoder_start_token_id
        start = config.pad_token_id if start is None else start
        prompt = torch.full((batch, 1), start, dtype=torch.long, device=input_ids.device)
        positions = torch.zeros_like(prompt)
        encoded = model.encode(input_ids, attention_mask)
        prefill = stack.new_cache(batch, 1)
        logits = model(attention_mask=attention_mask, decoder_input_ids=prompt,
                       encoder_outputs=encoded, cache=prefill).logits
        length = cache_length(1 + config.max_new_tokens, stack.max_seq_len)
        cache = StaticKVCache.empty(shapes, batch, length, dtype=param.dtype, device=param.device,
                                    windows=windows)
        cache.fill(prefill, None)
        cache.context = encoded
        cache.context_valid = attention_mask.bool() if attention_mask is not None else None
        return prompt, positions, logits[:, -1], cache
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    _left_padded(mask)
    batch, length = input_ids.shape
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    padding = mask if not bool(mask.all()) else None  # one host check, as DecoderSession
    prefill = model.new_cache(batch, length)
    logits = model(input_ids, padding, position_ids=positions, cache=prefill, logits_to_keep=1).logits
    slots = cache_length(length + config.max_new_tokens, model.max_seq_len)
    if into is not None:
        clear(into)
        cache = into
    else:
        cache = StaticKVCache.empty(shapes, batch, slots, dtype=param.dtype, device=param.device,
                                    windows=windows)
    cache.fill(prefill, padding)
    return input_ids, positions, logits[:, -1], cache


def _step_shapes(model: Any, input_ids: Tensor, config: GenerationConfig) -> tuple[Any, ...]:
    """What one compilation of the step is for: (backend, batch, cache slots, device, dtype,
    sampling settings)."""
    stack, _ = stack_and_head(model)
    batch, length = input_ids.shape
    prompt = 1 if isinstance(model, Seq2SeqModel) else length  # seq2seq: the start token
    slots = cache_length(prompt + config.max_new_tokens, stack.max_seq_len)
    return (config.compile_backend, batch, slots, input_ids.device,
            next(model.parameters()).dtype, Sampling.of(config))


def _kept_key(model: Any, shapes: tuple[Any, ...], config: GenerationConfig,
              graphed: bool) -> tuple[Any, ...] | None:
    """What a decoder generation's kept cache, state and graph are reused for (see
    :mod:`~txblocks.generation.kept`); None where nothing is kept (seq2seq, no graph)."""
    if isinstance(model, Seq2SeqModel) or not (graphed or KEEP_WITHOUT_GRAPHS):
        return None
    return (*shapes, bool(config.cuda_graph), _weight_addresses(model))


def _weight_addresses(model: torch.nn.Module) -> int:
    """A hash of where the weights and buffers are: a graph reads them at the addresses it
    recorded, so ``model.cpu().cuda()`` (same device and dtype, new memory) must not reuse it."""

    def address(t: Tensor) -> int:
        try:
            return t.data_ptr()
        except RuntimeError:  # a tensor subclass without storage of its own (torchao)
            return id(t)

    return hash(tuple(address(t) for t in itertools.chain(model.parameters(), model.buffers())))


def _decode(model: TransformerModel | Seq2SeqModel, input_ids: Tensor, attention_mask: Tensor | None,
            config: GenerationConfig, check_every: int) -> Iterator[DecodeState]:
    """Prefill, then yield the state after each new token (the device ``done`` flags are read
    every ``check_every`` steps; decoding stops early once every row is done)."""
    from txblocks.generation.decode import _check_request

    _check(model, config)
    _check_request(model, input_ids, config)
    graphed = use_cuda_graph(config.cuda_graph, input_ids.device)
    shapes = _step_shapes(model, input_ids, config)
    key = _kept_key(model, shapes, config, graphed)
    kept = kept_for(model, key)
    was_training = model.training
    model.eval()
    try:
        with onednn_linear(model):
            prompt, positions, logits, cache = _prefill(model, input_ids, attention_mask, config,
                                                        into=kept.cache if kept else None)
        state = _state(prompt, positions, cache, logits.shape[-1], config)
        if kept is not None:  # the tensors its graph reads and writes
            refill(kept.state, state)
            state = kept.state
        sampling = Sampling.of(config)
        generator = config.make_generator(input_ids.device)
        if state.noise is not None:
            state.noise.exponential_(generator=generator)
        pick(logits, state, sampling)  # the first new token, eagerly
        yield state
        if kept is not None:
            step = kept.step
        else:
            step = compiled_step(model, config.compile_backend)
            if graphed:  # the graph records this cache's and state's addresses
                step = _graphed(model, step, shapes, config)
            if key is not None:
                kept = Kept(key, cache, state, step)
                keep(model, kept)
        later = None
        for done in range(1, config.max_new_tokens):
            if state.eos_ids is not None and done % check_every == 0 and bool(state.done.all()):
                return
            if state.noise is not None:
                state.noise.exponential_(generator=generator)
            if later is None:
                later = _first_step(step, (model, cache, state, sampling), graphed)
            else:
                later()
            yield state
    finally:
        model.train(was_training)
        if kept is not None:
            kept.busy = False


def _graphed(model: Any, step: Callable[..., None], shapes: tuple[Any, ...],
             config: GenerationConfig) -> GraphedStep:
    """``step`` replayed as a CUDA graph, warmed up only the first time the model decodes
    with these ``shapes``."""
    warmed = _warmed.setdefault(model, set())
    graphed = GraphedStep(step, required=bool(config.cuda_graph),
                          warmup=0 if shapes in warmed else WARMUP_STEPS)
    warmed.add(shapes)
    return graphed


@torch.no_grad()
def generate_compiled(model: TransformerModel, input_ids: Tensor, attention_mask: Tensor | None,
                      config: GenerationConfig) -> Tensor:
    """What :func:`~txblocks.generation.generate` returns, decoded by a compiled step.

    Args:
        model: a decoder or seq2seq model with an lm head (see :func:`static_step_problems`
            for what the step supports).
        input_ids: (B, T) prompts, left-padded in a batch (decoders), or (B, S) sources.
        attention_mask: (B, T), 0 on padding.
        config: with ``compile=True``; ``compile_backend`` picks the ``torch.compile``
            backend.

    Returns:
        (B, T + new): the prompt and the continuation (seq2seq: (B, 1 + new), the start token
        first), finished rows padded.

    Raises:
        ValueError: a model or setting the compiled step does not support, naming it.
    """
    *_, state = _decode(model, input_ids, attention_mask, config, CHECK_EVERY)  # run to the end
    new = int(state.end.max()) if state.eos_ids is not None else config.max_new_tokens
    prompt = 1 if isinstance(model, Seq2SeqModel) else input_ids.shape[1]
    return state.tokens[:, :prompt + new].clone()


@torch.no_grad()
def stream_compiled(model: TransformerModel, input_ids: Tensor, attention_mask: Tensor | None,
                    config: GenerationConfig) -> Iterator[Tensor]:
    """What :func:`~txblocks.generation.stream` yields, (B,) per step, decoded by a compiled
    step. Reading each token is a host sync per step, which a stream needs anyway; the
    ``done`` flags are then read every step too, so it stops where eager streaming stops."""
    for state in _decode(model, input_ids, attention_mask, config, 1):
        yield state.tokens.index_select(1, state.index)[:, 0]
