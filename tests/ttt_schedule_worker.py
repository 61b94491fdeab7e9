"""Run by tests/test_ttt_schedule.py under torchrun: score-first TTT of each case, rank 0's results to OUT/case.pt.

    python -m torch.distributed.run --nproc_per_node=2 tests/ttt_schedule_worker.py OUT CASE [CASE ...]
"""

from __future__ import annotations

import sys

import torch

from test_ttt_schedule import CASES, run_case

if __name__ == "__main__":
    torch.set_num_threads(1)
    from pgolf import distributed

    distributed.init_distributed(device="cpu")
    out = sys.argv[1]
    for case in sys.argv[2:]:
        got = run_case(case, CASES[case])
        if distributed.is_main():
            torch.save(got, f"{out}/{case}.pt")
    distributed.cleanup()
