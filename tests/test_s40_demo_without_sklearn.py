"""`make demo` without scikit-learn (an optional source of two gallery photos): the demo classifies the photos the
gallery holds instead of failing at step 6 with "image not found: gallery/temple.jpg"."""

import re
import sys

from polymodal import demo


def test_the_demo_runs_without_scikit_learn(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    classified = re.findall(r"^  (\w+)\.jpg ", out.split("6. Zero-shot")[1].split("7. Captions")[0], re.M)
    assert classified and "temple" not in classified and "flower" not in classified
    assert not (tmp_path / "gallery" / "temple.jpg").exists()
