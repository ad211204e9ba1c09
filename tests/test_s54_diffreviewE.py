"""Stop 54 review of the NaN-answer and index-less serving commits. NaN: a model answering every question as NaN
was scored after all when the file held a multiple-choice row whose choices it can score none of. Such a row got
("", 0.0) without the model's answer being looked at, so "every answered row is NaN" never held: eval vqa printed
accuracy 0.0 over that one row (exit 0) and vqa --qa wrote answers, where the model is broken (one error, exit 2).
The model's own answer to such a row (asked as an open question) is checked now: NaN on every
row is the error, and a row of unscorable choices on a photo answered as NaN is left out as not_finite, as one on
an unreadable photo counts as unreadable.
Serving: /v1/caption read each caption's cut flag from an attribute of the model, which another thread captioning
with the same model object could replace in between; it is kept per thread now."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

from PIL import Image

import polymodal
from polymodal import cli
from polymodal.eval.vqa import read_qa, vqa_accuracy
from polymodal.models.beam_search import caption_batches
from test_s54_vqanan import data as _data_fixture, white_overflows as _white_fixture  # noqa: E402

data = _data_fixture  # photos of 3 colours and a white one, a tiny model saved as made ("ok") and with NaN weights
white_overflows = _white_fixture  # the white photo's grid features are inf: its answers NaN


def _with_unscorable_row(data, tmp_path):
    """The fixture's open rows, and one multiple-choice row whose choices the model (no ITM head) knows none of."""
    rows = [json.loads(line) for line in (data / "qa.jsonl").read_text().splitlines()]
    rows = [{**r, "image": str(data / r["image"])} for r in rows if not r.get("choices")]
    rows.append({"image": str(data / "red.png"), "question": "which shade?", "answer": "crimson",
                 "choices": ["crimson", "scarlet"]})
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_nan_model_is_refused_though_a_row_has_choices_it_cannot_score(capsys, data, tmp_path):
    qa = _with_unscorable_row(data, tmp_path)
    for argv in (["eval", "vqa", "--qa", qa], ["vqa", "--qa", qa]):
        code = cli.main([str(a) for a in [*argv, "--model", data / "nan", "--quiet"]])
        out, err = capsys.readouterr()
        assert code == 2 and out == "", (argv, out)
        assert "all 9 questions as NaN or inf" in err and "Traceback" not in err, err
    # the model before its weights broke is scored as usual, that row counted wrong
    assert cli.main([str(a) for a in ["eval", "vqa", "--qa", qa, "--model", data / "ok", "--quiet"]]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["not_finite"] == 0 and line["multiple_choice_unscorable"] == 1 and line["count"] == 9


def test_a_row_of_unscorable_choices_on_a_photo_answered_as_nan_is_left_out_too(data, tmp_path, white_overflows):
    """As a row of unscorable choices on an unreadable photo counts as unreadable, not as a scored wrong row."""
    rows = read_qa(_with_unscorable_row(data, tmp_path))
    rows.append(replace(rows[-1], image=data / "white.png"))
    got = vqa_accuracy(polymodal.load(str(data / "ok")), rows)
    assert got["not_finite"] == 3 and got["multiple_choice_unscorable"] == 1 and got["count"] == len(rows) - 3


# -- the served caption's "cut" flags: per thread, not state on a shared model --------------------------------------

class _Interleaved:
    """A captioner (every caption cut at 4 pieces) whose first call, while decoding, lets another thread caption one
    photo with the same object: as two apps sharing one loaded captioner, each with its own model thread, may."""

    key = name = "interleaved"

    def __init__(self):
        self.meanwhile = lambda: self.caption([Image.new("RGB", (8, 8))])

    def caption(self, images, beam=3):
        def text(pieces):
            if self.meanwhile is not None:
                other, self.meanwhile = threading.Thread(target=self.meanwhile), None
                other.start()
                other.join()
            return str(pieces)

        return caption_batches(images, 16, beam, 4, 3, lambda batch, *_: [[5, 6, 7, 8]] * len(batch), text, owner=self)


def test_another_thread_captioning_with_the_same_model_leaves_a_reply_its_own_flags():
    """owner.last_unfinished was replaced by the other thread's [cut]: zip() cut the 3-photo reply to 1 result."""
    from polymodal.serve.app import _captions

    captions, kinds, max_tokens = _captions(_Interleaved(), [Image.new("RGB", (8, 8))] * 3, 1)
    assert len(captions) == 3 and kinds == ["cut"] * 3 and max_tokens == 4
