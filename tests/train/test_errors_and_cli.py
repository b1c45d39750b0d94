"""A spec that does not fit its task, a bad task name or bad data: one clear error that says
what to change. And the ``txblocks train`` command line."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

import txblocks
from txblocks import train
from txblocks.train import TrainError
from txblocks import cli

from .conftest import tiny


def _run(spec, **kwargs):
    return train.run(spec, steps=1, batch_size=2, console=Console(quiet=True), eval_examples=1,
                     **kwargs)


@pytest.mark.parametrize(("spec", "kwargs", "message"), [
    (tiny("decoder"), {"task": "sorted"},
     "task 'sorted' trains encoder models, but spec 'tiny-decoder' is arch 'decoder'; "
     "tasks for decoder: addition, copy"),
    (tiny("seq2seq"), {"task": "shapes"},
     "task 'shapes' trains vit models, but spec 'tiny-seq2seq' is arch 'seq2seq'; "
     "tasks for seq2seq: reverse"),
    (tiny("encoder", head=None), {},
     "head is none; task 'sorted' is 2-way classification and needs "
     "head: {type: classifier, n_classes: 2}"),
    (tiny("encoder", head={"type": "mlm"}), {"task": "sorted"},
     "head is 'mlm'; task 'sorted' is 2-way classification"),
    (tiny("encoder", head={"type": "classifier", "n_classes": 3}), {},
     "head.n_classes is 3; task 'sorted' has 2 classes: "
     "use head: {type: classifier, n_classes: 2}"),
    (tiny("vit", head={"type": "classifier", "n_classes": 1000}), {},
     "head.n_classes is 1000; task 'shapes' has 4 classes"),
    (tiny("decoder", vocab_size=50), {"task": "addition"},
     "vocab_size is 50; task 'addition' uses bytes as token ids and needs vocab_size >= 128"),
    (tiny("decoder", max_seq_len=8), {"task": "addition"},
     "max_seq_len is 8; task 'addition' needs sequences of up to 9 tokens"),
    (tiny("decoder", head=None), {"task": "copy"},
     "head is None; task 'copy' needs an lm head (head: lm)"),
    (tiny("decoder"), {"task": "adition"},
     "unknown task 'adition'; built-in tasks: addition, copy, sorted, reverse, shapes; "
     "did you mean 'addition'?"),
])
def test_a_spec_that_does_not_fit_its_task_is_a_clear_error(spec, kwargs, message):
    with pytest.raises(TrainError, match=re.escape(message)):
        _run(spec, **kwargs)


def test_every_problem_is_listed_at_once():
    spec = tiny("decoder", vocab_size=50, max_seq_len=8)
    with pytest.raises(TrainError) as info:
        _run(spec, task="addition")
    assert str(info.value).splitlines() == [
        "spec 'tiny-decoder' cannot train on task 'addition':",
        "  vocab_size is 50; task 'addition' uses bytes as token ids and needs vocab_size >= 128",
        "  max_seq_len is 8; task 'addition' needs sequences of up to 9 tokens",
    ]


def test_bad_data_and_settings_are_clear_errors(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world", encoding="utf-8")
    cases = [
        (tiny("encoder"), {"data": text}, "a data file trains decoders (next-byte prediction), "
         "but spec 'tiny-encoder' is arch 'encoder'; built-in tasks for it: sorted"),
        (tiny("decoder", vocab_size=256), {"data": text, "task": "copy"},
         "pass a task or a data file, not both"),
        (tiny("decoder", vocab_size=256), {"data": tmp_path / "missing.txt"},
         f"data file not found: {tmp_path / 'missing.txt'}"),
        (tiny("decoder"), {"data": text}, "vocab_size is 128; task 'text' uses bytes as token "
         "ids and needs vocab_size >= 256"),
        (tiny("decoder"), {"lr": 0.0}, "lr must be positive, got 0.0"),
        (tiny("decoder"), {"dtype": "float8"}, "unknown dtype 'float8'; allowed: float32, "
         "bfloat16, float16"),
    ]
    for spec, kwargs, message in cases:
        with pytest.raises(TrainError, match=re.escape(message)):
            _run(spec, **kwargs)


def _cli(*argv: str, capsys) -> tuple[int, str]:
    args = cli.parser().parse_args(["train", *argv])  # the real command line
    status = args.run(args, Console(width=120))
    return status, capsys.readouterr().out


def test_the_train_command_trains_and_saves(tmp_path, capsys):
    spec = tmp_path / "dec.yaml"
    spec.write_text(txblocks.load_spec(tiny("decoder")).to_yaml(), encoding="utf-8")
    out = tmp_path / "dec.safetensors"
    status, text = _cli(str(spec), "--task", "copy", "--steps", "3", "--batch-size", "4",
                        "--lr", "1e-3", "--seed", "1", "--activation-checkpointing",
                        "--threads", "1",
                        "--out", str(out), capsys=capsys)
    assert status == 0, text
    assert ("task copy: 3 steps of 4, lr 0.001, seed 1, cpu (1 thread), float32, checkpointed"
            in text)
    assert f"saved {out}" in text and out.is_file()
    assert txblocks.load(out).spec == txblocks.load_spec(tiny("decoder"))


def test_the_train_command_reports_a_mismatch(tmp_path, capsys):
    spec = tmp_path / "enc.yaml"
    spec.write_text(txblocks.load_spec(tiny("encoder", head=None)).to_yaml(), encoding="utf-8")
    status, text = _cli(str(spec), "--steps", "2", "--out", str(tmp_path / "x.safetensors"),
                        capsys=capsys)
    assert status == 1
    assert "needs head: {type: classifier, n_classes: 2}" in text
    assert not (tmp_path / "x.safetensors").exists()
