"""torchrun (s45): what the processes of one run print to their shared stderr."""

import sys

from polymodal.cli import main


class _Writes:
    """A stderr that records each write call."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_an_error_line_is_written_in_one_piece(tmp_path, monkeypatch):
    # under torchrun every process prints its error to the same stderr: print()'s two writes (the text, then the
    # newline) let two processes' lines run together ("... or choose another --outpolymodal: error: ...")
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    code = main(["train", "contrastive", "--pairs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "run")])
    assert code == 2
    lines = [w for w in stderr.writes if "polymodal: error:" in w]
    assert len(lines) == 1 and "missing.jsonl" in lines[0]
    assert lines[0].endswith("\n") and lines[0].count("\n") == 1
