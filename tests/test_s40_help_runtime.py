"""--runtime's help speaks of "the index's model" only on the commands that fall back to it (index, search), not on
caption, vqa, classify or eval, which take no index."""

import pytest

from polymodal import cli


def _runtime_help(args, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([*args, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--runtime {auto,torch,onnx} ")
    return text[start : text.index("else torch)", start)]


@pytest.mark.parametrize("args, from_index", [
    (["index"], True), (["search"], True), (["serve"], True), (["classify"], False), (["caption"], False), (["vqa"], False),
    (["eval", "retrieval"], False), (["eval", "vqa"], False),
])
def test_runtime_help_names_the_index_only_where_there_is_one(args, from_index, capsys):
    text = _runtime_help(args, capsys)
    assert "default auto: onnx when --model" in text
    assert ("the index's model" in text) == from_index
