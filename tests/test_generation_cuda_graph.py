"""The compiled decoding step replayed as a CUDA graph (txblocks/generation/cuda_graph.py).

Off CUDA: when graphs are used, and the errors for asking for one where there is none,
before any work. On CUDA (marked ``cuda``): the captured step gives the tokens of eager
decoding, replays are real steps, and a step that cannot be captured falls back (or, when
the graph was required, fails with the reason).
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import txblocks
from txblocks.generation.cuda_graph import WARMUP_STEPS, GraphedStep, use_cuda_graph

TINY = {"arch": "decoder", "n_layers": 2, "d_model": 32, "n_heads": 4, "n_kv_heads": 2,
        "vocab_size": 64, "max_seq_len": 128, "init_std": 0.2, "block": {"ffn": {"hidden": 64}}}


def _model(registry, **overrides):
    torch.manual_seed(0)
    spec = {"extends": "llama", **TINY, **overrides}
    return txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()


def test_graphs_are_used_on_cuda_only_by_default():
    assert use_cuda_graph(None, torch.device("cuda", 0))
    assert not use_cuda_graph(None, torch.device("cpu"))
    assert not use_cuda_graph(False, torch.device("cuda", 0))


def test_a_required_graph_off_cuda_is_an_error_before_any_work(registry):
    model = _model(registry)
    ids = torch.randint(0, 64, (1, 5))
    with pytest.raises(ValueError, match=r"cuda_graph=True needs the model on a CUDA device, it is on cpu"):
        model.generate(ids, max_new_tokens=4, compile=True, cuda_graph=True)


def test_a_graph_without_compile_is_refused_by_the_config():
    with pytest.raises(ValidationError, match="cuda_graph=True is an option of the compiled decoding step: set compile=True too"):
        txblocks.generation.GenerationConfig(cuda_graph=True)


# --- on a GPU -----------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("mask", [None, {"type": "sliding_window", "window": 5}])
def test_graphed_decoding_equals_eager_on_cuda(registry, mask):
    overrides = {} if mask is None else {"block": {"ffn": {"hidden": 64},
                                                   "attention": {"mask": mask}}}
    model = _model(registry, **overrides).cuda()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 64, (3, 9), generator=g).cuda()
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :4] = 0  # left padding
    expected = model.generate(ids, attention_mask, max_new_tokens=24)
    for call in ("first (warm-up steps, then the capture)", "second (captured at once)"):
        got = model.generate(ids, attention_mask, max_new_tokens=24, compile=True, cuda_graph=True)
        assert torch.equal(got, expected), f"{call} call\neager  {expected}\ngraphed {got}"


@pytest.mark.cuda
def test_each_replay_is_one_real_step():
    x = torch.zeros(4, device="cuda")

    def step(t: torch.Tensor) -> None:
        t.mul_(2).add_(1)  # not idempotent: a skipped or doubled step shows

    graphed = GraphedStep(step, required=True)
    for _ in range(WARMUP_STEPS + 5):
        graphed(x)
    assert graphed.captured
    want = torch.zeros(4)
    for _ in range(WARMUP_STEPS + 5):
        want = want * 2 + 1
    torch.testing.assert_close(x.cpu(), want)


@pytest.mark.cuda
def test_a_step_that_syncs_falls_back_or_fails_when_required():
    def step(t: torch.Tensor) -> None:
        if t.sum().item() >= 0:  # a host sync: not capturable
            t.add_(1)

    x = torch.zeros(2, device="cuda")
    graphed = GraphedStep(step)
    for _ in range(WARMUP_STEPS):
        graphed(x)
    with pytest.warns(RuntimeWarning, match="could not be captured as a CUDA graph"):
        graphed(x)  # the capture fails; the step runs uncaptured
    for _ in range(2):
        graphed(x)
    assert not graphed.captured
    assert x.tolist() == [WARMUP_STEPS + 3] * 2  # every call still ran once
    strict = GraphedStep(step, required=True)
    for _ in range(WARMUP_STEPS):
        strict(x)
    with pytest.raises(RuntimeError, match="cuda_graph=True: the compiled decoding step could not"):
        strict(x)


# --- capturable: nothing in the step leaves the model's device ----------------------------

STEP_MODELS = {
    "llama": {},
    "gpt2": {"extends": "gpt2", "n_kv_heads": 4},
    "mistral": {"extends": "mistral"},
    "mixtral": {"extends": "mixtral", "block": {"ffn": {"experts": 4, "expert": {"hidden": 48}}}},
    "alibi": {"position": "alibi"},
    "relative_bias": {"position": {"type": "relative_bias", "num_buckets": 8, "max_distance": 32}},
}


@pytest.mark.parametrize("name", sorted(STEP_MODELS))
def test_the_step_touches_no_tensor_off_the_models_device(registry, name):
    """Traced on the meta device (what inductor gets, after AOTAutograd), every tensor of the
    step is on the model's device: a CPU tensor there would be a host-to-device copy in each
    step, which a CUDA graph capture refuses. Sampling and the end-of-sequence check included."""
    from torch._dynamo.backends.common import aot_autograd

    from txblocks.generation.compiled import _state
    from txblocks.generation.config import GenerationConfig
    from txblocks.generation.static_sampling import Sampling
    from txblocks.generation.static_step import decode_step, stack_and_head
    from txblocks.nn.cache import StaticKVCache

    overrides = dict(STEP_MODELS[name])
    spec = {"extends": overrides.pop("extends", "llama"), **TINY, **overrides}
    torch.manual_seed(0)
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval().to("meta")
    meta = torch.device("meta")
    stack, _ = stack_and_head(model)
    cache = StaticKVCache.empty([(b.attention.n_kv_heads, b.attention.head_dim) for b in stack.blocks],
                                2, 64, dtype=torch.float32, device=meta,
                                windows=[getattr(s, "cache_window", None) for s in stack.masks])
    config = GenerationConfig(eos_token_id=[3], do_sample=True, top_k=5, top_p=0.9,
                              repetition_penalty=1.2, min_new_tokens=2)
    ids = torch.zeros(2, 5, dtype=torch.long, device=meta)
    state = _state(ids, torch.zeros_like(ids), cache, 64, config)
    devices: dict[str, list[str]] = {}

    def record(gm, inputs):
        for node in gm.graph.nodes:
            value = node.meta.get("val")
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, torch.Tensor):
                    devices.setdefault(v.device.type, []).append(f"{node.op} {node.target}")
        return gm.forward

    torch._dynamo.reset()
    step = torch.compile(decode_step, backend=aot_autograd(fw_compiler=record), fullgraph=True,
                         dynamic=False)
    with torch.no_grad():
        step(model, cache, state, Sampling.of(config))
    torch._dynamo.reset()
    assert devices.get("meta"), "nothing was traced"
    assert set(devices) == {"meta"}, {k: v[:5] for k, v in devices.items() if k != "meta"}
