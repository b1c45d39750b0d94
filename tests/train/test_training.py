"""Short, seeded training runs: every built-in task lowers its loss well below the start;
runs are reproducible; the MoE auxiliary loss is trained; a text file trains a decoder."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks import train
from txblocks.train.tasks.base import Batch, LabelledTask

from .conftest import tiny

# (arch, task, spec changes, steps, lr, the largest final/first loss ratio).
# The ratios sit below what predicting the answer alphabet's marginals alone reaches
# (e.g. ln 11 / ln 128 ≈ 0.5 for addition, 0.69 for binary and 1.39 for 4-way classification
# at the start), so passing needs real learning. Measured: 0.37, 0.49, 0.40, 0.49, 0.36.
CASES = [
    ("decoder", train.AdditionTask(digits=2), {}, 60, 1e-2, 0.5),
    ("decoder", train.CopyTask(max_length=4), {}, 60, 1e-2, 0.6),
    ("encoder", train.SortedTask(max_length=4), {}, 100, 1e-2, 0.6),
    ("seq2seq", train.ReverseTask(max_length=4), {}, 60, 1e-2, 0.6),
    ("vit", None, {"image_size": 6, "patch_size": 1}, 60, 3e-3, 0.6),
]


@pytest.mark.parametrize(("arch", "task", "changes", "steps", "lr", "ratio"), CASES,
                         ids=["addition", "copy", "sorted", "reverse", "shapes"])
def test_a_short_run_lowers_the_loss(quiet, arch, task, changes, steps, lr, ratio):
    result = train.run(tiny(arch, **changes), task=task, steps=steps, batch_size=32, lr=lr,
                       console=quiet, eval_examples=16, show=0)
    assert result.task == train.DEFAULT_TASKS[arch] if task is None else task.name
    assert len(result.losses) == steps and all(map(torch.isfinite, torch.tensor(result.losses)))
    assert result.final_loss < ratio * result.first_loss, (result.first_loss, result.final_loss)
    assert len(result.examples) == 16 and 0 <= result.accuracy <= 1
    assert not result.model.training


def test_runs_are_reproducible_on_cpu(quiet):
    def losses(seed: int) -> list[float]:
        spec = tiny("decoder", embedding={"dropout": 0.1}, block={**tiny("decoder")["block"],
                                                                   "dropout": 0.1})
        return train.run(spec, task="copy", steps=6, batch_size=8, seed=seed, console=quiet,
                         eval_examples=4, show=0).losses

    before, threads = torch.get_rng_state(), torch.get_num_threads()
    first = losses(0)
    assert losses(0) == first
    assert losses(1) != first
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    train.run(tiny("decoder"), task="copy", steps=1, batch_size=2, threads=threads + 1,
              console=quiet, eval_examples=1, show=0)
    assert torch.get_num_threads() == threads  # and so is its thread count


class _AuxOnly(LabelledTask):
    """A task whose loss has no gradient: only the model's aux_loss can move the weights."""

    name, archs, description = "aux-only", ("decoder",), "test"

    def check(self, spec):
        return []

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        ids = torch.randint(0, 128, (size, 8), generator=generator)
        return Batch({"input_ids": ids}, ids)

    def loss(self, output, batch):
        return (output.logits * 0).sum()

    def examples(self, model, n, generator):
        return []


def test_the_moe_aux_loss_is_trained(quiet):
    moe = {"type": "moe", "experts": 4, "top_k": 1, "aux_loss_coef": 0.5,
           "expert": {"type": "mlp", "hidden": 32}}
    spec = tiny("decoder", block={"norm": "layernorm", "ffn": moe})
    with torch.random.fork_rng():
        torch.manual_seed(0)  # run() builds under its seed: the same initial weights
        initial = txblocks.build(spec).state_dict()
    result = train.run(spec, task=_AuxOnly(), steps=3, batch_size=4, lr=1e-2, seed=0,
                       console=quiet, eval_examples=1, show=0, weight_decay=0.0)
    trained = result.model.state_dict()
    routers = [k for k in trained if k.endswith("router.weight")]
    assert routers
    assert all(not torch.equal(trained[k], initial[k]) for k in routers)
    # the task loss has no gradient: what only it reaches does not move
    assert torch.equal(trained["final_norm.weight"], initial["final_norm.weight"])


def test_a_text_file_trains_a_decoder_and_is_saved(quiet, tmp_path):
    data = tmp_path / "poem.txt"
    data.write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    out = tmp_path / "ckpt" / "poem.safetensors"
    spec = tiny("decoder", vocab_size=256, max_seq_len=24)
    result = train.run(spec, data=data, steps=80, batch_size=16, lr=1e-2, console=quiet,
                       checkpoint_path=out, eval_examples=4, show=2)
    assert result.task == "text"
    assert result.final_loss < 0.5 * result.first_loss
    assert result.checkpoint == out and out.is_file()
    model = txblocks.load(out)
    prompt = torch.tensor([list(b"the cat sat on ")])
    torch.testing.assert_close(model(prompt).logits, result.model(prompt).logits)
    continuation = bytes(model.generate(prompt, max_new_tokens=8)[0, -8:].tolist())
    assert continuation == b"the mat.", continuation


def test_progress_and_examples_are_printed(tmp_path):
    from rich.console import Console

    console = Console(file=(tmp_path / "log.txt").open("w"), width=100)
    train.run(tiny("decoder"), task=train.AdditionTask(digits=1), steps=20, batch_size=8,
              console=console, eval_examples=6, show=3)
    console.file.close()
    log = (tmp_path / "log.txt").read_text()
    assert "step 20/20" in log and "tok/s" in log and "acc" in log
    assert "prediction" in log and "truth" in log
    assert log.count("+") >= 3  # three addition prompts in the table


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_keeps_float32_weights(quiet, dtype):
    result = train.run(tiny("decoder"), task=train.AdditionTask(digits=1), steps=30,
                       batch_size=16, lr=1e-2, dtype=dtype, console=quiet, eval_examples=4, show=0)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.final_loss < 0.6 * result.first_loss
