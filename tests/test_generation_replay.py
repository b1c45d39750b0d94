"""The compiled step called without dynamo after a generation's first step
(txblocks.generation.replay)."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks.generation import compiled
from txblocks.generation.replay import RecordingBackend, run_recorded


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _accumulate(total: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    total.add_(x.sin() * scale)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_the_replay_repeats_the_recorded_call_in_place(backend):
    step = torch.compile(_accumulate, fullgraph=True, backend=RecordingBackend(backend))
    x = torch.randn(5)
    total = torch.zeros(5)
    replay = run_recorded(lambda: step(total, x, 2.0))
    assert replay is not None
    torch.testing.assert_close(total, 2 * x.sin())
    x.copy_(torch.randn(5))  # the replay reads the recorded tensors as they are now
    expected = total + 2 * x.sin()
    replay()
    torch.testing.assert_close(total, expected)


def test_nothing_is_recorded_outside_run_recorded_or_when_the_step_runs_eagerly():
    step = torch.compile(_accumulate, fullgraph=True, backend=RecordingBackend("eager"))
    total, x = torch.zeros(3), torch.randn(3)
    step(total, x, 1.0)  # no recording active: nothing kept
    with torch.compiler.set_stance("force_eager"):
        assert run_recorded(lambda: step(total, x, 1.0)) is None
    assert run_recorded(lambda: None) is None


def test_a_graph_with_outputs_is_not_replayed():
    """Its outputs are what dynamo stores back into Python state; a replay would drop them."""

    def rebinding(box: dict, x: torch.Tensor) -> None:
        box["y"] = x * 2  # a new tensor, set by dynamo's bytecode from the graph's output

    step = torch.compile(rebinding, fullgraph=True, backend=RecordingBackend("eager"))
    box, x = {}, torch.randn(3)
    assert run_recorded(lambda: step(box, x)) is None
    torch.testing.assert_close(box["y"], x * 2)


def test_a_failed_call_leaves_no_recording_behind():
    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_recorded(fail)
    step = torch.compile(_accumulate, fullgraph=True, backend=RecordingBackend("eager"))
    assert run_recorded(lambda: step(torch.zeros(2), torch.ones(2), 1.0)) is not None


def test_inductor_options_reach_inductor(monkeypatch):
    seen = {}

    def fake_inductor(gm, example_inputs, **kwargs):
        seen.update(kwargs)
        return gm.forward

    monkeypatch.setattr(torch._dynamo, "lookup_backend", lambda name: fake_inductor)
    step = torch.compile(_accumulate, fullgraph=True,
                         backend=RecordingBackend("inductor", {"size_asserts": False}))
    step(torch.zeros(2), torch.ones(2), 1.0)
    assert seen == {"config_patches": {"size_asserts": False}}


def test_a_generation_replays_every_step_after_its_first(registry, monkeypatch):
    torch.manual_seed(0)
    spec = {"arch": "decoder", "extends": "llama", "n_layers": 2, "d_model": 32, "n_heads": 4,
            "n_kv_heads": 2, "vocab_size": 64, "max_seq_len": 128, "init_std": 0.2,
            "block": {"ffn": {"hidden": 64}}}
    model = txblocks.build(txblocks.load_spec(spec, registry=registry)).eval()
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    replays = []

    def counting(call):
        replay = run_recorded(call)
        assert replay is not None

        def counted():
            replays.append(1)
            return replay()

        return counted

    monkeypatch.setattr(compiled, "run_recorded", counting)
    expected = model.generate(ids, max_new_tokens=9)
    got = model.generate(ids, max_new_tokens=9, compile=True, compile_backend="aot_eager")
    assert torch.equal(got, expected)
    # token 1 from the prefill, token 2 from the recorded step, tokens 3-9 replayed
    assert len(replays) == 7
