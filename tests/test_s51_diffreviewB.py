"""Review of stop 51's provenance commit (helper s51/diffreviewB).

- RUN/model/trained_with.json stayed when other weights were saved over the folder (a model loaded, changed in Python
  and saved back): `info --model` showed the old run's seed, data and command beside the new key. The record now
  carries the version of the weights it describes, and `info` says when the folder's weights are not those.
- An int8 variant that failed for a reason of its own (an operator the quantizer rejects) on a disk with room but
  under 1 MiB of it stopped the export with a bare "No space left on device", hiding the real error. The error now
  says how little was left and what the build said.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections import namedtuple

import pytest

from polymodal import cli


class _SavedModel:
    """Stands for a trained model: save() writes the config.json of weights with this version."""

    def __init__(self, version: str) -> None:
        self.version = version

    def save(self, folder) -> None:
        (folder / "config.json").write_text(json.dumps({"type": "dual_encoder", "name": "mine",
                                                        "version": self.version}))


def test_a_record_beside_weights_saved_over_since_is_not_shown_as_theirs(tmp_path, capsys):
    from polymodal.training_photos import TrainingPhotos

    folder = tmp_path / "run" / "model"
    folder.parent.mkdir()
    TrainingPhotos([], settings={"train": {"seed": 3}}).save(_SavedModel("aaaaaaaaaaaa"), folder)
    assert json.loads((folder / "trained_with.json").read_text())["version"] == "aaaaaaaaaaaa"
    assert cli.main(["info", "--model", str(folder)]) == 0
    assert re.search(r"^seed +3$", capsys.readouterr().out, re.M)  # its own weights: the record is theirs

    _SavedModel("bbbbbbbbbbbb").save(folder)  # model.save(folder) from Python: trained_with.json stays
    assert cli.main(["info", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^trained with +not recorded for these weights: trained_with.json describes weights "
                     r"aaaaaaaaaaaa, saved over since", out, re.M) and not re.search(r"^seed ", out, re.M), out
    assert cli.main(["info", "--model", str(folder), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["model"]
    assert shown["trained_with"] is None and shown["trained_with_other_weights"]["settings"]["train"]["seed"] == 3


def test_a_variant_failing_on_its_own_with_under_1_mib_left_says_its_own_error(tmp_path, monkeypatch):
    from polymodal.export.variants import _atomic

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 << 20, (100 << 20) - (512 << 10), 512 << 10))

    def unsupported(tmp):
        raise RuntimeError("Node (MatMulInteger) Op (MatMulInteger) kernel is not supported")

    out = tmp_path / "text.int8_static.onnx"
    with pytest.raises(OSError) as caught:
        _atomic(unsupported, out, tmp_path / "text.fp32.onnx")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    assert caught.value.strerror == ("No space left on device (under 1 MiB left there; the build then failed: "
                                     "RuntimeError: Node (MatMulInteger) Op (MatMulInteger) kernel is not supported)")
