"""One rank of the 2-process runs of ``test_distributed.py``, started by torchrun.

    python -m torch.distributed.run --nproc-per-node 2 ... _distributed_worker.py PLAN.json

The plan (JSON) holds ``cli``: the argv of a ``txblocks`` command, run first exactly as
``-m txblocks`` runs it (so ``run()`` joins the process group from torchrun's environment
and destroys it at the end); then ``store_port`` and ``cases``: ``{name: run() keyword
arguments}``, run one after the other in one process group that this worker makes (a
second group from torchrun's environment would find the first one's keys in its store).
Each rank writes ``{name: {"losses", "accuracies", "log"} or {"error", "log"}}`` to
``rank{RANK}.json`` next to the plan.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console

from txblocks import cli, train


def main(plan_path: Path) -> None:
    torch.set_num_threads(1)
    plan = json.loads(plan_path.read_text())
    status = cli.main(plan["cli"])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results: dict[str, dict] = {"cli": {"status": status}}
    store = dist.TCPStore("127.0.0.1", plan["store_port"], world, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    for name, kwargs in plan["cases"].items():
        log = io.StringIO()
        try:
            result = train.run(console=Console(file=log, width=200), **kwargs)
        except train.TrainError as exc:
            results[name] = {"error": str(exc), "log": log.getvalue()}
        else:
            results[name] = {"losses": result.losses, "accuracies": result.accuracies,
                             "log": log.getvalue()}
    dist.barrier()
    dist.destroy_process_group()
    (plan_path.parent / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
