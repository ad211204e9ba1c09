"""What a review of VQA training on one's own data found (stop 41): a resumed run took other validation questions
(or validation files after its own split, whose photos then trained) without a word; --freeze of a head the run
makes fresh kept it random; another --min-answer-count / --max-answers on resume was blamed on the data; and a
continued model whose start (epoch 0) was kept was saved with the random ITM head the run had added."""

import json
import logging

import pytest

from polymodal.errors import PolymodalError
from polymodal.train.vqa import VQARecipe, train_vqa
from test_vqa import NAMES, write_qa  # noqa: E402 (tests/ is on the path)

TINY = {"fusion": "concat", "dim": 16, "dropout": 0.0}


@pytest.fixture(scope="module")
def qa(gallery):
    """All photos (45 rows), and two disjoint validation files of the same photos' questions."""
    return (write_qa(gallery / "s41-qa.jsonl", NAMES), write_qa(gallery / "s41-val-a.jsonl", NAMES[:5]),
            write_qa(gallery / "s41-val-b.jsonl", NAMES[5:10]))


def _recipe(qa_file, out, **kw):
    train = {"epochs": 1, "lr": 3e-3, "warmup_steps": 1, "patience": 0, **kw.pop("train", {})}
    return VQARecipe(qa=str(qa_file), out=str(out), arch=dict(TINY), train=train, batch_size=16, **kw)


@pytest.fixture(scope="module")
def split_run(qa, tmp_path_factory):
    """A one-epoch run that split off its own validation photos."""
    out = tmp_path_factory.mktemp("s41-split") / "run"
    train_vqa(_recipe(qa[0], out), progress=False)
    return out


@pytest.fixture(scope="module")
def file_run(qa, tmp_path_factory):
    """A one-epoch run validated on the file val-a."""
    out = tmp_path_factory.mktemp("s41-file") / "run"
    train_vqa(_recipe(qa[0], out, val_qa=str(qa[1])), progress=False)
    return out


def test_resuming_a_run_that_split_its_own_validation_with_val_qa_is_refused(gallery, qa, tmp_path):
    yes_no = gallery / "s41-yes-no.jsonl"  # yes twice as often as no: the photos that validated add no answer
    yes_no.write_text("".join(json.dumps({"image": f"{n}.jpg", "question": q, "answer": a}) + "\n" for i, n in
                              enumerate(NAMES) for q, a in ((f"is this a {n}?", "yes"), ("is it a photo?", "yes"),
                                                            (f"is this a {NAMES[(i + 5) % len(NAMES)]}?", "no"))))
    train_vqa(_recipe(yes_no, tmp_path / "run"), progress=False)
    before = (tmp_path / "run" / "train_config.json").read_text()
    with pytest.raises(PolymodalError, match=r"trained with --val-qa \(none: a --val-fraction split\) \(asked now: .*"
                                             r"s41-val-a\.jsonl\)"):  # it trained on the photos that validated it
        train_vqa(_recipe(yes_no, tmp_path / "run", val_qa=str(qa[1]), train={"epochs": 2}), resume=True,
                  progress=False)
    assert (tmp_path / "run" / "train_config.json").read_text() == before  # refused before anything was written


def test_resuming_with_other_validation_questions_is_refused_and_the_same_file_resumes(qa, file_run, monkeypatch):
    with pytest.raises(PolymodalError, match=r"chose its best epoch on 15 questions of 5 photos and this data validates "
                                             r"on other ones \(15 questions of 5 photos\)"):
        train_vqa(_recipe(qa[0], file_run, val_qa=str(qa[2]), train={"epochs": 2}), resume=True, progress=False)
    with pytest.raises(PolymodalError, match=r"trained with --val-qa .*s41-val-a\.jsonl \(asked now: \(none\)\)"):
        train_vqa(_recipe(qa[0], file_run, train={"epochs": 2}), resume=True, progress=False)
    monkeypatch.chdir(qa[1].parent)  # the same file by a relative path resumes
    best = train_vqa(_recipe(qa[0].name, file_run, val_qa=qa[1].name, train={"epochs": 2}), resume=True,
                     progress=False)
    assert best["epochs_run"] == 2


@pytest.mark.parametrize("flag, value", [("min_answer_count", 2), ("max_answers", 5)])
def test_another_vocabulary_setting_on_resume_is_named_not_blamed_on_the_data(qa, split_run, flag, value):
    with pytest.raises(PolymodalError, match=rf"trained with --{flag.replace('_', '-')} \d+ \(asked now: {value}\)"):
        train_vqa(_recipe(qa[0], split_run, train={"epochs": 2}, **{flag: value}), resume=True, progress=False)


@pytest.mark.parametrize("settings, part", [({"new_head": True, "freeze": ["vqa"]}, "vqa"),
                                            ({"itm_weight": 0.5, "freeze": ["itm"]}, "itm")])
def test_freezing_a_head_the_run_makes_fresh_is_refused(qa, split_run, tmp_path, settings, part):
    recipe = _recipe(qa[0], tmp_path / "run", model=str(split_run / "model"), **settings)
    recipe.arch = recipe.arch.__class__()  # a continued model keeps its own architecture
    with pytest.raises(PolymodalError, match=rf"--freeze {part}: the {part.upper()} head .* would stay random"):
        train_vqa(recipe, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_kept_start_model_is_saved_without_the_itm_head_this_run_added(qa, split_run, tmp_path, monkeypatch, caplog):
    import polymodal
    import polymodal.train.vqa as vqa

    scores = iter([1.0, 0.0])  # epoch 0 (the model as it came) scores best: it stays RUN/model
    monkeypatch.setattr(vqa, "feature_eval", lambda *a, **kw: {"val/accuracy": next(scores)})
    recipe = _recipe(qa[0], tmp_path / "run", model=str(split_run / "model"), itm_weight=0.5)
    recipe.arch = recipe.arch.__class__()
    with caplog.at_level(logging.WARNING):
        best = train_vqa(recipe, progress=False)
    assert best["epoch"] == 0 and "is that model, unchanged" in caplog.text
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["itm_head"] is False
    assert polymodal.load(str(tmp_path / "run" / "model")).itm is None  # outside choices score 0, as before
