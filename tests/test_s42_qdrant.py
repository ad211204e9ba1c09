"""Stop 42 review of the index and the Qdrant path: address-like --qdrant values, a model whose version changed since
the index (or collection) was built, and image files named beside the folder that holds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex
from polymodal.index.store import IndexModelMismatch

from test_index import COLOURS, FakeModel  # noqa: E402 - colour images whose vectors are their projected colour


def _photos(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (16, 16), COLOURS[name]).save(folder / f"{name}.png")
    return folder


@pytest.mark.parametrize("location", ["http:/localhost:6333", "grpc://localhost:6334", "localhost:6333/",
                                      "qdrant:6333/photos"])
def test_an_address_without_http_is_refused_not_made_a_local_folder(location, tmp_path, monkeypatch, capsys):
    """These were taken as local-mode folders: the push made ./http:/localhost:6333 (etc.) and reported success."""
    pytest.importorskip("qdrant_client")
    monkeypatch.chdir(tmp_path)
    ImageIndex(tmp_path / "db").update(_photos(tmp_path / "pics", ["red", "blue"]), FakeModel(), progress=False)
    assert main(["index", "--db", "db", "--qdrant", location]) == 2
    assert "http:// or https:// only" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "pics"]  # no folder named after the address


def test_a_folder_with_a_colon_that_exists_stays_local_mode(tmp_path, monkeypatch):
    pytest.importorskip("qdrant_client")
    from polymodal.index.qdrant import QdrantCollection

    monkeypatch.chdir(tmp_path)
    (tmp_path / "store:2024").mkdir()
    assert not QdrantCollection("store:2024/").remote  # an existing folder is the user's choice


def test_a_changed_version_of_the_recorded_model_says_to_rebuild_not_to_pass_it(tmp_path):
    """The recorded model loads with another key (a polymodal upgrade, edited preprocessing): the advice was
    `use --model fake with this index`, the very model that was just refused."""
    index = ImageIndex(tmp_path / "db")
    index.update(_photos(tmp_path / "pics", ["red", "blue"]), FakeModel(version="1"), progress=False)
    with pytest.raises(IndexModelMismatch) as same:
        index.check_model(FakeModel(version="2"))
    assert "--model fake" not in str(same.value) and "a new --db" in str(same.value)
    assert "has changed since" in str(same.value)

    class Other(FakeModel):
        name = "other"

    with pytest.raises(IndexModelMismatch, match="use --model fake with this index, or a new --db for other"):
        index.check_model(Other())


def test_a_collection_of_a_changed_model_says_to_push_a_rebuilt_index(tmp_path):
    pytest.importorskip("qdrant_client")
    from polymodal.index.qdrant import QdrantCollection

    index = ImageIndex(tmp_path / "db")
    index.update(_photos(tmp_path / "pics", ["red", "blue"]), FakeModel(version="1"), progress=False)
    collection = QdrantCollection(str(tmp_path / "q"), "photos")
    collection.push(index, progress=False)
    with pytest.raises(PolymodalError) as same:
        collection.check_model(FakeModel(version="2"))
    assert "--model fake" not in str(same.value) and "another --collection" in str(same.value)


def test_a_file_named_beside_its_folder_is_counted_once(tmp_path, monkeypatch, capsys):
    """`index pics pics/red.png`: the folder sync and the file add both counted red.png (added 2 + unchanged 1 of 2
    images; next time unchanged 3 of 2; an unreadable one was listed as skipped twice)."""
    monkeypatch.setattr("polymodal.load", lambda name, **kw: FakeModel())
    pics = _photos(tmp_path / "pics", ["red", "blue"])
    (pics / "bad.png").write_bytes(b"not a png")
    db = str(tmp_path / "db")
    for expected in ({"added": 2, "unchanged": 0}, {"added": 0, "unchanged": 2}):
        args = ["index", str(pics), str(pics / "red.png"), str(pics / "bad.png"), "--db", db, "--json"]
        assert main(args) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert {k: out[k] for k in expected} == expected and out["index"]["count"] == 2
        assert [p for p, _ in out["skipped"]] == [str(pics / "bad.png")]
