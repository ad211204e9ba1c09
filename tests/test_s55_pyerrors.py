"""Stop 55: errors and warnings that library code raises to Python callers (ImageIndex, QdrantCollection, train_*)
spoke only in CLI flags ("use --model default with this index", "Pass --itm-weight ... or --freeze
projections,fusion"). Each now gives the Python way too, as "--flag (name in Python)", with the CLI wording kept."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex
from polymodal.index.store import IndexModelMismatch

from test_index import FakeModel  # noqa: E402 - colour images whose vectors are their projected colour
from test_s42_qdrant import _photos  # noqa: E402


class Other(FakeModel):
    name = "other"


@pytest.fixture
def index(tmp_path):
    index = ImageIndex(tmp_path / "db")
    index.update(_photos(tmp_path / "pics", ["red", "blue"]), FakeModel(version="1"), progress=False)
    return index


def test_a_model_mismatch_says_which_model_to_load_in_python(index):
    with pytest.raises(IndexModelMismatch) as err:
        index.check_model(Other())
    assert str(err.value).endswith("use --model fake with this index, or a new --db for other (in Python: "
                                   "polymodal.load('fake'), or an ImageIndex of a new folder)")
    with pytest.raises(IndexModelMismatch) as changed:
        index.check_model(FakeModel(version="2"))
    assert str(changed.value).endswith("into a new --db (an ImageIndex of a new folder in Python)")


def test_a_collection_mismatch_says_which_model_to_load_in_python(index, tmp_path):
    pytest.importorskip("qdrant_client")
    from polymodal.index.qdrant import QdrantCollection

    collection = QdrantCollection(str(tmp_path / "q"), "photos")
    collection.push(index, progress=False)
    with pytest.raises(PolymodalError) as err:
        collection.check_model(Other())
    assert "use --model fake with it, or another --collection for other (in Python: polymodal.load('fake'), or " \
           "another collection=)" in str(err.value)
    other = ImageIndex(tmp_path / "db2")
    other.update(tmp_path / "pics", Other(), progress=False)
    with pytest.raises(PolymodalError, match=r"push the index to another --collection \(another collection= in "
                                             r"Python\)"):
        collection.push(other, progress=False)
    with pytest.raises(PolymodalError, match=r"--collection nowhere` \(\.push\(ImageIndex\(DB\)\) in Python\)"):
        collection.collection = "nowhere"  # local mode: one client a folder, so this one asks for another name
        collection._metadata = None
        collection.check_model(FakeModel())


def test_an_index_in_the_photo_folder_names_imageindex(tmp_path):
    pics = _photos(tmp_path / "pics", ["red"])
    with pytest.raises(PolymodalError) as err:
        ImageIndex(pics).update(pics, FakeModel(), progress=False)
    assert str(err.value).endswith("e.g. --db pics.idx (ImageIndex('pics.idx') in Python)")
    with pytest.raises(PolymodalError, match=r"--db pics\.idx` \(ImageIndex\('pics\.idx'\)\.update\(FOLDER, model\) "
                                             r"in Python\), then search that"):
        ImageIndex(pics).search_text(FakeModel(), "red")
    with pytest.raises(PolymodalError, match=r"e\.g\. --db pics\.idx \(ImageIndex\('pics\.idx'\) in Python\)"):
        ImageIndex("  ")


def test_a_missing_index_says_how_to_build_it_in_python(tmp_path):
    with pytest.raises(PolymodalError) as err:
        ImageIndex(tmp_path / "typo.idx").search_text(FakeModel(), "red")
    assert str(err.value).endswith("typo.idx` (index.update(DIR, model) in Python)")


def test_the_itm_drift_warning_names_the_recipe_settings(caplog):
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
    from polymodal.train.vqa import warn_of_a_drifting_itm_head

    torch.manual_seed(0)
    model = FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, itm_head=True,
                                              answers=["yes", "no"]))
    with caplog.at_level(logging.WARNING, logger="polymodal.train.vqa"):
        assert warn_of_a_drifting_itm_head(model, 0.0, "runs/pt/model")
    assert "Pass --itm-weight (e.g. 0.5; itm_weight in Python) to train it too, or --freeze projections,fusion " \
           "(freeze=['projections', 'fusion'] in Python) to keep it as it is" in caplog.text


def test_resume_refusals_name_the_python_settings(tmp_path):
    from polymodal.train.trainer import read_checkpoint, refuse_a_finished_run

    with pytest.raises(PolymodalError, match=r"pass --epochs 3 or more \(train\.epochs in Python\) to continue it"):
        refuse_a_finished_run(tmp_path, 2, 2)
    with pytest.raises(PolymodalError, match=r"pass --patience 3 or more \(0: no early stop; train\.patience in "
                                             r"Python\)"):
        refuse_a_finished_run(tmp_path, 2, 5, bad_epochs=2, patience=2)
    (tmp_path / "checkpoint.pt").write_bytes(b"cut short")
    with pytest.raises(PolymodalError, match=r"with --overwrite \(overwrite=True in Python\)$"):
        read_checkpoint(tmp_path / "checkpoint.pt")


def test_recipe_refusals_name_the_python_settings():
    from polymodal.train.contrastive import check_unfreezing_schedule, rank_batch_size
    from polymodal.train.guards import refuse_lone_val_split
    from polymodal.train.pretrain import parse_objectives, read_pairs

    with pytest.raises(PolymodalError, match=r"--image-trainable-blocks 2 \(train\.epochs, "
                                             r"arch\.image_trainable_blocks in Python\)"):
        check_unfreezing_schedule(1, 4, 3)
    with pytest.raises(PolymodalError, match=r"--unfreeze-every \(train\.epochs, train\.unfreeze_every in Python\)"):
        check_unfreezing_schedule(5, 2, 2)
    with pytest.raises(PolymodalError, match=r"to keep them all for training; val_fraction, val_pairs in Python\)"):
        rank_batch_size(1, 8)
    with pytest.raises(PolymodalError, match=r"mrm:0\.5 \(objectives=\{'itm': 1, 'mlm': 1, 'mrm': 0\.5\} in Python\)"):
        parse_objectives("")
    with pytest.raises(PolymodalError, match=r"--pairs FILE\.jsonl \(pairs= in Python\)"):
        read_pairs([])
    with pytest.raises(PolymodalError, match=r"leave --val-split out \(val_qa, val_split in Python\)"):
        refuse_lone_val_split(SimpleNamespace(val_split="val", val_qa=[]), "val_qa")


def test_model_refusals_name_the_python_call():
    from polymodal.models.captioner import CaptionerConfig

    with pytest.raises(PolymodalError, match=r"--max-caption-tokens 32 or so \(max_caption_tokens in Python\)"):
        CaptionerConfig(max_caption_tokens=2).validate()


def test_an_unreachable_qdrant_names_the_location_for_python():
    pytest.importorskip("qdrant_client")
    from qdrant_client.http.exceptions import ResponseHandlingException

    from polymodal.index.qdrant import QdrantCollection

    exc = QdrantCollection("http://q:6333", "photos")._explain(ResponseHandlingException(OSError("refused")))
    assert str(exc).endswith("start the server, or fix --qdrant (the location in Python)")


def test_resuming_with_other_settings_says_what_a_python_recipe_must_do(tmp_path):
    """--resume fills left-out flags from train_config.json; a recipe built in Python is not filled, so "leave them
    out" alone was wrong advice there."""
    from polymodal.train.run_settings import another_run

    message = str(another_run(tmp_path / "run", [("lr", 0.001, 0.01)], flags={"lr"}))
    assert "--lr 0.001 (asked now: 0.01)" in message and "leave them out: --resume reads" in message
    assert "in Python, a recipe with the run's values" in message
