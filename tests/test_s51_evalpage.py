"""Stop 51: `eval ... --page FILE.html`, an evaluation to look at. Every eval command writes one self-contained page
(photos inlined, no script, nothing fetched): the figures line at the top, then the items, the model's failures
first, worst first, each with its photo(s), the text, the model's answer or top hits and the truth. A bad --page is
refused before the model loads. Fast: a fake model that sees a photo by its file name."""

import base64
import html
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from PIL import Image

import polymodal
from polymodal import cli
from test_s30b_audit import NameModel

KINDS = ["cat", "dog", "sun", "car"]
COLOURS = {"cat": (200, 120, 40), "dog": (90, 60, 30), "sun": (250, 220, 0), "car": (30, 60, 200)}


class Seer(NameModel):
    """A fake of every model kind: a photo is what its file name says after its last "_as_" ("dog_as_cat.png": a
    dog the model sees as a cat); a text is the first of KINDS it names. Embeds both on that kind's axis and answers
    with it; captions by colour; broken.png cannot be read."""

    name = "seer"
    names = KINDS
    dim = len(KINDS) + 1

    def predict(self, images, questions):
        return [(self._stem(i), 0.75) for i in images]

    def check_choices(self, choices):
        return {c: c for c in choices}, ""

    def predict_choices(self, images, questions, choices):
        return [(self._stem(i) if self._stem(i) in c else c[0], 0.6) for i, c in zip(images, choices)]

    def caption(self, images, **decoding):  # (decoded photos, without their names: each kind has its colour)
        kind = {rgb: k for k, rgb in COLOURS.items()}
        return [f"a photo of a {kind[i.convert('RGB').getpixel((0, 0))]}" for i in images]


@pytest.fixture()
def loads(monkeypatch):
    """polymodal.load -> a Seer, each call recorded (a bad --page must be refused before any)."""
    calls = []
    monkeypatch.setattr(polymodal, "load", lambda name, **kw: calls.append(name) or Seer())
    return calls


@pytest.fixture()
def data(tmp_path) -> Path:
    """Photos (one named with markup, one a dog the model sees as a cat, one unreadable) and a file per command."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name, kind in (("cat", "cat"), ("cat2", "cat"), ("dog_as_cat", "dog"), ("dog", "dog"), ("<b>sun", "sun"),
                       ("sun2", "sun"), ("car", "car")):
        Image.new("RGB", (40, 30), COLOURS[kind]).save(folder / f"{name}.png")
    (folder / "broken.png").write_text("not a photo")
    _jsonl(folder / "pairs.jsonl", [("cat.png", "a cat on a mat"), ("dog_as_cat.png", "a dog <script>x</script>"),
                                    ("<b>sun.png", "the sun"), ("car.png", "a red car")], "image", "caption")
    _jsonl(folder / "labels.jsonl", [("cat.png", "cat"), ("cat2.png", "cat"), ("dog_as_cat.png", "dog"),
                                     ("dog.png", "dog"), ("<b>sun.png", "sun"), ("sun2.png", "sun"),
                                     ("car.png", "<i>car</i>"), ("broken.png", "cat")], "image", "label")
    rows = [{"image": "cat.png", "question": "what is it?", "answer": "cat"},
            {"image": "dog_as_cat.png", "question": "what <em>is</em> it?", "answer": "dog"},
            {"image": "<b>sun.png", "question": "sun or car?", "answer": "car", "choices": ["sun", "car"]},
            {"image": "broken.png", "question": "what is it?", "answer": "cat"}]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _jsonl(path: Path, rows, *keys) -> None:
    path.write_text("".join(json.dumps(dict(zip(keys, row))) + "\n" for row in rows))


ARGV = {"retrieval": ["retrieval", "--pairs", "pairs.jsonl"], "zeroshot": ["zeroshot", "--labels-file", "labels.jsonl"],
        "images": ["images", "--labels-file", "labels.jsonl"], "vqa": ["vqa", "--qa", "qa.jsonl"],
        "captions": ["captions", "--pairs", "pairs.jsonl", "--beam", "1"]}


def _eval(capsys, data, command, *more):
    argv = ["eval", *[str(data / a) if a.endswith(".jsonl") else a for a in ARGV[command]], "--model", "seer", *more]
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _page(capsys, data, command, *more) -> tuple[str, dict]:
    page = data.parent / f"{command}.html"
    code, out, err = _eval(capsys, data, command, "--page", page, *more)
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    # the figures line at the top, as printed; nothing fetched from elsewhere, no script; every photo inlined
    assert html.escape(out.strip()) in text and text.index("class='figures'") < text.index("<section")
    assert "<script" not in text and not re.search(r"""(src|href)=['"](?!data:image/jpeg;base64,)""", text)
    # (stop 52: each photo inlined once, as a CSS class its places name, not as an <img> in each place)
    assert not re.search(r"url\((?!data:image/jpeg;base64,)", text)
    pictures = dict(re.findall(r"\.(p\d+)\{background-image:url\(data:image/jpeg;base64,([^)]+)\)\}", text))
    for encoded in pictures.values():
        assert max(Image.open(io.BytesIO(base64.b64decode(encoded))).size) <= 128
    assert set(re.findall(r"class='img (p\d+)'", text)) == set(pictures)
    return text, json.loads(out)


def _verdicts(text: str) -> list[str]:
    return re.findall(r"<div class='verdict'>([^<]*)</div>", text)


def _worst_first(verdicts: list[str]) -> None:
    """Failures ("rank N", "score S") before the right ones, worst first; the unscored last."""
    badness = [int(v.split()[1]) if v.startswith("rank") else 2 - float(v.split()[1]) if v.startswith("score")
               else 0 if v == "right" else -1 for v in verdicts]
    assert badness == sorted(badness, reverse=True) and badness[0] > 0, verdicts


def test_retrieval_page_shows_each_missed_caption_with_its_photo_and_the_models_top_three(capsys, loads, data,
                                                                                         tmp_path):
    text, line = _page(capsys, data, "retrieval", "--out", tmp_path / "items.jsonl")
    assert line["t2i_R@1"] == 0.5 and _verdicts(text) == ["rank 4", "rank 2", "right", "right"]
    # "a dog" (its photo seen as a cat) ranks last, "a cat" ties with that photo (a tie is a miss): worst first
    sections = text.split("<section")[1:]
    assert "a dog &lt;script&gt;x&lt;/script&gt;" in sections[0] and "a cat on a mat" in sections[1]
    assert "<script>" not in text and "&lt;b&gt;sun.png" in text and "<b>sun" not in text  # texts and file names
    # its photo, then the model's top 3: the look-alike before it (a tie ranks the right photo after the others)
    assert re.findall(r"<figcaption dir='auto'>([^<]*)<br>", sections[1]) == ["cat.png", "dog_as_cat.png",
                                                                             "cat.png", "&lt;b&gt;sun.png"]
    assert len(re.findall(r"class='img p\d+'", sections[1])) == 4
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert [Path(n).name for n in items[0]["top"]] == ["dog_as_cat.png", "cat.png", "<b>sun.png"]  # --out has them too


def test_a_long_evaluation_shows_its_first_items_and_says_how_many_more(capsys, loads, data, monkeypatch):
    import polymodal.eval.page as page

    monkeypatch.setattr(page, "SHOWN", 2)
    text, _ = _page(capsys, data, "retrieval")
    assert _verdicts(text) == ["rank 4", "rank 2"] and "The first 2 items; 2 more not shown" in text


def test_zeroshot_page_shows_photo_label_and_prediction_failures_first(capsys, loads, data):
    text, line = _page(capsys, data, "zeroshot")
    verdicts = _verdicts(text)
    _worst_first(verdicts)
    assert verdicts[0] == "rank 4" and verdicts[-1] == "not scored" and line["unreadable"] == 1
    first = text.split("<section")[1]  # the dog seen as a cat: its label last of the 4 classes
    assert "dog_as_cat.png" in first and "<dd dir='auto'>dog</dd>" in first and "<dd dir='auto'>cat</dd>" in first
    assert "&lt;i&gt;car&lt;/i&gt;" in text and "<i>car" not in text
    assert "cannot read broken.png" in text.split("<section")[-1] and "1 of 7 photos whose label" in text


def test_images_page_shows_the_query_and_its_nearest_photos_with_their_labels(capsys, loads, data, tmp_path):
    text, _ = _page(capsys, data, "images", "--out", tmp_path / "items.jsonl")
    _worst_first(_verdicts(text))
    items = {Path(i["image"]).name: i for i in map(json.loads, (tmp_path / "items.jsonl").read_text().splitlines())}
    worst = max((i for i in items.values() if "rank" in i), key=lambda i: i["rank"])
    first = text.split("<section")[1]
    assert html.escape(Path(worst["image"]).name) in first and len(worst["top"]) == 3
    # each hit named with its label, framed red when it is another label's
    for n, hit in enumerate(worst["top"], 1):
        assert html.escape(f"{n}. {items[Path(hit).name]['label']}") in first
    assert first.count("class='wrong'") == sum(items[Path(h).name]["label"] != worst["label"] for h in worst["top"])


def test_vqa_page_shows_question_answer_truth_and_choices_wrong_answers_first(capsys, loads, data, tmp_path):
    text, line = _page(capsys, data, "vqa", "--out", tmp_path / "items.jsonl")
    # accuracy to 4 decimals, as every eval figure (stop 54)
    assert _verdicts(text) == ["score 0.00", "score 0.00", "right", "not scored"] and line["accuracy"] == round(1 / 3, 4)
    first, second = text.split("<section")[1:3]
    assert "what &lt;em&gt;is&lt;/em&gt; it?" in first and "<dd dir='auto'>cat (0.75)</dd>" in first  # confident first
    assert "<dd dir='auto'>dog</dd>" in first
    assert "<li dir='auto'>sun</li><li dir='auto'>car</li>" in second and "sun (0.60)" in second
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert items[2]["choices"] == ["sun", "car"] and "choices" not in items[0]


def test_captions_page_shows_the_generated_caption_and_the_references(capsys, loads, data):
    """The lowest CIDEr-D first: each photo's own, as --out's items give it (the page kept the data's order)."""
    text, line = _page(capsys, data, "captions", "--out", data.parent / "items.jsonl")
    sections = text.split("<section")[1:]
    assert len(sections) == 4 and "captioned photos, the lowest CIDEr-D first" in text
    items = [json.loads(x) for x in (data.parent / "items.jsonl").read_text().splitlines()]
    assert abs(sum(i["cider"] for i in items) / len(items) - line["cider"]) < 1e-3  # the corpus figure is their mean
    ranked = sorted(items, key=lambda i: i["cider"])
    assert ranked != items  # the data's order is not already the lowest first: the test can tell
    for section, item in zip(sections, ranked):
        assert f"CIDEr-D {item['cider']:.2f}" in section and html.escape(Path(item["image"]).name) in section
    dog = next(s for s in sections if "dog_as_cat.png" in s)
    assert "a photo of a dog" in dog and "a dog &lt;script&gt;x&lt;/script&gt;" in dog


@pytest.mark.parametrize("command", sorted(ARGV))
def test_a_bad_page_path_is_one_error_before_the_model_loads(command, capsys, loads, data, tmp_path):
    given = data / ARGV[command][2]
    for page, said in ((tmp_path, "is a folder"), (tmp_path / "no" / "p.html", "does not exist; create it first"),
                       (given, "is one of the data files being evaluated")):
        code, out, err = _eval(capsys, data, command, "--page", page)
        assert code == 2 and out == "" and err.count("\n") == 1 and f"--page {page}" in err and said in err, err
    code, _, err = _eval(capsys, data, command, "--page", tmp_path / "x.jsonl", "--out", tmp_path / "x.jsonl")
    assert code == 2 and "is also --out" in err and f"--page {tmp_path / 'x.html'}" in err
    assert loads == [] and not list(tmp_path.glob("*.html"))


def test_a_photo_inside_a_tar_shard_gets_its_thumbnail(tmp_path):
    from polymodal.data.thumbnails import thumbnail_url

    photo = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 10)).save(photo, "PNG")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        info = tarfile.TarInfo("0.png")
        info.size = len(photo.getvalue())
        tar.addfile(info, io.BytesIO(photo.getvalue()))
    url = thumbnail_url(f"{tmp_path / 's.tar'}#0.png")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (128, 85)
    assert thumbnail_url(str(tmp_path / "gone.png")) == "file not found here"
