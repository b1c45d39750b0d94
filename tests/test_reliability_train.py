"""A run never replaces a good checkpoint with a useless one: settings that are not finite
are refused, a loss or weights that become NaN stop the run before saving, and ``--out`` is
checked before the first step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

import txblocks
from txblocks import cli, train
from txblocks.train import CopyTask, TrainError
from txblocks.train import step as step_module

DECODER = {"arch": "decoder", "name": "tiny-decoder", "d_model": 32, "n_layers": 2, "n_heads": 4,
           "vocab_size": 128, "max_seq_len": 32, "block": {"ffn": {"type": "mlp", "hidden": 64}}}


@pytest.fixture
def good_out(tmp_path) -> Path:
    """An existing checkpoint that a failed run must leave as it is."""
    path = tmp_path / "good.safetensors"
    txblocks.save(txblocks.build(DECODER), path)
    return path


def _run(**kwargs):
    return train.run(DECODER, task=kwargs.pop("task", "copy"), batch_size=4,
                     console=Console(quiet=True), eval_examples=1, show=0, threads=1, **kwargs)


@pytest.mark.parametrize(("setting", "value"), [
    ("lr", float("inf")), ("lr", float("nan")), ("weight_decay", float("nan")),
    ("grad_clip", float("inf")), ("lr", -float("inf")),
])
def test_settings_that_are_not_finite_are_refused(good_out, setting, value):
    before = good_out.read_bytes()
    with pytest.raises(TrainError, match=re.escape(f"{setting} must be finite, got {value}")):
        _run(steps=2, checkpoint_path=good_out, **{setting: value})
    assert good_out.read_bytes() == before


def test_lr_inf_on_the_command_line_exits_1_and_keeps_out(good_out, capsys):
    before = good_out.read_bytes()
    spec = good_out.with_name("dec.yaml")
    spec.write_text(txblocks.load_spec(DECODER).to_yaml(), encoding="utf-8")
    args = cli.parser().parse_args(["train", str(spec), "--task", "copy", "--steps", "2",
                                    "--lr", "inf", "--out", str(good_out)])
    assert args.run(args, Console(width=200)) == 1
    out = capsys.readouterr().out
    assert "lr must be finite, got inf" in out and "training" not in out
    assert good_out.read_bytes() == before


def test_a_loss_that_becomes_nan_stops_the_run_and_saves_nothing(gen, good_out):
    before = good_out.read_bytes()
    steps = 12
    at = int(torch.randint(1, steps + 1, (), generator=gen))
    task, calls = CopyTask(), []

    def diverging(output, batch):
        calls.append(1)
        loss = CopyTask.loss(task, output, batch)
        return loss * float("nan") if len(calls) >= at else loss

    task.loss = diverging  # type: ignore[method-assign]
    with pytest.raises(TrainError, match=re.escape(f"the loss is nan at step {at}: training "
                                                   "diverged")):
        _run(task=task, steps=steps, checkpoint_path=good_out)
    assert len(calls) <= 10 * ((at + 9) // 10)  # stopped at the first check after step `at`
    assert good_out.read_bytes() == before


def test_weights_that_become_nan_are_never_saved(gen, good_out, monkeypatch):
    before = good_out.read_bytes()
    steps = int(torch.randint(1, 4, (), generator=gen))
    real_step, done = step_module.Stepper.step, []

    def poisoning(self, batch, row):
        tokens = real_step(self, batch, row)
        done.append(1)
        if len(done) == steps:  # the last update leaves a NaN (the loss before it was fine)
            with torch.no_grad():
                next(self.wrapped.parameters()).view(-1)[0] = float("nan")
        return tokens

    monkeypatch.setattr(step_module.Stepper, "step", poisoning)
    with pytest.raises(TrainError, match=r"the trained weights are not finite \(\S+\); nothing "
                                         r"was saved to " + re.escape(str(good_out))):
        _run(steps=steps, checkpoint_path=good_out)
    assert good_out.read_bytes() == before


def test_an_out_under_a_file_is_refused_before_training(tmp_path, monkeypatch):
    (tmp_path / "taken").write_text("a file, not a folder")
    out = tmp_path / "taken" / "sub" / "m.safetensors"
    monkeypatch.setattr(step_module.Stepper, "step",
                        lambda *a: pytest.fail("trained before checking --out"))
    with pytest.raises(TrainError, match=re.escape(f"cannot save to {out}: {tmp_path / 'taken'} "
                                                   "is a file, not a folder")):
        _run(steps=5, checkpoint_path=out)
