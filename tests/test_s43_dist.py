"""torchrun (s43): a process that stops with an error leaves the others one line each, not a traceback of the
collective that lost its peer."""

import os
import subprocess
import sys

from test_distributed import WORLD, rendezvous  # noqa: E402 (tests/ is on the path)

# Started once per rank through polymodal's CLI: `train contrastive` stands in for a run in which rank 0 stops with
# an error of its own (a full disk while saving, say) while rank 1 waits in a collective.
FAILING_RANK_SCRIPT = '''
import sys

import polymodal.train.contrastive as contrastive
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.train import distributed


def train(recipe, **kwargs):
    distributed.init_from_env()
    if distributed.rank() == 0:
        raise PolymodalError("rank 0's own error")
    distributed.barrier()  # rank 0 has gone: gloo says "Connection closed by peer"
    return {}


contrastive.train_contrastive = train
sys.exit(cli.main(["train", "contrastive", "--pairs", "pairs.jsonl", "--out", sys.argv[1]] + sys.argv[2:]))
'''


def _run_ranks(script, *args) -> list:
    with rendezvous(WORLD) as env:
        procs = [subprocess.Popen([sys.executable, str(script), *map(str, args)],
                                  env=dict(os.environ, **env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in range(WORLD)]
        try:
            return [(p.wait(timeout=60), *p.communicate()) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()


def test_a_process_whose_peer_stopped_says_so_in_one_line(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK_SCRIPT)
    (rc0, _, err0), (rc1, _, err1) = _run_ranks(script, tmp_path / "run")
    assert rc0 == 2 and "polymodal: error: rank 0's own error" in err0, err0
    # rank 1's barrier failed because rank 0 had exited: one line that points at rank 0's error, not gloo's traceback
    assert rc1 == 2, err1
    assert "Traceback" not in err1 and "Connection closed" not in err1, err1
    lines = [line for line in err1.splitlines() if line.startswith("polymodal:")]
    assert lines == ["polymodal: error: process 1 of 2 stops: another process of this torchrun run stopped first "
                     "(its error, or torchrun's report of how it ended, says why): no epoch had finished, so nothing was "
                     "kept"], err1
