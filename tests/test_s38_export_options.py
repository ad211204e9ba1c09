"""`export onnx` option values that are no numbers to time or gate by: one error line, exit 2, nothing written."""

import pytest

from polymodal.cli import main


@pytest.mark.parametrize("flag, value", [("--timing-seconds", "inf"), ("--timing-seconds", "nan"),
                                         ("--max-drop-points", "nan"), ("--max-drop-points", "-1")])
def test_export_refuses_option_values_it_cannot_time_or_gate_by(tmp_path, capsys, flag, value):
    # inf timed the first graph forever (the command hung); nan kept nothing, "over the nan-point limit"
    assert main(["export", "onnx", "lite", "--out", str(tmp_path / "x"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "must be" in err[0]
    assert not (tmp_path / "x").exists()
