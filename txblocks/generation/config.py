"""Generation settings and the logits processing they imply."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor


class GenerationConfig(BaseModel):
    """How :func:`txblocks.generation.generate` picks tokens.

    Greedy by default; ``do_sample`` draws from the distribution after temperature,
    top-k, top-p (nucleus, Holtzman et al. 2020) and repetition penalty (CTRL, Keskar
    et al. 2019). ``num_beams > 1`` runs beam search with ``length_penalty``.
    ``compile=True`` runs the decoding steps of a decoder or seq2seq model as one compiled
    static-shape step (docs/generation-compiled.md), replayed as a CUDA graph on CUDA
    (``cuda_graph``).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)

    max_new_tokens: int = Field(32, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    eos_token_id: list[int] = Field(default_factory=list, description="One id or several.")
    pad_token_id: int = Field(0, ge=0)
    decoder_start_token_id: int | None = Field(None, description="seq2seq; default pad_token_id.")
    num_beams: int = Field(1, ge=1)
    length_penalty: float = 1.0
    seed: int | None = None
    generator: torch.Generator | None = None
    compile: bool = Field(False, description="Decode with a compiled static-shape step (decoders, seq2seq).")
    compile_backend: str = Field(
        "inductor", description="torch.compile backend of that step; eager / aot_eager only trace.")
    cuda_graph: bool | None = Field(
        None, description="With compile: replay the step as a CUDA graph (None: on CUDA).")

    @field_validator("eos_token_id", mode="before")
    @classmethod
    def _listify(cls, value: int | Sequence[int] | None) -> list[int]:
        if value is None:
            return []
        return [value] if isinstance(value, int) else list(value)

    @model_validator(mode="after")
    def _options_need_compile(self) -> GenerationConfig:
        if self.cuda_graph and not self.compile:
            raise ValueError("cuda_graph=True is an option of the compiled decoding step: "
                             "set compile=True too")
        return self

    def make_generator(self, device: torch.device) -> torch.Generator | None:
        """The random source of sampling: the given generator, or one seeded with ``seed``."""
        if self.generator is not None:
            return self.generator
        if self.seed is None:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        return generator


def process_logits(logits: Tensor, tokens: Tensor, config: GenerationConfig, step: int) -> Tensor:
    """Scores (N, V) after repetition penalty and the minimum length, before choosing.

    ``tokens`` (N, t) are the tokens so far (prompt included), ``step`` counts new tokens.
    """
    logits = logits.float()
    if config.repetition_penalty != 1.0:
        seen = logits.gather(1, tokens)
        seen = torch.where(seen < 0, seen * config.repetition_penalty, seen / config.repetition_penalty)
        logits = logits.scatter(1, tokens, seen)
    if step < config.min_new_tokens and config.eos_token_id:
        logits[:, config.eos_token_id] = float("-inf")
    return logits


def sample_filter(logits: Tensor, config: GenerationConfig) -> Tensor:
    """Temperature, then top-k, then top-p: logits (N, V) with the rest at -inf."""
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= config.top_p  # the mass before this token already suffices
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits
