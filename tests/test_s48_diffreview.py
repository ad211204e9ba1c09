"""Review of stop 48's diff (helper s48/diffreview): the run folder check of torchrun's ranks, VQA v2's questions
file given by a relative path, and the 2 MB pages move of an index no longer searched (a served index's: in
test_s48_huge_pages.py)."""

import json
import os

import faiss
import numpy as np
import pytest
from PIL import Image

from polymodal.errors import PolymodalError
from polymodal.index import pages
from polymodal.train import run_lock

fcntl = pytest.importorskip("fcntl")  # the run folder's lock is an flock: none on Windows


def test_ranks_checking_the_run_folder_at_once_do_not_refuse_each_other(tmp_path):
    # torchrun's ranks all check right after joining the group: one rank's check, held at that moment, refused
    # another's as "another process is training" (2 in 1,200 checks at 4 ranks)
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another rank's check, in progress
        run_lock.refuse_if_busy(out)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a process training there: still refused
        with pytest.raises(PolymodalError, match="another process is training"):
            run_lock.refuse_if_busy(out)
    finally:
        os.close(fd)
    with run_lock.holding(out):  # and the trainer's own lock still refuses a second check
        with pytest.raises(PolymodalError, match="another process is training"):
            run_lock.refuse_if_busy(out)


def test_a_vqa_v2_questions_file_given_by_a_relative_path_finds_its_photos(tmp_path, monkeypatch):
    # README's `--qa Questions/v2_OpenEnded_mscoco_val2014_questions.json` from the VQA folder: the photos were read
    # at Questions/Images/..., every row "not found"; from inside Questions/, ../Annotations was "./Annotations"
    from polymodal.eval.vqa import read_qa

    for folder in ("Questions", "Annotations", "Images/mscoco/val2014"):
        (tmp_path / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "Images/mscoco/val2014/COCO_val2014_000000000042.jpg")
    (tmp_path / "Questions/v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {"data_subtype": "val2014", "questions": [{"image_id": 42, "question": "Red?", "question_id": 420}]}))
    (tmp_path / "Annotations/v2_mscoco_val2014_annotations.json").write_text(json.dumps(
        {"data_subtype": "val2014", "annotations": [{"question_id": 420, "answer_type": "yes/no",
                                                     "multiple_choice_answer": "yes", "answers": ["yes"] * 10}]}))
    photo = (tmp_path / "Images/mscoco/val2014/COCO_val2014_000000000042.jpg").resolve()
    monkeypatch.chdir(tmp_path)
    assert [r.image.resolve() for r in read_qa("Questions/v2_OpenEnded_mscoco_val2014_questions.json")] == [photo]
    monkeypatch.chdir(tmp_path / "Questions")
    assert [r.image.resolve() for r in read_qa("v2_OpenEnded_mscoco_val2014_questions.json")] == [photo]


def test_a_move_onto_huge_pages_stops_when_it_is_no_longer_wanted(monkeypatch):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(256))
    index.add_with_ids(np.ones((24_000, 256), np.float32), np.arange(24_000))  # 23 MB, past MIN_BYTES
    monkeypatch.setattr(pages, "CHUNK", 4 << 20)
    asked = []
    assert not pages.advise_huge_pages(index, lambda: asked.append(1) or len(asked) < 2)
    from test_s48_huge_pages import _kernel_can_move

    assert len(asked) == 2 if _kernel_can_move() else len(asked) <= 2  # stopped at the second chunk
