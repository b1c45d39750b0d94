"""Data-parallel training (DDP, FSDP2) on 2 CPU processes follows one process; gradient
accumulation follows one full batch; a DCP checkpoint resumes the same trajectory; bad
settings are clear errors.

The 2-process runs share one torchrun launch (gloo on loopback, one thread per process,
about 8 s on 2 cores): ``_distributed_worker.py`` runs the ``txblocks train`` command line
first, then every case of ``CASES`` through ``train.run``. The tests compare what each rank
wrote with runs in this process.

Tolerances. Float32: the 2 ranks (or the micro-batches) sum the same terms in another
order (per-shard losses and gradients, then gloo's all-reduce), so the losses differ from
one process by float32 rounding only: measured at most 1e-6 over 6 steps (1.2e-7 relative,
about one ulp). ``rtol=1e-4, atol=1e-5`` leaves room for AdamW to amplify that, while any
real mistake moves the loss by 1e-2 or more (averaging the micro-batches' mean losses
instead of weighting them by their counted targets: 1.4e-2). Bfloat16 autocast rounds
every matmul to 8 bits of mantissa, in shards of another size: measured 7e-4, tolerance
1e-3 + 1e-3 relative.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import txblocks
from txblocks import cli, train
from txblocks.train import TrainError
from txblocks.train.distributed import Distributed, gradient_sync, shard
from txblocks.train.tasks.base import Batch

from .conftest import tiny

WORKER = Path(__file__).with_name("_distributed_worker.py")
SPEC = tiny("decoder")
RUN = {"task": "copy", "steps": 6, "batch_size": 8, "lr": 1e-2, "seed": 3, "eval_examples": 1,
       "show": 0, "threads": 1}
FP32 = {"rtol": 1e-4, "atol": 1e-5}
BF16 = {"rtol": 1e-3, "atol": 1e-3}
MIXED = {"dtype": "bfloat16", "activation_checkpointing": True}


def _cases(tmp: Path) -> dict[str, dict]:
    one = {"spec": SPEC, **RUN}
    return {
        "ddp": {**one, "strategy": "ddp"},
        "ddp_accum": {**one, "strategy": "ddp", "grad_accum": 2},
        "fsdp": {**one, "strategy": "fsdp"},
        "fsdp_accum": {**one, "strategy": "fsdp", "grad_accum": 2},
        "ddp_mixed": {**one, "strategy": "ddp", **MIXED},
        "fsdp_mixed": {**one, "strategy": "fsdp", **MIXED},
        "fsdp_saved": {**one, "strategy": "fsdp", "save_every": 3,
                       "checkpoint_dir": str(tmp / "ck")},
        "fsdp_resumed": {**one, "strategy": "fsdp", "resume": str(tmp / "ck" / "step-0000003")},
        "ddp_resumed": {**one, "strategy": "ddp", "resume": str(tmp / "ck" / "step-0000003")},
        "batch_not_divisible": {**one, "strategy": "ddp", "batch_size": 6, "grad_accum": 2},
        "strategy_none": one,
    }


def _cli_argv(tmp: Path) -> list[str]:
    return ["train", str(tmp / "spec.yaml"), "--task", "copy", "--steps", "6", "--batch-size", "8",
            "--lr", "1e-2", "--seed", "3", "--threads", "1", "--strategy", "fsdp",
            "--grad-accum", "2", "--save-every", "3", "--checkpoint-dir", str(tmp / "cli-ck"),
            "--out", str(tmp / "cli.safetensors")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` on loopback. On a timeout the agent is sent
    SIGTERM, on which it stops its ranks (they run in sessions of their own), so a hung
    collective does not outlive the test."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = "", ""
            pytest.fail(f"torchrun ran past {timeout} s:\n{stdout[-3000:]}\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """The 2-process runs: (stdout, rank 0's results, rank 1's results, their folder)."""
    tmp = tmp_path_factory.mktemp("distributed")
    (tmp / "spec.yaml").write_text(txblocks.load_spec(SPEC).to_yaml(), encoding="utf-8")
    plan = {"cli": _cli_argv(tmp), "store_port": _free_port(), "cases": _cases(tmp)}
    (tmp / "plan.json").write_text(json.dumps(plan))
    done = _torchrun(2, str(WORKER), str(tmp / "plan.json"))
    if done.returncode != 0:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                    f"{done.stderr[-6000:]}")
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    return done.stdout, ranks[0], ranks[1], tmp


def _run(spec=SPEC, **changes) -> train.TrainResult:
    return train.run(spec, **{**RUN, "console": Console(quiet=True), **changes})


@pytest.fixture(scope="module")
def reference() -> dict[str, train.TrainResult]:
    """One process, the same global batch: float32, and bfloat16 + activation checkpointing."""
    return {"fp32": _run(), "mixed": _run(**MIXED)}


def _close(losses, expected, tolerance) -> None:
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), **tolerance)


@pytest.mark.parametrize("case", ["ddp", "ddp_accum", "fsdp", "fsdp_accum"])
def test_two_ranks_follow_one_process(launch, reference, case):
    _, rank0, rank1, _ = launch
    assert "error" not in rank0[case], rank0[case]["error"]
    _close(rank0[case]["losses"], reference["fp32"].losses, FP32)
    assert rank1[case]["losses"] == rank0[case]["losses"]  # summed over ranks: the same everywhere
    assert reference["fp32"].losses[0] - reference["fp32"].losses[-1] > 0.5  # it did learn


@pytest.mark.parametrize("case", ["ddp_mixed", "fsdp_mixed"])
def test_bfloat16_and_activation_checkpointing_compose_with_both(launch, reference, case):
    _, rank0, _, _ = launch
    _close(rank0[case]["losses"], reference["mixed"].losses, BF16)
    assert "bfloat16, checkpointed" in rank0[case]["log"]


def test_only_rank_0_prints(launch):
    stdout, rank0, rank1, tmp = launch
    assert all(result["log"] == "" for result in rank1.values() if "log" in result)
    assert "fsdp on 2 ranks, 2 micro-batches of 2 per rank" in rank0["fsdp_accum"]["log"]
    assert "ddp on 2 ranks, 1 micro-batch of 4 per rank" in rank0["ddp"]["log"]
    # the command line: one header, one table, one final model for the two processes
    assert stdout.count("training tiny-decoder") == 1, stdout
    assert stdout.count(f"saved {tmp / 'cli.safetensors'}") == 1, stdout
    assert stdout.count("prediction") == 1, stdout


def test_the_command_line_under_torchrun_saves_the_whole_model(launch, reference):
    _, rank0, rank1, tmp = launch
    assert rank0["cli"]["status"] == 0 and rank1["cli"]["status"] == 0
    saved = txblocks.load(tmp / "cli.safetensors").state_dict()  # gathered from the FSDP shards
    trained = reference["fp32"].model.state_dict()
    assert saved.keys() == trained.keys()
    with torch.random.fork_rng():
        torch.manual_seed(RUN["seed"])  # run() builds under its seed: the initial weights
        initial = txblocks.build(txblocks.load_spec(SPEC)).state_dict()
    for name, value in trained.items():
        # 1e-3 is a tenth of one step at lr 1e-2: far below what a wrong or stale shard moves
        torch.testing.assert_close(saved[name], value, rtol=1e-3, atol=1e-3, msg=name)
    assert any(not torch.allclose(trained[k], initial[k], atol=1e-3) for k in trained)
    assert sorted(p.name for p in (tmp / "cli-ck").iterdir()) == ["step-0000003", "step-0000006"]


def test_a_checkpoint_resumes_the_same_trajectory(launch, reference):
    _, rank0, _, _ = launch
    saved, resumed = rank0["fsdp_saved"]["losses"], rank0["fsdp_resumed"]["losses"]
    _close(saved, reference["fp32"].losses, FP32)
    assert resumed[:3] == saved[:3]  # the checkpointed steps' losses come back
    assert resumed[3:] == saved[3:]  # and the next steps repeat them to the bit
    assert "resumed from step 3" in rank0["fsdp_resumed"]["log"]
    _close(rank0["ddp_resumed"]["losses"], saved, FP32)  # DCP reshards: FSDP -> DDP


def test_an_fsdp_checkpoint_resumes_in_one_process(launch, reference):
    *_, tmp = launch
    resumed = _run(resume=tmp / "cli-ck" / "step-0000003")  # written by 2 ranks, 2 micro-batches
    assert resumed.start_step == 3
    _close(resumed.losses, reference["fp32"].losses, FP32)


def test_bad_settings_on_two_ranks_are_clear_errors(launch):
    _, rank0, rank1, _ = launch
    for rank in (rank0, rank1):
        assert rank["batch_not_divisible"]["error"] == (
            "batch size 6 (the global batch) must divide by world size × grad-accum steps = "
            "2 × 2 = 4: each rank trains on batch size / world size examples a step, in "
            "grad-accum micro-batches; try batch size 4 or 8")
        assert rank["strategy_none"]["error"] == (
            "2 processes were started (torchrun) but the strategy is 'none': each would train "
            "the same model alone; pass --strategy ddp or fsdp")


# --- one process -------------------------------------------------------------------------


@pytest.mark.parametrize("grad_accum", [2, 4])
def test_gradient_accumulation_follows_one_full_batch(reference, grad_accum):
    accumulated = _run(grad_accum=grad_accum)
    _close(accumulated.losses, reference["fp32"].losses, FP32)
    _close(accumulated.accuracies, reference["fp32"].accuracies, FP32)


def test_a_resumed_run_in_one_process_repeats_the_uninterrupted_one(reference, tmp_path):
    saved = _run(save_every=2, checkpoint_dir=tmp_path)
    assert saved.losses == reference["fp32"].losses  # saving changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000002", "step-0000004",
                                                          "step-0000006"]
    shutil.rmtree(tmp_path / "step-0000006")  # as if interrupted after step 5
    (tmp_path / "step-0000005").mkdir()  # an unfinished checkpoint (no .metadata): skipped
    resumed = _run(resume=tmp_path)  # the latest complete one: step 4
    assert resumed.start_step == 4
    assert resumed.losses == reference["fp32"].losses  # to the bit
    assert resumed.accuracies == reference["fp32"].accuracies
    for name, value in reference["fp32"].model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def _no_torchrun(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("changes", "message"), [
    ({"strategy": "fsdp"}, "strategy 'fsdp' runs one process per device under "
     "torch.distributed, but RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set: launch it "
     "with torchrun, e.g. `torchrun --nproc-per-node 2 -m txblocks train SPEC --strategy fsdp`"),
    ({"strategy": "ddp"}, "strategy 'ddp' runs one process per device"),
    ({"strategy": "zero3"}, "unknown strategy 'zero3'; allowed: none, ddp, fsdp"),
    ({"grad_accum": 3}, "batch size 8 (the global batch) must divide by world size × "
     "grad-accum steps = 1 × 3 = 3: each rank trains on batch size / world size examples a "
     "step, in grad-accum micro-batches; try batch size 6 or 9"),
    ({"grad_accum": 0}, "grad_accum must be positive, got 0"),
    ({"save_every": 2}, "save_every needs a checkpoint_dir (--checkpoint-dir DIR) to write to"),
    ({"strategy": "fsdp", "dtype": "float16"}, "float16 loss scaling is not supported with "
     "strategy 'fsdp'; use bfloat16"),
])
def test_bad_settings_are_clear_errors(monkeypatch, changes, message):
    _no_torchrun(monkeypatch)
    with pytest.raises(TrainError, match=re.escape(message)):
        _run(**changes)


def test_strategy_none_refuses_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(TrainError, match="4 processes were started"):
        _run()


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainError, match=re.escape(f"cannot resume: {empty} holds no complete "
                                                   "checkpoint")):
        _run(resume=empty)
    with pytest.raises(TrainError, match="checkpoint folder not found"):
        _run(resume=tmp_path / "missing")
    _run(steps=2, checkpoint_dir=tmp_path / "ck")  # alone: one checkpoint after the last step
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-0000002"]
    with pytest.raises(TrainError) as info:
        _run(resume=tmp_path / "ck", batch_size=4, seed=5)
    assert str(info.value).splitlines() == [
        f"cannot resume from {tmp_path / 'ck' / 'step-0000002'}: the run's data would differ "
        "from the checkpointed run's:",
        "  batch_size: '8' in the checkpoint, '4' now",
        "  seed: '3' in the checkpoint, '5' now",
    ]
    with pytest.raises(TrainError, match="spec: the checkpoint was written for another model"):
        _run(tiny("decoder", d_model=64), resume=tmp_path / "ck")
    with pytest.raises(TrainError, match="is at step 2: steps=2 leaves nothing to train"):
        _run(steps=2, resume=tmp_path / "ck")


def test_the_command_line_explains_a_missing_torchrun(tmp_path, capsys, monkeypatch):
    _no_torchrun(monkeypatch)
    spec = tmp_path / "dec.yaml"
    spec.write_text(txblocks.load_spec(SPEC).to_yaml(), encoding="utf-8")
    args = cli.parser().parse_args(["train", str(spec), "--strategy", "fsdp", "--steps", "2",
                                    "--out", str(tmp_path / "x.safetensors")])
    assert args.run(args, Console(width=200)) == 1
    out = capsys.readouterr().out
    assert "launch it with torchrun" in out and not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (1, 4), (2, 1), (2, 2), (4, 2)])
def test_the_shards_of_all_ranks_are_the_global_batch(world, accum):
    batch = Batch({"input_ids": torch.arange(16 * 3).view(16, 3),
                   "attention_mask": torch.ones(16, 3)}, torch.arange(16))
    parts = [shard(batch, Distributed("ddp", rank, world, torch.device("cpu")), accum)
             for rank in range(world)]
    assert all(len(p) == accum for p in parts)
    micro = [m for rank in parts for m in rank]
    assert torch.equal(torch.cat([m.targets for m in micro]), batch.targets)
    for key, value in batch.inputs.items():
        assert torch.equal(torch.cat([m.inputs[key] for m in micro]), value)


class _Recorder(torch.nn.Module):
    """Stands for a wrapped model: records what gradient_sync asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    @contextlib.contextmanager
    def no_sync(self):
        self.calls.append("no_sync")
        yield

    def set_requires_gradient_sync(self, sync: bool) -> None:
        self.calls.append(f"sync={sync}")


@pytest.mark.parametrize(("strategy", "expected"), [
    ("ddp", ["no_sync", "no_sync"]),  # the last micro-batch syncs (DDP's default)
    ("fsdp", ["sync=False", "sync=False", "sync=True"]),
    ("none", []),
])
def test_only_the_last_micro_batch_reduces_gradients(strategy, expected):
    wrapped = _Recorder()
    env = Distributed(strategy, 0, 2, torch.device("cpu"))
    for last in (False, False, True):
        with gradient_sync(wrapped, env, sync=last):
            pass
    assert wrapped.calls == expected


@pytest.mark.cuda
def test_nccl_on_the_gpus(tmp_path):
    """FSDP2 over NCCL, bfloat16, on up to 2 GPUs (one process per GPU)."""
    spec = tmp_path / "dec.yaml"
    spec.write_text(txblocks.load_spec(SPEC).to_yaml(), encoding="utf-8")
    out = tmp_path / "dec.safetensors"
    done = _torchrun(min(2, torch.cuda.device_count()), "-m", "txblocks", "train", str(spec),
                     "--task", "copy", "--steps", "4", "--batch-size", "8", "--device", "cuda",
                     "--strategy", "fsdp", "--dtype", "bfloat16", "--save-every", "2",
                     "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert done.stdout.count(f"saved {out}") == 1
    assert (tmp_path / "ck" / "step-0000004" / ".metadata").is_file()
    txblocks.load(out)
