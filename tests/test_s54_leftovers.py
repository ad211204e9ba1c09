"""Stop 54 leftovers: the advice a diverged training stops with (a NaN loss, NaN validation answers) said "lower
--lr", which the same command then refused (the run folder holds the run; --resume refuses another --lr): it now
says what works, and one string says it in both places. A server without an index titled its page "polymodal
search" and warned that anyone could change "the index": both now say what it serves."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from fastapi.testclient import TestClient

from polymodal import cli
from polymodal.serve import create_app
from test_s54_captionjourney import untrained as _untrained_fixture  # noqa: F401
from test_s54_vqanan import data as _data_fixture

untrained = _untrained_fixture  # the fixtures, under their own names
data = _data_fixture
ADVICE = ("train again with a lower --lr and --overwrite, or into a new --out (--resume keeps the run's --lr; "
          "train.lr with overwrite=True or another out in Python)")


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("nan, batch, stop", [(float("nan"), 2, "the training loss became nan at step 4"),
                                              (1e30, 8, "validation: the model scores the answers")])
def test_the_advice_of_a_diverged_run_works_when_followed(capsys, data, tmp_path, monkeypatch, nan, batch, stop):
    """Epoch 1 trains and is checkpointed, epoch 2 diverges (a patched AdamW.step, as test_s54_vqanan's): a NaN
    loss at its second step (batches of 2), or NaN answers at its validation."""
    step, calls = torch.optim.AdamW.step, []

    def diverging(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > -(-4 // batch):  # the steps of epoch 2 (4 training rows)
            with torch.no_grad():
                for group in self.param_groups:
                    for param in group["params"]:
                        param.fill_(nan)
        return loss

    train = tmp_path / "train.jsonl"
    rows = [json.loads(line) for line in (data / "qa.jsonl").read_text().splitlines()]
    train.write_text("".join(json.dumps({**r, "image": str(data / r["image"])}) + "\n" for r in rows
                             if not r.get("choices")))
    run = ["train", "vqa", "--qa", train, "--out", tmp_path / "run", "--epochs", 2, "--dim", 16, "--fusion", "concat",
           "--val-fraction", 0.5, "--batch-size", batch, "--quiet"]
    monkeypatch.setattr(torch.optim.AdamW, "step", diverging)
    code, err = _run(capsys, *run)
    assert code == 2 and stop in err and ADVICE in err and "Traceback" not in err, err
    assert (tmp_path / "run" / "checkpoint.pt").is_file()  # epoch 1's: what made "lower --lr" alone fail
    monkeypatch.undo()  # a lower --lr: the step no longer diverges
    code, err = _run(capsys, *run, "--lr", "1e-4", "--resume")
    assert code == 2 and "was trained with --lr 0.001" in err  # as the advice says
    assert _run(capsys, *run, "--lr", "1e-4", "--overwrite")[0] == 0
    run[run.index(tmp_path / "run")] = tmp_path / "new"
    assert _run(capsys, *run, "--lr", "1e-4")[0] == 0


def test_a_server_without_an_index_says_what_it_serves(untrained, easy_vqa, lite, db, monkeypatch, caplog):
    import polymodal.cli_serve as cli_serve

    class _NotRun:
        def run(self, sockets):
            pass

    monkeypatch.setattr(cli_serve, "_announcing_server", lambda uvicorn, config, line: _NotRun())
    with caplog.at_level(logging.WARNING):
        assert cli.main(["serve", "--caption-model", str(untrained), "--host", "0.0.0.0", "--port", "0"]) == 0
    warning = next(r.getMessage() for r in caplog.records if "without --api-key" in r.getMessage())
    assert "anyone who can reach this address can use /v1/caption (" in warning and "index" not in warning
    with TestClient(create_app(None, None, caption_model=str(untrained), vqa_model=easy_vqa)) as client:
        assert "<title>polymodal answers and captions</title>" in client.get("/").text
    with TestClient(create_app(lite, db)) as client:
        assert "<title>polymodal search</title>" in client.get("/").text
