"""txblocks-linear: linear-time attention kernels (linear attention, Performer FAVOR+)."""

from txblocks_linear.features import elu_features, favor_features, orthogonal_gaussian
from txblocks_linear.kernels import LinearKernel, PerformerKernel, mask_problems
from txblocks_linear.prefix import linear_attention

__version__ = "0.1.0"

__all__ = [
    "LinearKernel",
    "PerformerKernel",
    "elu_features",
    "favor_features",
    "linear_attention",
    "mask_problems",
    "orthogonal_gaussian",
]
