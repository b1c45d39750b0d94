"""Text generation with a KV cache: greedy, sampling, beam search, streaming."""

from txblocks.generation.config import GenerationConfig
from txblocks.generation.decode import generate, stream

__all__ = ["GenerationConfig", "generate", "stream"]
