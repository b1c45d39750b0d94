"""``longformer`` and ``bigbird`` against brute-force definitions (loops over positions)."""

from __future__ import annotations

import pytest
import torch

from txblocks import SpecError, load_registry, load_spec
from txblocks_sparse import BigBirdStrategy, LongformerStrategy, draw_random_blocks

CPU = torch.device("cpu")
#: (Tq, Tk, q_offset): self-attention, KV-cache decoding (bottom-right), queries at 0.
SHAPES = {"square": (13, 13, None), "cache": (5, 13, None), "top_left": (6, 13, 0)}


def padding_of(kind: str, batch: int, k_len: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    pad = torch.ones(batch, k_len, dtype=torch.bool)
    pad[0, :4] = False  # left padding in row 0
    pad[-1, -3:] = False  # right padding in the last row
    return pad


# --- longformer -------------------------------------------------------------------------


def longformer_globals(case: str, batch: int, k_len: int) -> tuple[dict, dict, list[set[int]]]:
    """(strategy kwargs, call kwargs, global positions per row) for a global-token case."""
    if case == "none":
        return {}, {}, [set() for _ in range(batch)]
    if case == "positions":
        return {"global_positions": [0, 6, 40]}, {}, [{0, 6} for _ in range(batch)]
    if case == "prefix":
        lengths = [2, 0, 3][:batch]
        return ({"global_prefix": True}, {"prefix_lengths": torch.tensor(lengths)},
                [set(range(n)) for n in lengths])
    tokens = torch.zeros(batch, k_len, dtype=torch.bool)
    tokens[0, [3, 9]] = True
    tokens[-1, 12] = True
    rows = [{j for j in range(k_len) if tokens[b, j]} for b in range(batch)]
    return {"global_positions": [1]}, {"global_tokens": tokens}, [r | {1} for r in rows]


def brute_longformer(window, causal, globals_, batch, q_len, k_len, offset, pad):
    keep = torch.zeros(batch, q_len, k_len, dtype=torch.bool)
    for b in range(batch):
        for i in range(q_len):
            p = offset + i
            for j in range(k_len):
                ok = p - window < j <= p if causal else abs(p - j) < window
                ok = ok or p in globals_[b] or j in globals_[b]
                if causal:
                    ok = ok and j <= p
                if pad is not None:
                    ok = ok and bool(pad[b, j])
                keep[b, i, j] = ok
    return keep


def brute_block_pool(keep, offset, block):
    """Bool (B, nQ, nK): blocks (absolute query blocks from offset // block) with a kept pair."""
    batch, q_len, k_len = keep.shape
    first = offset // block
    n_q = (offset + q_len - 1) // block - first + 1
    n_k = -(-k_len // block)
    out = torch.zeros(batch, n_q, n_k, dtype=torch.bool)
    for b in range(batch):
        for i in range(q_len):
            for j in range(k_len):
                if keep[b, i, j]:
                    out[b, (offset + i) // block - first, j // block] = True
    return out


@pytest.mark.parametrize("globals_case", ["none", "positions", "prefix", "tokens"])
@pytest.mark.parametrize("padding", ["none", "padded"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("causal", [False, True], ids=["symmetric", "causal"])
@pytest.mark.parametrize("window", [1, 3])
def test_longformer_matches_brute_force(window, causal, shape, padding, globals_case):
    batch = 3
    q_len, k_len, q_offset = SHAPES[shape]
    offset = k_len - q_len if q_offset is None else q_offset
    pad = padding_of(padding, batch, k_len)
    params, call, globals_ = longformer_globals(globals_case, batch, k_len)
    strategy = LongformerStrategy(window, causal=causal, block_size=4, **params)
    mask = strategy(q_len, k_len, key_padding=pad, q_offset=q_offset, **call)
    assert strategy.causal is causal and mask.q_offset == offset

    want = brute_longformer(window, causal, globals_, batch, q_len, k_len, offset, pad)
    assert torch.equal(mask.keep(CPU).expand(batch, 1, -1, -1)[:, 0], want)
    bare = brute_longformer(window, causal, globals_, batch, q_len, k_len, offset, None)
    structure = mask.structure(CPU)
    assert torch.equal(structure.expand(batch, -1, -1), bare)
    blocks = mask.block_structure(CPU)
    assert torch.equal(blocks.expand(batch, -1, -1), brute_block_pool(bare, offset, 4))
    if causal:
        later = torch.arange(k_len)[None, :] > offset + torch.arange(q_len)[:, None]
        assert not (want & later).any()


def test_longformer_without_globals_is_sliding_window():
    from txblocks.attention.mask import CausalMask

    mask = LongformerStrategy(4, causal=True, block_size=3)(9, 9)
    assert torch.equal(mask.structure(CPU), CausalMask(9, 9, window=4).structure(CPU))


def test_longformer_layout_slots_do_not_grow_with_length():
    """Window 16, block 16, two global tokens: the same K key blocks per query block."""
    strategy = LongformerStrategy(16, global_positions=[0, 100], block_size=16)
    slots = {strategy(t, t).block_layout(CPU).slots for t in (256, 1024, 4096)}
    assert slots == {5}  # 3 window blocks (+1 for an unaligned run) and 2 global blocks


def test_longformer_refuses_packed_sequences():
    with pytest.raises(ValueError, match="longformer does not support packed sequences"):
        LongformerStrategy(2)(4, 4, seq_lens=[[2, 2]])


def test_longformer_ignores_prefix_lengths_unless_asked():
    mask = LongformerStrategy(1)(5, 5, prefix_lengths=torch.tensor([3]))
    assert mask.global_tokens is None


# --- bigbird ----------------------------------------------------------------------------


def eligible(row, n_key_blocks, half, n_global, causal):
    end = row - half if causal else n_key_blocks
    return [j for j in range(n_global, end) if abs(j - row) > half]


def brute_bigbird(table, block, half, n_global, causal, batch, q_len, k_len, offset, pad):
    keep = torch.zeros(batch, q_len, k_len, dtype=torch.bool)
    for b in range(batch):
        for i in range(q_len):
            p = offset + i
            for j in range(k_len):
                qb, kb = p // block, j // block
                ok = abs(qb - kb) <= half or qb < n_global or kb < n_global
                ok = ok or kb in table[qb].tolist()
                if causal:
                    ok = ok and j <= p
                if pad is not None:
                    ok = ok and bool(pad[b, j])
                keep[b, i, j] = ok
    return keep


@pytest.mark.parametrize("padding", ["none", "padded"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("causal", [False, True], ids=["symmetric", "causal"])
@pytest.mark.parametrize(("window_blocks", "global_blocks", "random_blocks"),
                         [(3, 1, 1), (1, 0, 2), (3, 2, 0)])
def test_bigbird_matches_brute_force(window_blocks, global_blocks, random_blocks, causal,
                                     shape, padding):
    batch, block = 2, 2
    q_len, k_len, q_offset = SHAPES[shape]
    offset = k_len - q_len if q_offset is None else q_offset
    pad = padding_of(padding, batch, k_len)
    strategy = BigBirdStrategy(block, window_blocks=window_blocks, global_blocks=global_blocks,
                               random_blocks=random_blocks, seed=7, causal=causal)
    mask = strategy(q_len, k_len, key_padding=pad, q_offset=q_offset)
    table, half = mask.random_blocks, (window_blocks - 1) // 2

    n_k = -(-k_len // block)
    for row in range(table.shape[0]):  # the random blocks follow their definition
        picks = [j for j in table[row].tolist() if j >= 0]
        pool = [] if row < global_blocks else eligible(row, n_k, half, global_blocks, causal)
        assert len(set(picks)) == len(picks) == min(random_blocks, len(pool))
        assert set(picks) <= set(pool)

    args = (table, block, half, global_blocks, causal, batch, q_len, k_len, offset)
    want = brute_bigbird(*args, pad)
    assert torch.equal(mask.keep(CPU).expand(batch, 1, -1, -1)[:, 0], want)
    bare = brute_bigbird(*args, None)
    assert torch.equal(mask.structure(CPU).expand(batch, -1, -1), bare)
    blocks = mask.block_structure(CPU).expand(batch, -1, -1)
    assert torch.equal(blocks, brute_block_pool(bare, offset, block))


def test_bigbird_random_blocks_are_reproducible_and_seeded():
    def table(seed, causal=False, n=64):
        strategy = BigBirdStrategy(4, random_blocks=3, seed=seed, causal=causal)
        return strategy(n * 4, n * 4).random_blocks

    assert torch.equal(table(3), table(3))
    assert not torch.equal(table(3), table(4))
    rows = draw_random_blocks(3, 64, 64, window_blocks=3, global_blocks=1, random_blocks=3,
                              causal=False)
    assert torch.equal(rows, table(3))
    # causal rows depend only on the row: a longer sequence extends the pattern
    assert torch.equal(table(5, True, n=64)[:32], table(5, True, n=32))


def test_bigbird_layout_slots_do_not_grow_with_length():
    strategy = BigBirdStrategy(8, window_blocks=3, global_blocks=2, random_blocks=2)
    assert {strategy(t, t).block_layout(CPU).slots for t in (128, 1024)} == {3 + 2 + 2}


# --- configs through a spec ---------------------------------------------------------------

TINY = {"arch": "decoder", "vocab_size": 50, "max_seq_len": 64, "d_model": 32, "n_layers": 2,
        "n_heads": 4}


@pytest.mark.parametrize(("mask", "message"), [
    ({"type": "longformer", "window": 0}, r"block\.attention\.mask\.window: .*greater than or "
                                          r"equal to 1"),
    ({"type": "longformer", "window": 2, "global_positions": [-1]},
     r"block\.attention\.mask\.global_positions\[0\]: .*greater than or equal to 0"),
    ({"type": "longformer"}, r"block\.attention\.mask\.window: .*(required|missing)"),
    ({"type": "bigbird", "window_blocks": 4}, r"block\.attention\.mask\.window_blocks: .*must "
                                              r"be odd.*use 3 or 5"),
    ({"type": "bigbird", "random_block": 2}, r"unknown field 'random_block'.*did you mean "
                                             r"'random_blocks'"),
])
def test_bad_configs_name_their_path(mask, message):
    registry = load_registry()
    with pytest.raises(SpecError, match=message):
        load_spec({**TINY, "block": {"attention": {"mask": mask}}}, registry=registry)
