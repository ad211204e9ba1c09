"""Stop 56: a torchrun process whose peer stops while the group is still being joined (gloo's connectFullMesh:
"Connection closed by peer", seen in a fresh-clone CI run on a busy machine) says the one line a peer gone in a
later collective gets, not gloo's traceback."""

import pytest

from polymodal import cli
from polymodal.train import distributed


def _joining_fails(args):
    raise RuntimeError("Gloo connectFullMesh failed with [../pair.cc:553] Connection closed by peer [127.0.0.1]:28332. "
                       "This is typically caused by a remote worker crashing.")


def test_a_peer_gone_while_joining_is_one_line(monkeypatch, capsys):
    import polymodal.cli_train as cli_train

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli_train, "cmd_train_contrastive", _joining_fails)
    assert not distributed.is_distributed()  # the group was never joined
    assert cli.main(["train", "contrastive", "--pairs", "p.jsonl", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "connectFullMesh" not in err
    assert err.startswith("polymodal: error: process 1 of 2 stops: another process of this torchrun run stopped "
                          "first"), err


@pytest.mark.parametrize("env, expected", [({}, False), ({"WORLD_SIZE": "1"}, False), ({"WORLD_SIZE": "2"}, True),
                                           ({"WORLD_SIZE": "two"}, False)])
def test_only_a_torchrun_world_of_several_reads_a_closed_connection_as_a_peer_gone(monkeypatch, env, expected):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.another_process_stopped(RuntimeError("Connection closed by peer")) is expected
    assert not distributed.another_process_stopped(RuntimeError("out of memory"))
