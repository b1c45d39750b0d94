"""Stacks of blocks, and the encoder / decoder / encoder–decoder models built from them.

Shapes: B batch, T time, S encoder time, C d_model, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from txblocks.attention.mask import AttentionMask
from txblocks.attention.strategies import FullStrategy, MaskStrategy
from txblocks.nn.attention import Attention, ScoreTerm
from txblocks.nn.block import TransformerBlock, sum_aux
from txblocks.nn.cache import CrossCache, KVCache, LayerCache
from txblocks.nn.embeddings import Embeddings
from txblocks.nn.positional import PositionalScheme, has_score_bias


@dataclass
class ModelOutput:
    """What a forward returns.

    Attributes:
        last_hidden_state: (B, T, C) after the final norm (the decoder's, for seq2seq).
        logits: the head's output ((B, T, V) for language models), or None without a head.
        aux_loss: the sum of auxiliary losses (MoE load balancing), or None.
        encoder_last_hidden_state: (B, S, C), seq2seq models only.
        cache: the key/value cache passed in, updated with this call's tokens.
    """

    last_hidden_state: Tensor
    logits: Tensor | None = None
    aux_loss: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None
    cache: KVCache | None = None


def _check_ids(input_ids: Tensor, attention_mask: Tensor | None, what: str = "input_ids",
               mask_name: str = "attention_mask") -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"{what} must be (batch, time), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"{mask_name} has shape {tuple(attention_mask.shape)}, {what} "
            f"{tuple(input_ids.shape)}: they must match"
        )


_INDEX_DTYPES = (torch.long, torch.int)


def check_index_tensor(value: Any, what: str) -> None:
    """``value`` must be a tensor of integer ids (what ``nn.Embedding`` takes)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of token ids, got {type(value).__name__}")
    if value.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"{what} must hold integer ids (torch.long or torch.int), got {value.dtype}"
        )


def _check_ranges(checks: list[tuple[str, Tensor, int, str]]) -> None:
    """Each ``(name, ids, limit, meaning)``: every id in ``0 .. limit - 1``, else ValueError.

    One host sync for all of them (a min/max per tensor, read back together).
    """
    checks = [c for c in checks if c[1].numel()]
    if not checks:
        return
    bounds = torch.stack([torch.stack(torch.aminmax(ids)).long() for _, ids, _, _ in checks]).tolist()
    for (name, ids, limit, meaning), (low, high) in zip(checks, bounds, strict=True):
        if low < 0 or high >= limit:
            where = ((ids < 0) | (ids >= limit)).nonzero()[0].tolist()
            value = ids[tuple(where)].item()
            index = ", ".join(str(i) for i in where)
            raise ValueError(f"{name}[{index}] is {value}, {meaning}")


def context_limit(spec: Any) -> int | None:
    """The longest sequence (cached + new tokens) a model of ``spec`` takes: ``max_seq_len``.

    None (no limit) without a spec, and for RoPE with ``dynamic`` scaling, whose base is
    made to grow past ``max_seq_len``.
    """
    if spec is None:
        return None
    scaling = getattr(getattr(spec, "position", None), "scaling", None)
    if getattr(scaling, "type", None) == "dynamic":
        return None
    return getattr(spec, "max_seq_len", None)


class TransformerStack(nn.Module):
    """Embeddings, blocks and a final norm: the body of every model.

    Args:
        embeddings: token (and segment) embeddings, or None when the caller passes
            ``inputs_embeds`` (ViT patches).
        position: the positional scheme, shared by every block.
        blocks: the blocks, in order.
        masks: one mask strategy per block (layers may differ: local/global stacks).
        final_norm: a norm after the last block, or None.
        project_out: a linear layer after the final norm (OPT-350m's projection back to the
            token table's width), or None.

    One block may appear several times in ``blocks``: those layers share its parameters
    (ALBERT), each with its own mask and cache entry. A positional scheme whose ``per_layer``
    attribute is true (UMT5's relative bias) is asked for each layer's attention bias with
    ``attention_bias(..., layer=i)``. A scheme that overrides ``score_bias`` (DeBERTa's
    disentangled attention) is asked for a score term by each layer's self-attention, bound
    to the layer's index and query offset (:func:`~txblocks.nn.positional.has_score_bias`).
    """

    def __init__(self, embeddings: Embeddings | None, position: PositionalScheme,
                 blocks: list[TransformerBlock], masks: list[MaskStrategy],
                 final_norm: nn.Module | None = None, *,
                 project_out: nn.Module | None = None) -> None:
        super().__init__()
        if len(masks) != len(blocks):
            raise ValueError(f"got {len(masks)} mask strategies for {len(blocks)} blocks")
        self.embeddings = embeddings
        self.position = position
        self.blocks = nn.ModuleList(blocks)
        self.masks = list(masks)
        self.final_norm = final_norm
        self.project_out = project_out
        self._cross = FullStrategy()
        #: Most positions (cached + new) a call may reach; None = no limit. Models built
        #: from a spec take its ``max_seq_len`` (see :func:`context_limit`).
        self.max_seq_len: int | None = None

    @property
    def vocab_size(self) -> int | None:
        """Rows of the token table (valid ids are ``0 .. vocab_size - 1``), or None."""
        return self.embeddings.tokens.num_embeddings if self.embeddings is not None else None

    def new_cache(self, batch: int, max_len: int, *, dtype: torch.dtype | None = None,
                  device: torch.device | None = None) -> KVCache:
        """An empty cache for ``batch`` rows of up to ``max_len`` positions.

        Sliding-window layers keep a buffer of their window only; cross-attention layers
        get a slot for the encoder's keys and values.

        Raises:
            ValueError: ``batch`` or ``max_len`` is not a positive integer.
        """
        for name, value in (("batch", batch), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"new_cache: {name} must be a positive integer, got {value!r}")
        param = next(self.parameters())
        dtype, device = dtype or param.dtype, device or param.device
        layers, cross = [], []
        for block, strategy in zip(self.blocks, self.masks, strict=True):
            attention = block.attention
            layers.append(LayerCache(batch, max_len, attention.n_kv_heads, attention.head_dim,
                                     dtype=dtype, device=device, window=getattr(strategy, "cache_window", None)))
            if block.cross_attention is not None:
                cross.append(CrossCache())
        return KVCache(layers, cross)

    def _padding(self, attention_mask: Tensor | None, cache: KVCache | None, new: int) -> Tensor | None:
        """Key padding (B, keys so far) from the caller's mask of the new tokens or of all."""
        padding = attention_mask.bool() if attention_mask is not None else None
        if cache is None:
            return padding
        total = cache.position + new
        if padding is not None and padding.shape[1] == new and total != new:
            previous = cache.padding
            if previous is None:
                previous = padding.new_ones(padding.shape[0], cache.position)
            padding = torch.cat([previous, padding], dim=1)
        elif padding is None and cache.padding is not None:
            padding = torch.cat([cache.padding, cache.padding.new_ones(cache.padding.shape[0], new)], 1)
        if padding is not None and padding.shape[1] != total:
            raise ValueError(
                f"attention_mask covers {padding.shape[1]} positions; with {cache.position} cached "
                f"and {new} new tokens it must cover {new} or {total}"
            )
        cache.padding = padding
        return padding

    def attention_masks(self, length: int, *, device: torch.device, dtype: torch.dtype,
                        attention_mask: Tensor | None = None, cache: KVCache | None = None,
                        padding: Tensor | None = None, **mask_inputs: Any) -> list[AttentionMask]:
        """One mask object per block; blocks with the same strategy and key span share it."""
        if padding is None and attention_mask is not None:
            padding = attention_mask.bool()
        position = cache.position if cache is not None else 0
        per_layer = bool(getattr(self.position, "per_layer", False))
        built: dict[tuple[int, int, int, int], AttentionMask] = {}
        out = []
        for i, strategy in enumerate(self.masks):
            start, keys = cache.layers[i].span(position, length) if cache is not None else (0, length)
            key = (id(strategy), start, keys, i if per_layer else -1)
            if key not in built:
                offset = position - start
                key_padding = padding[:, start:start + keys] if padding is not None else None
                mask = strategy(length, keys, key_padding=key_padding, q_offset=offset, **mask_inputs)
                layer = {"layer": i} if per_layer else {}
                bias = self.position.attention_bias(length, keys, offset, strategy.causal, device,
                                                    dtype, **layer)
                built[key] = mask.with_bias(bias) if bias is not None else mask
            out.append(built[key])
        return out

    def _score_term(self, layer: int, q_offset: int) -> ScoreTerm:
        """Layer ``layer``'s score term: the scheme's ``score_bias`` bound to the layer."""
        position = self.position

        def score(q: Tensor, k: Tensor, attention: Attention) -> Tensor | None:
            return position.score_bias(q, k, attention, layer=layer, q_offset=q_offset)

        return score

    def _check_inputs(self, input_ids: Tensor | None, token_type_ids: Tensor | None,
                      position_ids: Tensor | None, cache: KVCache | None, batch: int,
                      length: int, ids_name: str = "input_ids") -> None:
        """ValueError naming the argument for inputs that would fail deep inside torch.

        Shapes and dtypes cost nothing. The id ranges cost one host sync; they are not
        checked under ``torch.compile`` nor with a cache marked ``skip_input_checks``
        (generation checks the prompt once, then feeds the model its own tokens).
        """
        start = 0
        if cache is not None:
            if len(cache.layers) != len(self.blocks):
                raise ValueError(
                    f"cache has {len(cache.layers)} layers, this model {len(self.blocks)}: "
                    "create the cache with this model's new_cache"
                )
            if cache.batch != batch:
                raise ValueError(
                    f"cache was created for batch size {cache.batch}, but this call has {batch} "
                    "rows: create one cache per batch with new_cache(batch, max_len)"
                )
            start = cache.position
        if self.max_seq_len is not None and start + length > self.max_seq_len:
            what = ids_name if input_ids is not None else "inputs_embeds"
            after = f" after {start} cached ({start + length} positions)" if start else ""
            raise ValueError(
                f"{what} has {length} tokens{after}, more than this model's max_seq_len "
                f"{self.max_seq_len}: shorten the input, or build the model with a larger max_seq_len"
            )
        types = self.embeddings.token_types if self.embeddings is not None else None
        if token_type_ids is not None:
            check_index_tensor(token_type_ids, "token_type_ids")
            if types is None:
                raise ValueError(
                    "token_type_ids given, but this model has no token types "
                    "(its spec's embedding.token_types is 0)"
                )
            if input_ids is not None and token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids has shape {tuple(token_type_ids.shape)}, {ids_name} "
                    f"{tuple(input_ids.shape)}: they must match"
                )
        if position_ids is not None:
            check_index_tensor(position_ids, "position_ids")
            if position_ids.dim() == 0 or position_ids.shape[-1] != length:
                raise ValueError(
                    f"position_ids must be (batch or 1, {length}), got shape {tuple(position_ids.shape)}"
                )
        if torch.compiler.is_compiling() or (cache is not None and cache.skip_input_checks):
            return
        checks: list[tuple[str, Tensor, int, str]] = []
        vocab = self.vocab_size
        if input_ids is not None and vocab is not None:
            checks.append((ids_name, input_ids, vocab,
                           f"outside the vocabulary: ids must be in 0..{vocab - 1} (vocab_size {vocab})"))
        if token_type_ids is not None and types is not None:
            n = types.num_embeddings
            checks.append(("token_type_ids", token_type_ids, n,
                           f"outside the model's {n} token types: they must be in 0..{n - 1}"))
        if position_ids is not None and self.max_seq_len is not None:
            n = self.max_seq_len
            checks.append(("position_ids", position_ids, n,
                           f"outside the model's positions: they must be in 0..{n - 1} (max_seq_len {n})"))
        _check_ranges(checks)

    def run(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        seq_lens: list[list[int]] | None = None,
        prefix_lengths: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: KVCache | None = None,
        ids_name: str = "input_ids",
    ) -> tuple[Tensor, Tensor | None]:
        """Embed and run the blocks: (B, T, C), aux loss.

        ``inputs_embeds`` (B, T, E) replaces ``input_ids``: in a stack with embeddings it
        stands for the token table's rows (scale, segments, positions and the embedding norm
        still apply); in one without (ViT), it is the first hidden state, positions added.

        With ``cache``, the tokens continue the cached ones: positions start at
        ``cache.position`` and ``attention_mask`` may cover the new tokens or all of them.
        ``ids_name`` is what errors call ``input_ids`` (``decoder_input_ids``).

        Raises:
            ValueError: an input that does not fit the model, naming the argument: ids that
                are not integers or not in the vocabulary, token types or positions out of
                range, more positions than ``max_seq_len``, a cache of another batch size.
        """
        if inputs_embeds is None:
            if input_ids is None or self.embeddings is None:
                raise ValueError("pass input_ids (or inputs_embeds to a stack without embeddings)")
            check_index_tensor(input_ids, ids_name)
            if input_ids.dim() != 2:
                raise ValueError(f"{ids_name} must be (batch, time), got shape {tuple(input_ids.shape)}")
            length, device = input_ids.shape[1], input_ids.device
        else:
            embeds_name = ids_name.replace("input_ids", "inputs_embeds")
            if input_ids is not None:
                raise ValueError(f"pass {ids_name} or {embeds_name}, not both")
            if not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3:
                shape = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, Tensor) else type(inputs_embeds).__name__
                raise ValueError(f"{embeds_name} must be (batch, time, width), got {shape}")
            length, device = inputs_embeds.shape[1], inputs_embeds.device
        if cache is None:
            _check_ids(input_ids if input_ids is not None else inputs_embeds[..., 0], attention_mask)
        self._check_inputs(input_ids if inputs_embeds is None else None, token_type_ids, position_ids,
                           cache, (input_ids if inputs_embeds is None else inputs_embeds).shape[0], length,
                           ids_name)
        start = cache.position if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(start, start + length, device=device)[None]
        if self.embeddings is not None:  # inputs_embeds replace the token table's rows only
            x = self.embeddings(input_ids, self.position.embed(position_ids), token_type_ids,
                                inputs_embeds=inputs_embeds)
        else:
            extra = self.position.embed(position_ids)
            x = inputs_embeds if extra is None else inputs_embeds + extra
        rotary = self.position.rotary(position_ids)

        def rotate(t: Tensor) -> Tensor:
            return self.position.rotate(t, rotary)

        mask_inputs: dict[str, Any] = {}
        if seq_lens is not None:
            mask_inputs["seq_lens"] = seq_lens
        if prefix_lengths is not None:
            mask_inputs["prefix_lengths"] = prefix_lengths
        padding = self._padding(attention_mask, cache, length)
        token_mask = padding[:, -length:] if padding is not None else None
        masks = self.attention_masks(length, device=x.device, dtype=x.dtype, cache=cache,
                                     padding=padding, **mask_inputs)
        cross = None
        if context is not None:
            context_padding = context_mask.bool() if context_mask is not None else None
            cross = self._cross(length, context.shape[1], key_padding=context_padding, q_offset=0)
        aux_losses = []
        cross_caches = iter(cache.cross) if cache is not None else None
        scores = has_score_bias(self.position)
        for i, (block, mask) in enumerate(zip(self.blocks, masks, strict=True)):
            layer_cache = cache.layers[i] if cache is not None else None
            cross_cache = next(cross_caches) if cross_caches and block.cross_attention is not None else None
            x, aux = block(x, mask, rotate if rotary is not None else None, context, cross,
                           cache=layer_cache, cross_cache=cross_cache, token_mask=token_mask,
                           score=self._score_term(i, mask.q_offset) if scores else None)
            aux_losses.append(aux)
        if cache is not None:
            cache.position += length
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x, sum_aux(aux_losses, x)


class TransformerModel(TransformerStack):
    """An encoder or a decoder: a :class:`TransformerStack` and an optional head."""

    def __init__(self, embeddings: Embeddings, position: PositionalScheme,
                 blocks: list[TransformerBlock], masks: list[MaskStrategy],
                 final_norm: nn.Module | None = None, head: nn.Module | None = None, *,
                 project_out: nn.Module | None = None) -> None:
        super().__init__(embeddings, position, blocks, masks, final_norm, project_out=project_out)
        self.head = head
        self.spec: Any = None  # the spec it was built from, set by txblocks.build

    @property
    def spec(self) -> Any:
        """The spec the model was built from; setting it sets ``max_seq_len`` too."""
        return self.__dict__.get("_spec")

    @spec.setter
    def spec(self, value: Any) -> None:
        self.__dict__["_spec"] = value
        self.max_seq_len = context_limit(value)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        seq_lens: list[list[int]] | None = None,
        prefix_lengths: Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int | None = None,
    ) -> ModelOutput:
        """Run the model.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1 for real tokens and 0 for padding.
            inputs_embeds: (B, T, E) instead of ``input_ids``: rows standing for the token
                table's (``model.embeddings.tokens(input_ids)`` gives the same output).
            token_type_ids: (B, T) segment ids, for models with token types.
            position_ids: (B, T) positions; default 0..T-1.
            seq_lens: per row, the lengths of packed sequences (``block_diagonal`` masks).
            prefix_lengths: (B,) bidirectional prefix lengths (``prefix_lm`` masks).
            cache: from :meth:`new_cache`; the call continues the cached tokens and
                the returned ``output.cache`` holds them all (incremental decoding).
            logits_to_keep: apply a per-token head (``lm``, ``token_classifier``) to the
                last N positions only; generation's prefill needs 1. None = all.
        """
        x, aux = self.run(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                          token_type_ids=token_type_ids,
                          position_ids=position_ids, seq_lens=seq_lens, prefix_lengths=prefix_lengths,
                          cache=cache)
        head_mask = attention_mask if cache is None else None
        head_in = x
        if logits_to_keep is not None:
            if logits_to_keep < 1:
                raise ValueError(f"logits_to_keep must be >= 1 (or None for all), got {logits_to_keep}")
            head_in = x[:, -logits_to_keep:]
            head_mask = head_mask[:, -logits_to_keep:] if head_mask is not None else None
        logits = self.head(head_in, head_mask) if self.head is not None else None
        return ModelOutput(last_hidden_state=x, logits=logits, aux_loss=aux, cache=cache)

    def generate(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                 **settings: Any) -> Tensor:
        """Generate tokens; see :func:`txblocks.generation.generate` for the settings
        (``inputs_embeds=`` instead of ``input_ids``)."""
        from txblocks.generation import generate

        return generate(self, input_ids, attention_mask, **settings)

    def stream(self, input_ids: Tensor, attention_mask: Tensor | None = None, **settings: Any) -> Any:
        """Iterate over generated tokens, (B,) per step; see :func:`txblocks.generation.stream`."""
        from txblocks.generation import stream

        return stream(self, input_ids, attention_mask, **settings)


class Seq2SeqModel(nn.Module):
    """An encoder–decoder (T5, BART): decoder blocks cross-attend to the encoder output.

    Args:
        encoder: a stack without cross-attention.
        decoder: a stack whose blocks have cross-attention.
        head: the output head over the decoder (an LM head), or None.
        front_end: what turns ``input_features`` into the encoder's inputs (Whisper's
            convolutions), for an encoder without token embeddings; or None.
    """

    def __init__(self, encoder: TransformerStack, decoder: TransformerStack,
                 head: nn.Module | None = None, *, front_end: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.front_end = front_end
        self.spec: Any = None

    @property
    def spec(self) -> Any:
        """The spec the model was built from; setting it sets both stacks' ``max_seq_len``."""
        return self.__dict__.get("_spec")

    @spec.setter
    def spec(self, value: Any) -> None:
        self.__dict__["_spec"] = value
        self.encoder.max_seq_len = self.decoder.max_seq_len = context_limit(value)
        decoder_len = getattr(value, "decoder_max_seq_len", None)
        if decoder_len is not None and self.decoder.max_seq_len is not None:
            self.decoder.max_seq_len = decoder_len

    def encode(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
               inputs_embeds: Tensor | None = None, input_features: Tensor | None = None) -> Tensor:
        """The encoder output (B, S, C); pass it back as ``encoder_outputs`` to reuse it."""
        return self._encode(input_ids, attention_mask, inputs_embeds, input_features)[0]

    def _encode(self, input_ids: Tensor | None, attention_mask: Tensor | None,
                inputs_embeds: Tensor | None, input_features: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if input_features is not None:
            if self.front_end is None:
                raise ValueError("input_features given, but this model reads token ids "
                                 "(its spec has no audio front_end): pass input_ids")
            if input_ids is not None or inputs_embeds is not None:
                raise ValueError("pass input_features, input_ids or inputs_embeds (one of them)")
            inputs_embeds = self.front_end(input_features)
        elif self.front_end is not None and inputs_embeds is None:
            raise ValueError("this model's encoder reads input_features (its front_end is "
                             f"{type(self.front_end).__name__}), not input_ids")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids, inputs_embeds or encoder_outputs")
        return self.encoder.run(input_ids, attention_mask, inputs_embeds=inputs_embeds)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        decoder_inputs_embeds: Tensor | None = None,
        input_features: Tensor | None = None,
        encoder_outputs: Tensor | None = None,
        decoder_position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """Encode ``input_ids`` (or reuse ``encoder_outputs``), then decode.

        Args:
            input_ids: (B, S) source tokens; not needed with ``encoder_outputs``.
            attention_mask: (B, S), 1 for real source tokens; masks cross-attention keys.
            decoder_input_ids: (B, T) target tokens (shifted right for training).
            decoder_attention_mask: (B, T), 1 for real target tokens.
            inputs_embeds, decoder_inputs_embeds: (B, S, E), (B, T, E) instead of
                ``input_ids``, ``decoder_input_ids``: rows standing for the token table's.
            input_features: (B, M, F) log-mel features, for a model with an audio front end.
            encoder_outputs: (B, S, C) from :meth:`encode`.
            cache: from ``model.decoder.new_cache``; cross-attention keys and values are
                computed on the first call and reused after.
        """
        enc_aux = None
        if encoder_outputs is None:
            encoder_outputs, enc_aux = self._encode(input_ids, attention_mask, inputs_embeds,
                                                    input_features)
        if decoder_inputs_embeds is None:
            if decoder_input_ids is None:
                raise ValueError("pass decoder_input_ids or decoder_inputs_embeds")
            check_index_tensor(decoder_input_ids, "decoder_input_ids")
            if cache is None:
                _check_ids(decoder_input_ids, decoder_attention_mask, "decoder_input_ids",
                           "decoder_attention_mask")
        x, dec_aux = self.decoder.run(
            decoder_input_ids, decoder_attention_mask, inputs_embeds=decoder_inputs_embeds,
            position_ids=decoder_position_ids,
            context=encoder_outputs, context_mask=attention_mask, cache=cache,
            ids_name="decoder_input_ids",
        )
        head_mask = decoder_attention_mask if cache is None else None
        logits = self.head(x, head_mask) if self.head is not None else None
        return ModelOutput(
            last_hidden_state=x, logits=logits, aux_loss=sum_aux([enc_aux, dec_aux], x),
            encoder_last_hidden_state=encoder_outputs, cache=cache,
        )

    def generate(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, *,
                 input_features: Tensor | None = None, **settings: Any) -> Tensor:
        """Generate tokens; see :func:`txblocks.generation.generate` for the settings
        (``inputs_embeds=`` for the encoder instead of ``input_ids``; ``input_features=``
        for a model with an audio front end)."""
        from txblocks.generation import generate

        if input_features is not None:
            settings["inputs_embeds"] = self._front(input_features)
        return generate(self, input_ids, attention_mask, **settings)

    def _front(self, input_features: Tensor) -> Tensor:
        if self.front_end is None:
            raise ValueError("input_features given, but this model reads token ids")
        with torch.no_grad():
            return self.front_end(input_features)

    def stream(self, input_ids: Tensor, attention_mask: Tensor | None = None, **settings: Any) -> Any:
        """Iterate over generated tokens, (B,) per step; see :func:`txblocks.generation.stream`."""
        from txblocks.generation import stream

        return stream(self, input_ids, attention_mask, **settings)
