"""Greedy generation: ``from_hf(hf).generate`` gives Hugging Face's tokens, one for one.

Decoders: a batch of two left-padded prompts (lengths 9 and 5), 20 new tokens, with the
KV cache on both sides; the sliding windows (5 to 7) are shorter than prompt + output, so
the rolling cache is exercised. Seq2seq: two right-padded sources, decoding from the same
``decoder_start_token_id``. Weights are drawn large (decoders: std 0.2, then perturbed;
seq2seq: untied heads) so the logits are far from flat and no step is a near tie.
End-of-sequence is suppressed for all 20 steps on both sides (``min_new_tokens``), so every
row runs to the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import from_hf

from .conftest import perturbed

VOCAB, NEW = 97, 20
IDS = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}


def decoder(family: str, **kw: Any) -> Callable[[], Any]:
    base = {"num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 6,
            "num_key_value_heads": 2, "intermediate_size": 40, "vocab_size": VOCAB,
            "initializer_range": 0.2, **IDS}  # fmt: skip
    config = getattr(transformers, f"{family}Config")
    return lambda: getattr(transformers, f"{family}ForCausalLM")(config(**{**base, **kw}))


DECODERS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=48, n_head=6, vocab_size=VOCAB, n_positions=40, initializer_range=0.2,
        **IDS)),
    "llama": decoder("Llama"),
    "mistral-window6": decoder("Mistral", sliding_window=6),
    "qwen2-mixed-windows": decoder("Qwen2", use_sliding_window=True, sliding_window=5,
                                   max_window_layers=1),
    "mixtral-window7": decoder("Mixtral", sliding_window=7, num_local_experts=4,
                               num_experts_per_tok=2),
}  # fmt: skip

def t5_v11() -> Any:
    """A T5 v1.1-style model: gated GELU, LM head untied (as from_pretrained loads it)."""
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=48, d_kv=10, num_heads=6, num_layers=3, d_ff=96, vocab_size=VOCAB,
        relative_attention_num_buckets=8, relative_attention_max_distance=12,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
        **IDS))  # fmt: skip
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.3)
    model.all_tied_weights_keys.pop("lm_head.weight")
    return model


# Untied heads: a random model whose head is its token table tends to repeat its input.
SEQ2SEQ: dict[str, Callable[[], Any]] = {
    "t5-v1.1": t5_v11,
    "bart": lambda: transformers.BartForConditionalGeneration(transformers.BartConfig(
        d_model=48, encoder_attention_heads=6, decoder_attention_heads=6, encoder_layers=2,
        decoder_layers=2, encoder_ffn_dim=40, decoder_ffn_dim=40, vocab_size=VOCAB,
        max_position_embeddings=40, tie_word_embeddings=False, decoder_start_token_id=2,
        forced_eos_token_id=None, **IDS)),
}  # fmt: skip


def prompts(left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 9 tokens; the second has 5 real ones (padded on the left or the right)."""
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if left:
        mask[1, :4] = 0
    else:
        mask[1, 5:] = 0
    return ids.masked_fill(mask == 0, IDS["pad_token_id"]), mask


SETTINGS = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False}


def check(hf_tokens: torch.Tensor, tx_tokens: torch.Tensor) -> None:
    assert torch.equal(hf_tokens, tx_tokens), f"\nHF:\n{hf_tokens}\ntxblocks:\n{tx_tokens}"
    for row in hf_tokens[:, -NEW:]:
        assert len(set(row.tolist())) >= 4  # not stuck on a few tokens


@pytest.mark.parametrize("case", list(DECODERS))
def test_greedy_decoding_same_tokens(case: str) -> None:
    hf = perturbed(DECODERS[case])
    model = from_hf(hf)
    ids, mask = prompts(left=True)
    expected = hf.generate(ids, attention_mask=mask, **SETTINGS)
    got = model.generate(ids, mask, eos_token_id=IDS["eos_token_id"],
                         pad_token_id=IDS["pad_token_id"], **SETTINGS)  # fmt: skip
    assert got.shape == (2, 9 + NEW)
    check(expected, got)


@pytest.mark.parametrize("case", list(SEQ2SEQ))
def test_seq2seq_greedy_decoding_same_tokens(case: str) -> None:
    hf = perturbed(SEQ2SEQ[case])
    model = from_hf(hf)
    src, mask = prompts(left=False)
    start = hf.config.decoder_start_token_id
    expected = hf.generate(src, attention_mask=mask, decoder_start_token_id=start, **SETTINGS)
    got = model.generate(src, mask, decoder_start_token_id=start,
                         eos_token_id=IDS["eos_token_id"], pad_token_id=IDS["pad_token_id"],
                         **SETTINGS)  # fmt: skip
    assert got.shape == (2, 1 + NEW) and (got[:, 0] == start).all()
    check(expected, got)
