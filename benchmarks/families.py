"""The models the benchmarks compare: txblocks (via from_hf, same weights), Hugging Face,
and x-transformers (same shapes, its own weights) where it has the family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import txblocks


@dataclass
class Family:
    name: str
    hf: Callable[[], torch.nn.Module]
    inputs: Callable[[int, int], dict[str, torch.Tensor]]
    xt: Callable[[], torch.nn.Module] | None = None
    xt_inputs: Callable[[int, int], tuple[Any, ...]] | None = None


def _tokens(vocab: int) -> Callable[[int, int], dict[str, torch.Tensor]]:
    return lambda b, t: {"input_ids": torch.randint(0, vocab, (b, t))}


def _seq2seq(vocab: int) -> Callable[[int, int], dict[str, torch.Tensor]]:
    def make(b: int, t: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (b, t))
        return {"input_ids": ids, "decoder_input_ids": ids}

    return make


def _xt_text(layers: str, vocab: int, dim: int = 768, depth: int = 12, heads: int = 12,
             tie: bool = True, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        import x_transformers

        stack = getattr(x_transformers, layers)(dim=dim, depth=depth, heads=heads, attn_flash=True,
                                                 **kwargs)
        return x_transformers.TransformerWrapper(
            num_tokens=vocab, max_seq_len=1024, attn_layers=stack,
            use_abs_pos_emb="rotary_pos_emb" not in kwargs, tie_embedding=tie)

    return make


def _xt_vit() -> torch.nn.Module:
    from x_transformers import Encoder, ViTransformerWrapper

    return ViTransformerWrapper(image_size=224, patch_size=16, num_classes=1000,
                                attn_layers=Encoder(dim=768, depth=12, heads=12, attn_flash=True))


def _xt_tokens(vocab: int) -> Callable[[int, int], tuple[Any, ...]]:
    return lambda b, t: (torch.randint(0, vocab, (b, t)),)


LLAMA = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
             intermediate_size=2048, vocab_size=32000)
MIXTRAL = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
               intermediate_size=1024, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000)


def families() -> list[Family]:
    from transformers import (BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, T5Config,
                              T5ForConditionalGeneration, ViTConfig, ViTForImageClassification)

    return [
        Family("gpt2-small", lambda: GPT2LMHeadModel(GPT2Config()), _tokens(50257),
               _xt_text("Decoder", 50257), _xt_tokens(50257)),
        Family("llama-gqa", lambda: LlamaForCausalLM(LlamaConfig(**LLAMA)), _tokens(32000),
               _xt_text("Decoder", 32000, tie=False, attn_kv_heads=4, rotary_pos_emb=True, use_rmsnorm=True,
                        ff_glu=True, ff_swish=True, ff_mult=2048 / 768, ff_no_bias=True,
                        ),
               _xt_tokens(32000)),
        Family("bert-base", lambda: BertForMaskedLM(BertConfig()), _tokens(30522),
               _xt_text("Encoder", 30522), _xt_tokens(30522)),
        Family("t5-small", lambda: T5ForConditionalGeneration(T5Config()), _seq2seq(32128)),
        Family("vit-b16", lambda: ViTForImageClassification(ViTConfig()),
               lambda b, t: {"pixel_values": torch.randn(b, 3, 224, 224)},
               _xt_vit, lambda b, t: (torch.randn(b, 3, 224, 224),)),
        Family("mixtral-small", lambda: MixtralForCausalLM(MixtralConfig(**MIXTRAL)),
               _tokens(32000)),
    ]


def dense_twin_of_mixtral() -> torch.nn.Module:
    """A Llama-style model with Mixtral-small's active parameters: top-2 of 1024-wide experts
    is one 2048-wide SwiGLU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {k: v for k, v in MIXTRAL.items() if k not in ("num_local_experts", "num_experts_per_tok")}
    config["intermediate_size"] = MIXTRAL["intermediate_size"] * MIXTRAL["num_experts_per_tok"]
    torch.manual_seed(0)
    return txblocks.from_hf(LlamaForCausalLM(LlamaConfig(**config)).eval())


def pair(family: Family) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(Hugging Face model, txblocks model with the same weights), both in eval mode."""
    torch.manual_seed(0)
    hf = family.hf().eval()
    return hf, txblocks.from_hf(hf).eval()


def call(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out
