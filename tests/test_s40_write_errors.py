"""A file that cannot be written is named as the user gave it (`--explain /proc/why.png` said
"/proc/.why.png.k945ukub.tmp", a name they never gave)."""

import pytest

from polymodal.cache import atomic_write_bytes
from polymodal import cli


def test_an_unwritable_target_is_named_not_its_temporary_file(tmp_path, monkeypatch):
    import tempfile

    def refuse(dir, prefix, suffix):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}abc{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        atomic_write_bytes(tmp_path / "why.png", b"x")
    assert info.value.filename == str(tmp_path / "why.png") and info.value.errno == 13


def test_the_cli_names_the_heat_map_path(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    target = "/proc/why.png"  # a folder no one, root included, can create files in
    assert cli.main(["vqa", str(tmp_path / "red.png"), "what color is the shape?", "--explain", target]) == 2
    err = capsys.readouterr().err
    assert target in err and ".tmp" not in err, err
