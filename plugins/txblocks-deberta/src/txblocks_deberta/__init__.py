"""txblocks-deberta: DeBERTa-v2's disentangled attention and the DeBERTa-v2 HF family."""

from txblocks_deberta.buckets import log_bucket_position, relative_index
from txblocks_deberta.disentangled import TERMS, DisentangledPositions

__version__ = "0.1.0"

__all__ = ["TERMS", "DisentangledPositions", "log_bucket_position", "relative_index"]
