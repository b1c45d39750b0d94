"""Shared by the Hugging Face conversion tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch


def perturbed(factory: Callable[[], Any]) -> Any:
    """``factory()``'s HF model (seed 0) with every parameter moved off its init (biases not 0,
    norms not 1), in eval mode."""
    torch.manual_seed(0)
    model = factory()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# --- Decoders converted both ways (issue 15, group decoders_a) -----------------------------
# Parity on padded batches (both sides), `to_hf(from_hf(m))`, greedy decoding, all in fp32.

DECODER_IDS = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}


def scaled(model: Any, names: tuple[str, ...], factor: float = 3.0) -> Any:
    """``model`` with every parameter whose name contains one of ``names`` times ``factor``
    (query and key weights: sharper attention, so positions matter)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in names):
                p.mul_(factor)
    return model


def padded_batch(side: str, vocab: int = 97, length: int = 12) -> dict[str, torch.Tensor]:
    """Three rows (lengths ``length``, 7, 3) padded with id 1 on the ``side``."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, length), generator=g)
    mask = torch.ones_like(ids)
    for row, n in ((1, 7), (2, 3)):
        if side == "right":
            mask[row, n:] = 0
        else:
            mask[row, : length - n] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}


def _outputs(hf: Any, tx: Any, inputs: dict[str, torch.Tensor],
             tx_kwargs: dict[str, Any]) -> tuple[Any, ...]:
    with torch.no_grad():
        h_hf = hf.base_model(**inputs).last_hidden_state
        y_hf = hf(**inputs).logits if hf.base_model is not hf else None
        out = tx(inputs["input_ids"], attention_mask=inputs["attention_mask"], **tx_kwargs)
    return h_hf, y_hf, out.last_hidden_state, out.logits


def decoder_parity(hf: Any, side: str, *, positions_from_mask: bool = False) -> float:
    """The largest difference (hidden states and logits, real positions) between ``hf`` and
    ``from_hf(hf)`` on a padded batch; asserts it is within 1e-4.

    ``positions_from_mask``: HF numbers positions from the attention mask (OPT), so the
    txblocks model gets the same ``position_ids``.
    """
    from txblocks.hf import from_hf

    tx = from_hf(hf)
    inputs = padded_batch(side, hf.config.vocab_size)
    mask = inputs["attention_mask"]
    kwargs = {"position_ids": (mask.cumsum(-1) - 1).clamp_min(0)} if positions_from_mask else {}
    h_hf, y_hf, h_tx, y_tx = _outputs(hf, tx, inputs, kwargs)
    keep = mask.bool()
    assert h_hf.abs().max() > 0.1  # not a degenerate model
    diff = (h_hf[keep] - h_tx[keep]).abs().max().item()
    assert (y_hf is None) == (y_tx is None)
    if y_hf is not None:
        diff = max(diff, (y_hf[keep] - y_tx[keep]).abs().max().item())
    assert diff <= 1e-4, diff
    return diff


def decoder_round_trip(hf: Any, atol: float = 1e-5) -> None:
    """``to_hf(from_hf(hf))``: same class, weights, spec and logits as ``hf`` (to ``atol``: an
    activation may come back under another HF name, ``gelu_new`` as ``gelu_pytorch_tanh``)."""
    from txblocks.hf import from_hf, spec_from_hf, to_hf

    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf) and not back.training
    source = hf.state_dict()
    assert set(back.state_dict()) == set(source)
    for name, tensor in back.state_dict().items():
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    exclude = {"name"}
    assert spec_from_hf(back).model_dump(exclude=exclude) == model.spec.model_dump(exclude=exclude)
    inputs = padded_batch("right", hf.config.vocab_size)
    with torch.no_grad():
        y1, y2 = (_final(m(**inputs)) for m in (hf, back))
    torch.testing.assert_close(y1, y2, rtol=0, atol=atol)


def _final(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    return out.last_hidden_state if logits is None else logits


def decoder_greedy(hf: Any, new: int = 20) -> None:
    """Greedy decoding of two left-padded prompts (9 and 5 tokens): ``hf.generate`` and
    ``from_hf(hf).generate`` give the same tokens, end-of-sequence suppressed."""
    from txblocks.hf import from_hf

    model = from_hf(hf)
    ids = torch.randint(3, hf.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ids = ids.masked_fill(mask == 0, DECODER_IDS["pad_token_id"])
    settings = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False}
    expected = hf.generate(ids, attention_mask=mask, **settings)
    got = model.generate(ids, mask, eos_token_id=DECODER_IDS["eos_token_id"],
                         pad_token_id=DECODER_IDS["pad_token_id"], **settings)  # fmt: skip
    assert torch.equal(expected, got), f"\nHF:\n{expected}\ntxblocks:\n{got}"
    for row in expected[:, -new:]:
        assert len(set(row.tolist())) >= 4  # not stuck on a few tokens


# A tiny Llama-style config (d_model 48, GQA 6/2) for the families that name their options
# the Llama way (OLMo, Gemma, StableLM, Starcoder2, Phi-3, Qwen3, ...).
TINY_DECODER = {"num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 6,
                "num_key_value_heads": 2, "vocab_size": 97, "intermediate_size": 40,
                "max_position_embeddings": 64, "initializer_range": 0.1,
                "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
                **DECODER_IDS}  # fmt: skip


def tiny_decoder(config_class: str, cls: str, config: dict[str, Any],
                 qk: tuple[str, ...] = ("q_proj", "k_proj"),
                 factor: float = 3.0) -> Callable[[], Any]:
    """A factory of ``transformers.<cls>`` on ``<config_class>(**config)`` (the config built
    now): every parameter perturbed (seed 0), those named by ``qk`` times ``factor``."""
    import transformers

    hf_config = getattr(transformers, config_class)(**config)
    return lambda: scaled(perturbed(lambda: getattr(transformers, cls)(hf_config)), qk, factor)


def _call(factory: Callable[[], Any]) -> Any:
    return factory()


def decoder_checks(
    cases: dict[str, Any],
    *,
    make: Callable[[Any], Any] = _call,
    check_positions: bool = True,
) -> tuple[Callable[..., None], Callable[..., None]]:
    """A decoder family's parity test (every case, padded on either side) and round-trip test,
    for a test module to bind: ``test_same_numbers, test_round_trip = decoder_checks(CASES)``.

    Args:
        cases: case name -> what ``make`` turns into an HF model.
        make: builds a case's model (by default calls it; ``perturbed`` for a class factory).
        check_positions: assert :func:`positions_matter` on each model before the parity.
    """

    @pytest.mark.parametrize("side", ["right", "left"])
    @pytest.mark.parametrize("case", list(cases))
    def test_same_numbers(case: str, side: str) -> None:
        hf = make(cases[case])
        if check_positions:
            positions_matter(hf)
        decoder_parity(hf, side)

    @pytest.mark.parametrize("case", list(cases))
    def test_round_trip(case: str) -> None:
        decoder_round_trip(make(cases[case]))

    return test_same_numbers, test_round_trip


def config_problems(config: Any) -> dict[str, str]:
    """``spec_from_hf(config)``'s problems, path -> message; asserts that it refuses (raises
    :class:`HFConversionError`)."""
    from txblocks.hf import HFConversionError, spec_from_hf

    with pytest.raises(HFConversionError) as info:
        spec_from_hf(config)
    return {p.path: p.message for p in info.value.problems}


# --- decoders_b (issue 15): a check that the parity tests exercise positions ---------------


def positions_matter(hf: Any, tol: float = 1e-3) -> None:
    """Asserts that ``hf``'s hidden states change (by more than ``tol``) when the distances
    between positions double: the model's query and key weights are large enough that a
    parity test checks its positional scheme (RoPE sees distances, not a uniform shift).

    Runs on a copy: HF's dynamic rope keeps the longest call's frequencies."""
    hf = copy.deepcopy(hf)
    inputs = padded_batch("right", hf.config.vocab_size)
    mask = inputs["attention_mask"]
    with torch.no_grad():
        plain = hf.base_model(**inputs).last_hidden_state
        stretched = 2 * (mask.cumsum(-1) - 1).clamp_min(0)
        shifted = hf.base_model(**inputs, position_ids=stretched).last_hidden_state
    keep = mask.bool()
    assert (plain[keep] - shifted[keep]).abs().max().item() > tol


# --- Encoders, seq2seq, MoE and towers converted both ways (issue 15, group others) -------


def perturbed_all(factory: Callable[[], Any], seed: int = 0) -> Any:
    """``factory()``'s HF model (seed ``seed``) with every parameter and float buffer
    (``final_logits_bias``) moved off its init, in eval mode. Fixed sinusoid tables
    (modules with ``create_weight``: Marian, Pegasus) are computed again afterwards."""
    torch.manual_seed(seed)
    model = factory()
    params = {id(p) for p in model.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for tensor in model.state_dict(keep_vars=True).values():
            if id(tensor) not in params and tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
        for module in model.modules():
            if hasattr(module, "create_weight"):
                module.weight.copy_(module.create_weight())
    return model.eval()


def masked_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """The largest |a - b| on the real positions of ``mask`` (B, T) (all of a (B, K) tensor)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.shape[:2] != mask.shape:
        return (a - b).abs().max().item()
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


def encoder_parity(hf: Any, *, token_types: int = 0, length: int = 12) -> float:
    """The largest difference (hidden states and logits, real positions) between ``hf`` and
    ``from_hf(hf)`` on a right-padded batch; asserts it is within 1e-4."""
    from txblocks.hf import from_hf

    tx = from_hf(hf)
    assert not tx.training
    inputs = padded_batch("right", hf.config.vocab_size, length)
    kwargs = {}
    if token_types:
        types = torch.randint(0, token_types, inputs["input_ids"].shape,
                              generator=torch.Generator().manual_seed(2))  # fmt: skip
        inputs["token_type_ids"] = kwargs["token_type_ids"] = types
    h_hf, y_hf, h_tx, y_tx = _outputs(hf, tx, inputs, kwargs)
    mask = inputs["attention_mask"]
    assert h_hf.abs().max() > 0.1  # not a degenerate model
    diff = masked_diff(h_hf, h_tx, mask)
    assert (y_hf is None) == (y_tx is None)
    if y_hf is not None:
        diff = max(diff, masked_diff(y_hf, y_tx, mask))
    assert diff <= 1e-4, diff
    return diff


def both_ways(hf: Any, inputs: dict[str, torch.Tensor], *, unread: tuple[str, ...] = (),
              atol: float = 1e-5) -> Any:
    """``to_hf(from_hf(hf))``: same class, weights (but ``unread``: names whose values
    ``from_hf`` never reads), spec and outputs on ``inputs`` as ``hf``; returns it."""
    from txblocks.hf import from_hf, spec_from_hf, to_hf

    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf) and not back.training
    source = hf.state_dict()
    for name, tensor in back.state_dict().items():  # a skipped pooler does not come back
        if name not in unread:
            torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    exclude = {"name"}
    assert spec_from_hf(back).model_dump(exclude=exclude) == model.spec.model_dump(exclude=exclude)
    with torch.no_grad():
        y1, y2 = (_final(m(**inputs)) for m in (hf, back))
    torch.testing.assert_close(y1, y2, rtol=0, atol=atol)
    return back


def seq2seq_batch(vocab: int = 97, pad: int = 1) -> dict[str, torch.Tensor]:
    """Sources (lengths 11, 6, 2) and targets (lengths 9, 9, 5), both right-padded."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, vocab, (3, 11), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    src_mask[2, 2:] = 0
    tgt = torch.randint(3, vocab, (3, 9), generator=g)
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[2, 5:] = 0
    return {"input_ids": src.masked_fill(src_mask == 0, pad), "attention_mask": src_mask,
            "decoder_input_ids": tgt.masked_fill(tgt_mask == 0, pad),
            "decoder_attention_mask": tgt_mask}  # fmt: skip


# A tiny BART-style config (MBart, Marian, Pegasus): d_model 48, 6 heads, 2 encoder and 3
# decoder layers.
TINY_BART = {"d_model": 48, "encoder_attention_heads": 6, "decoder_attention_heads": 6,
             "encoder_layers": 2, "decoder_layers": 3, "encoder_ffn_dim": 40,
             "decoder_ffn_dim": 40, "vocab_size": 97, "max_position_embeddings": 30,
             "init_std": 0.1, "pad_token_id": 1, "eos_token_id": 2,
             "forced_eos_token_id": None}  # fmt: skip


def tiny_seq2seq(config_class: str, cls: str, config: dict[str, Any],
                 qk: tuple[str, ...] = (".q_proj.", ".k_proj.")) -> Callable[[], Any]:
    """A factory of ``transformers.<cls>`` on ``<config_class>(**config)`` (the config built
    now): every parameter and float buffer perturbed (:func:`perturbed_all`, seed 0), those
    named by ``qk`` scaled up."""
    import transformers

    hf_config = getattr(transformers, config_class)(**config)
    return lambda: scaled(perturbed_all(lambda: getattr(transformers, cls)(hf_config)), qk)


def seq2seq_checks(cases: dict[str, Callable[[], Any]]) -> Callable[..., None]:
    """A BART-style family's test of every case: :func:`seq2seq_parity`, then :func:`both_ways`
    (``shared.weight`` unread where the embeddings are untied), for a test module to bind:
    ``test_same_numbers_both_ways = seq2seq_checks(CASES)``."""

    @pytest.mark.parametrize("case", list(cases))
    def test_same_numbers_both_ways(case: str) -> None:
        hf = cases[case]()
        seq2seq_parity(hf)
        unread = ("shared.weight",) if not hf.config.tie_word_embeddings else ()
        both_ways(hf, seq2seq_batch(), unread=unread)

    return test_same_numbers_both_ways


def sinusoid_table_checks(
    factory: Callable[[], Any], refused: str
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two tests of a family whose positions are a fixed sinusoid table (Marian, Pegasus) on
    ``factory()``'s model: the table is no txblocks parameter and equals HF's; a decoder table
    changed by 0.01 is refused, the error matching ``refused``. For a test module to bind:
    ``test_positions_are_the_fixed_table_not_a_parameter,
    test_a_table_that_is_not_the_sinusoid_is_refused = sinusoid_table_checks(...)``."""
    from txblocks.hf import HFConversionError, from_hf

    def test_positions_are_the_fixed_table_not_a_parameter() -> None:
        hf = factory()
        model = from_hf(hf)
        assert not any("position" in name for name, _ in model.named_parameters())
        table = hf.model.encoder.embed_positions.weight
        torch.testing.assert_close(model.encoder.position.table, table, atol=1e-7, rtol=0)

    def test_a_table_that_is_not_the_sinusoid_is_refused() -> None:
        hf = factory()
        with torch.no_grad():
            hf.model.decoder.embed_positions.weight[3, 5] += 0.01
        with pytest.raises(HFConversionError, match=refused):
            from_hf(hf)

    return (test_positions_are_the_fixed_table_not_a_parameter,
            test_a_table_that_is_not_the_sinusoid_is_refused)  # fmt: skip


# A tiny T5-style config (mT5, UMT5): d_model 48, d_kv 10 ≠ 48 / 6, 2 encoder and 3 decoder
# layers, 8 buckets up to distance 12 (sources of 11 tokens reach the logarithmic buckets).
TINY_T5 = {"d_model": 48, "d_kv": 10, "num_heads": 6, "num_layers": 2,
           "num_decoder_layers": 3, "d_ff": 40, "vocab_size": 97,
           "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12,
           "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}  # fmt: skip

#: What T5-style tests scale up: query and key weights and the relative-bias tables.
T5_QK = (".q.", ".k.", "relative_attention_bias")


def untied_drawn(model: Any) -> Any:
    """The LM head given its own weight (as a checkpoint with its own lm_head loads), drawn
    large so that greedy decoding does not repeat one token."""
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.3)
    model.all_tied_weights_keys.pop("lm_head.weight")
    return model


def tiny_t5(config_class: str, cls: str, config: dict[str, Any], *,
            untie: bool = False) -> Callable[[], Any]:
    """A factory of ``transformers.<cls>`` on ``<config_class>(**config)`` (the config built
    now), its LM head untied (:func:`untied_drawn`) where ``untie``: every parameter
    perturbed (:func:`perturbed_all`), :data:`T5_QK` times 1.5."""
    import transformers

    hf_config = getattr(transformers, config_class)(**config)

    def make() -> Any:
        model = getattr(transformers, cls)(hf_config)
        return untied_drawn(model) if untie else model

    return lambda: scaled(perturbed_all(make), T5_QK, 1.5)


def encoder_both_ways(hf: Any, x: dict[str, torch.Tensor]) -> Any:
    """An encoder-only HF model (``T5EncoderModel``) on the sources of ``x``: ``from_hf(hf)``'s
    hidden states within 1e-4 on real positions, then :func:`both_ways`; returns
    ``from_hf(hf)`` (as it ran on ``x``)."""
    from txblocks.hf import from_hf

    model = from_hf(hf)
    with torch.no_grad():
        want = hf(x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        got = model(x["input_ids"], x["attention_mask"]).last_hidden_state
    keep = x["attention_mask"].bool()
    assert (want[keep] - got[keep]).abs().max() <= 1e-4
    both_ways(hf, {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]})
    return model


def seq2seq_both_ways(hf: Any, x: dict[str, torch.Tensor], *,
                      unread: tuple[str, ...] = ()) -> None:
    """:func:`seq2seq_parity`, then :func:`both_ways` on ``x``; an LM head comes back tied to
    the input embeddings exactly where ``hf``'s is."""
    seq2seq_parity(hf)
    back = both_ways(hf, x, unread=unread)
    if hasattr(hf, "lm_head"):
        tied = hf.lm_head.weight is hf.get_input_embeddings().weight
        assert (back.lm_head.weight is back.get_input_embeddings().weight) == tied


def t5_checks(cases: dict[str, Callable[[], Any]]) -> Callable[..., None]:
    """A T5-style family's test of every case (case ``encoder``: :func:`encoder_both_ways`,
    the others :func:`seq2seq_both_ways`), for a test module to bind:
    ``test_same_numbers_both_ways = t5_checks(CASES)``."""

    @pytest.mark.parametrize("case", list(cases))
    def test_same_numbers_both_ways(case: str) -> None:
        hf = cases[case]()
        x = seq2seq_batch()
        if case == "encoder":
            encoder_both_ways(hf, x)
            return
        seq2seq_both_ways(hf, x)

    return test_same_numbers_both_ways


def seq2seq_parity(hf: Any, *, pad: int = 1) -> float:
    """The largest difference (encoder output, decoder hidden states, logits; real
    positions) between ``hf`` and ``from_hf(hf)``; asserts it is within 1e-4."""
    from txblocks.hf import from_hf

    tx = from_hf(hf)
    assert not tx.training
    x = seq2seq_batch(hf.config.vocab_size, pad)
    with torch.no_grad():
        out = hf(**x)
        encoder = hf.get_encoder()(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
        decoder = hf.get_decoder()(
            input_ids=x["decoder_input_ids"], attention_mask=x["decoder_attention_mask"],
            encoder_hidden_states=encoder.last_hidden_state,
            encoder_attention_mask=x["attention_mask"],
        ).last_hidden_state  # fmt: skip
        got = tx(x["input_ids"], x["attention_mask"], decoder_input_ids=x["decoder_input_ids"],
                 decoder_attention_mask=x["decoder_attention_mask"])  # fmt: skip
    assert encoder.last_hidden_state.abs().max() > 0.1
    diffs = [masked_diff(encoder.last_hidden_state, got.encoder_last_hidden_state,
                         x["attention_mask"]),
             masked_diff(decoder, got.last_hidden_state, x["decoder_attention_mask"])]  # fmt: skip
    logits = getattr(out, "logits", None)
    assert (logits is None) == (got.logits is None)
    if logits is not None:
        diffs.append(masked_diff(logits, got.logits, x["decoder_attention_mask"]))
    assert max(diffs) <= 1e-4, diffs
    return max(diffs)


def seq2seq_greedy(hf: Any, *, new: int = 20, pad: int = 1, eos: int = 2) -> None:
    """Greedy decoding of two right-padded sources (9 and 5 tokens) from the config's
    ``decoder_start_token_id``: ``hf.generate`` and ``from_hf(hf).generate`` give the same
    tokens, end-of-sequence suppressed."""
    from txblocks.hf import from_hf

    model = from_hf(hf)
    src = torch.randint(3, hf.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(src)
    mask[1, 5:] = 0
    src = src.masked_fill(mask == 0, pad)
    start = hf.config.decoder_start_token_id
    settings = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False}
    expected = hf.generate(src, attention_mask=mask, decoder_start_token_id=start, **settings)
    got = model.generate(src, mask, decoder_start_token_id=start, eos_token_id=eos,
                         pad_token_id=pad, **settings)  # fmt: skip
    assert torch.equal(expected, got), f"\nHF:\n{expected}\ntxblocks:\n{got}"
    for row in expected[:, -new:]:
        assert len(set(row.tolist())) >= 4  # not stuck on a few tokens
