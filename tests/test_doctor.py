"""``txblocks doctor``: environment, plugins, and which attention kernels can run a spec."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks import cli
from txblocks.attention.xformers_kernel import XFormersKernel
from txblocks.doctor import environment, kernel_reports
from txblocks.plugins import default_registry

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_default_registry():
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def _spec(kernel="auto", layers=None, position="rope"):
    data = {"arch": "decoder", "vocab_size": 64, "max_seq_len": 64, "d_model": 32, "n_layers": 2,
            "n_heads": 4, "n_kv_heads": 2, "position": position,
            "block": {"attention": {"kernel": kernel}}}
    if layers is not None:
        data["layers"] = layers
    return txblocks.load_spec(data)


def flat(text):
    return " ".join(text.split())


def test_doctor_prints_torch_xformers_and_plugins(capsys):
    assert cli.main(["doctor"]) == 0
    out = flat(capsys.readouterr().out)
    assert torch.__version__ in out and "xformers" in out
    assert "builtins" in out and "loaded" in out
    assert environment()["torch"] == torch.__version__


def test_doctor_fails_when_a_named_kernel_cannot_run(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("extends: gpt2\nn_layers: 2\nblock: {attention: {kernel: xformers}}\n")
    assert cli.main(["doctor", str(path), "--device", "cpu"]) == 1
    out = flat(capsys.readouterr().out)
    assert "xformers runs on CUDA GPUs only" in out and "cannot run here" in out
    path.write_text("extends: gpt2\nn_layers: 2\n")  # auto: sdpa runs every layer
    assert cli.main(["doctor", str(path), "--device", "cpu"]) == 0


def test_doctor_refuses_a_device_torch_cannot_use(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = tmp_path / "spec.yaml"
    path.write_text("extends: gpt2\nn_layers: 2\n")
    assert cli.main(["doctor", str(path), "--device", "cuda"]) == 1
    assert "sees no CUDA GPU" in capsys.readouterr().out


def test_reports_list_each_kernel_with_its_layers_and_reasons():
    spec = _spec(layers=[{"select": 0, "attention": {"softcap": 30.0}}])
    reports = {r.kernel: r for r in kernel_reports(spec, CPU)}
    assert reports["eager"].layers == ("0",)  # softcap: only the reference runs it
    assert reports["sdpa"].layers == ("1",)
    assert any("softcap" in r for r in reports["sdpa"].reasons)
    assert reports["xformers"].reasons and not reports["xformers"].named


def test_auto_sends_structured_masks_to_xformers_and_plain_causal_to_sdpa(monkeypatch):
    """The rule table of docs/gpu.md, with xformers' own verdicts (its CPU stand-in)."""
    pytest.importorskip("xformers.ops")
    from txblocks.testing import xformers_on_cpu

    xformers_on_cpu.patch(monkeypatch)
    monkeypatch.setattr(XFormersKernel, "why_not_on", lambda self, device: [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    layers = [{"select": 0, "attention": {"mask": {"type": "sliding_window", "window": 8}}}]
    reports = {r.kernel: r for r in kernel_reports(_spec(layers=layers), CPU, torch.float16)}
    assert reports["xformers"].layers == ("0",)  # training too: flash's backward takes windows
    assert reports["sdpa"].layers == ("1",)  # exact causal: SDPA's is_causal
    alibi = {r.kernel: r for r in kernel_reports(_spec(position="alibi"), CPU, torch.float16)}
    # causal + ALiBi: xformers takes the bias as it is for inference; no backward operator
    # takes that class, and folded into one tensor SDPA is as good
    assert alibi["xformers"].layers == ("0", "1")
    assert alibi["sdpa"].layers == ("0 (train)", "1 (train)")


def test_summary_shows_the_kernel_each_layer_would_use(monkeypatch):
    pytest.importorskip("xformers.ops")
    from txblocks.summary import summarize
    from txblocks.testing import xformers_on_cpu

    xformers_on_cpu.patch(monkeypatch)
    monkeypatch.setattr(XFormersKernel, "why_not_on", lambda self, device: [])
    layers = [{"select": 0, "attention": {"mask": {"type": "sliding_window", "window": 8}}},
              {"select": 1, "attention": {"kernel": "eager"}}]
    spec = _spec(layers=layers)
    assert [row.kernel for row in summarize(spec, seq_len=32).layers] == ["auto", "eager"]
    rows = summarize(spec, seq_len=32, device="cpu").layers
    assert [row.kernel for row in rows] == ["auto → xformers", "eager"]
