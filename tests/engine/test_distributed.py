import os
import subprocess
import sys
from pathlib import Path

import torch

from rdd3d.engine.run_logging import read_log

SCRIPT = Path(__file__).with_name("ddp_toy_run.py")


def _run(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_gloo_ranks_match_each_other_and_single_process(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          str(SCRIPT), str(ddp), "2"], tmp_path)
    _run([sys.executable, str(SCRIPT), str(single), "4"], tmp_path)  # same global batch

    rank0, rank1 = torch.load(ddp / "rank0.pt"), torch.load(ddp / "rank1.pt")
    reference = torch.load(single / "rank0.pt")
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
        torch.testing.assert_close(rank0[key], reference[key], rtol=1e-4, atol=1e-5)
    # Only rank 0 logs and checkpoints.
    assert not list(ddp.glob("log.jsonl.*"))
    assert len(read_log(ddp / "log.jsonl", "train")) == len(read_log(single / "log.jsonl", "train"))
    assert (ddp / "last.pt").is_file()
