"""The core's plugin-author conformance kit (``txblocks.testing``) on ``lsh`` with one bucket
and one chunk, where it must equal eager under every mask it accepts."""

from __future__ import annotations

from txblocks.testing import check_attention_kernel
from txblocks_lsh import LSHKernel


def test_one_bucket_lsh_passes_the_kernel_checks():
    report = check_attention_kernel(LSHKernel(1, n_hashes=2, chunk=64))
    ran = " ".join(report.ran)
    for mask in ("mask=none", "mask=causal", "mask=sliding_window"):
        assert mask in ran
    skipped = " ".join(setting for setting, _ in report.skipped)  # refused, with reasons
    assert "mask=prefix_lm" in skipped and "bias=yes" in skipped
