"""The core's plugin-author conformance kit (``txblocks.testing``) on this plugin."""

from __future__ import annotations

from txblocks.testing import MaskExample, check_attention_kernel, check_mask_strategy
from txblocks_sparse import BigBirdStrategy, BlockSparseKernel, LongformerStrategy


def test_longformer_passes_the_mask_checks():
    strategy = LongformerStrategy(2, causal=True, global_positions=[1], global_prefix=True,
                                  block_size=2)
    prefixes = [0, 2, 3]

    def reference(q: int, k: int, row: int) -> bool:
        glob = {1} | set(range(prefixes[row]))
        return k <= q and (q - 2 < k or q in glob or k in glob)

    report = check_mask_strategy(strategy, reference, prefix_lengths=prefixes)
    assert report.ran and not any(what == "comparison with a definition"
                                  for what, _ in report.skipped)


def test_causal_bigbird_passes_the_mask_checks():
    strategy = BigBirdStrategy(2, window_blocks=1, global_blocks=1, random_blocks=1, seed=4,
                               causal=True)
    table = strategy.random_table(64, 64)  # causal rows do not depend on the length

    def reference(q: int, k: int, row: int) -> bool:
        qb, kb = q // 2, k // 2
        return k <= q and (qb == kb or qb < 1 or kb < 1 or kb in table[qb].tolist())

    assert check_mask_strategy(strategy, reference).ran


def test_block_sparse_passes_the_kernel_checks():
    masks = [
        MaskExample("longformer", LongformerStrategy(2, global_positions=[0, 3], block_size=2)),
        MaskExample("longformer_causal", LongformerStrategy(3, causal=True, block_size=2)),
        MaskExample("bigbird", BigBirdStrategy(2, random_blocks=1, seed=1)),
        MaskExample("bigbird_causal", BigBirdStrategy(3, random_blocks=1, causal=True)),
    ]
    report = check_attention_kernel(BlockSparseKernel(), masks=masks)
    assert report.ran and not report.skipped
