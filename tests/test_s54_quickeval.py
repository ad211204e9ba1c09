"""`--limit N` on every eval command, as `eval captions` reads it: the first N photos of the data, each with all its
captions, questions or label rows; the JSON line says "limit"; 0 or less is one error before any work."""

import importlib.util
import json
import logging

import pytest

from polymodal import cli

COMMANDS = {"retrieval": ["--pairs", "p.jsonl"], "zeroshot": ["--labels-file", "l.jsonl"],
            "images": ["--labels-file", "l.jsonl"], "vqa": ["--qa", "q.jsonl"], "captions": ["--pairs", "p.jsonl"]}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(capsys, args: list) -> dict:
    assert cli.main([str(a) for a in args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture()
def stand_in_lite(lite, monkeypatch):
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("limit", ["0", "-2"])
def test_every_eval_command_refuses_a_limit_below_one_before_the_data_is_read(command, limit, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)  # the data files do not exist: the limit is refused first
    assert cli.main(["eval", command, *COMMANDS[command], "--limit", limit]) == 2
    err = capsys.readouterr().err
    assert f"--limit must be at least 1, got {limit}" in err and "Traceback" not in err and "usage:" not in err


def test_eval_retrieval_scores_the_first_photos_with_all_their_captions(gallery, tmp_path, capsys, stand_in_lite):
    names = ["cat", "rocket", "coffee", "flower"]  # each photo's second caption comes after all the first ones
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"image": str(gallery / f"{n}.jpg"), "caption": f"{word} {n}"}
                                               for word in ("a", "the") for n in names])
    out = tmp_path / "items.jsonl"
    line = _run(capsys, ["eval", "retrieval", "--pairs", pairs, "--model", "lite", "--limit", 2, "--quiet",
                         "--out", out])
    assert (line["limit"], line["images"], line["captions"]) == (2, 2, 4)
    captions = {json.loads(i)["caption"] for i in out.read_text().splitlines() if json.loads(i)["query"] == "text"}
    assert captions == {"a cat", "a rocket", "the cat", "the rocket"}
    assert "limit" not in _run(capsys, ["eval", "retrieval", "--pairs", pairs, "--model", "lite", "--quiet"])


def test_eval_zeroshot_limits_the_photos_but_keeps_every_label_a_candidate(gallery, tmp_path, capsys, caplog,
                                                                           stand_in_lite):
    names = ["cat", "coffee", "rocket", "flower"]
    labels = _jsonl(tmp_path / "labels.jsonl", [{"image": str(gallery / f"{n}.jpg"), "label": n} for n in names])
    with caplog.at_level(logging.WARNING):
        line = _run(capsys, ["eval", "zeroshot", "--labels-file", labels, "--model", "lite", "--limit", 2, "--quiet"])
    assert (line["limit"], line["photos"], line["classes"]) == (2, 2, 4)  # ranked among 4 labels, not the 2 kept
    assert set(line["per_class"]) == {"cat", "coffee"}
    assert "those photos hold 2 of the set's 4 labels" in caplog.text


def test_eval_images_limits_the_photos_and_refuses_a_first_n_of_one_label(gallery, tmp_path, capsys, stand_in_lite):
    rows = [("cat", "animal"), ("flower", "animal"), ("rocket", "thing"), ("coffee", "thing"), ("clock", "thing")]
    labels = _jsonl(tmp_path / "labels.jsonl", [{"image": str(gallery / f"{n}.jpg"), "label": lab} for n, lab in rows])
    line = _run(capsys, ["eval", "images", "--labels-file", labels, "--model", "lite", "--limit", 4, "--quiet"])
    assert (line["limit"], line["images"], line["classes"]) == (4, 4, 2)
    assert cli.main(["eval", "images", "--labels-file", str(labels), "--model", "lite", "--limit", "2"]) == 2
    assert "the first 2 of" in capsys.readouterr().err  # two photos of one label: every other photo a hit


class SaysCat:
    def answer(self, image, question, choices=None, top_k=3):
        raise AssertionError("eval answers a batch at a time")

    def predict(self, images, questions):
        return [("cat", 0.9) for _ in images]

    def caption(self, images, beam=3, max_tokens=20, **decoding):
        return ["a tabby cat" for _ in images]


def test_eval_vqa_keeps_a_photos_questions_together(gallery, tmp_path, capsys, monkeypatch):
    import polymodal.cli_vqa as cli_vqa

    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: SaysCat())
    photos = ["cat", "rocket", "cat", "coffee", "rocket"]  # cat and rocket: 4 questions; coffee's (missed) left out
    qa = _jsonl(tmp_path / "qa.jsonl", [{"image": str(gallery / f"{n}.jpg"), "question": f"what is it {i}?",
                                         "answer": "dog" if n == "coffee" else "cat"} for i, n in enumerate(photos)])
    line = _run(capsys, ["eval", "vqa", "--qa", qa, "--model", "stand-in", "--limit", 2, "--quiet"])
    assert (line["limit"], line["questions"], line["accuracy"]) == (2, 4, 1.0)


def test_eval_captions_json_line_says_its_limit(gallery, tmp_path, capsys, monkeypatch):
    import polymodal.cli_caption as cli_caption

    monkeypatch.setattr(cli_caption, "load_captioner_model", lambda *a: SaysCat())
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"image": str(gallery / f"{n}.jpg"), "caption": f"a {n}"}
                                               for n in ("cat", "rocket", "coffee")])
    line = _run(capsys, ["eval", "captions", "--pairs", pairs, "--model", "stand-in", "--limit", 2, "--quiet"])
    assert (line["limit"], line["images"]) == (2, 2)


# -- progress bars in a Jupyter kernel without ipywidgets -------------------------------------------------------------

AS_IN_A_KERNEL = """
import sys, types
ipython = types.ModuleType("IPython")  # what tqdm.auto looks at: a kernel's shell is loaded (ipykernel.zmqshell)
ipython.get_ipython = lambda: type("ZMQInteractiveShell", (), {})()
sys.modules.update({"IPython": ipython, "ipykernel": types.ModuleType("ipykernel"),
                    "ipykernel.zmqshell": types.ModuleType("ipykernel.zmqshell")})
from polymodal.progress import _NOTEBOOK
print("widget bar" if _NOTEBOOK else "text bar")
"""


def test_a_kernel_without_ipywidgets_gets_the_text_bar_without_tqdms_warning():
    import subprocess
    import sys

    if importlib.util.find_spec("ipywidgets"):
        pytest.skip("ipywidgets is installed: tqdm.auto gives its widget bar")
    done = subprocess.run([sys.executable, "-W", "always", "-c", AS_IN_A_KERNEL], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "text bar"
    assert "IProgress" not in done.stderr and "ipywidgets" not in done.stderr


def test_a_kernel_text_bar_redraws_once_a_second():
    """Each redraw of a headless notebook run (papermill, nbclient) is one saved output: tqdm's 0.1 s kept ten a
    second (52 outputs for a 5 s loop, 7 at 1 s); a caller's own interval is kept."""
    from test_s51_notebook import _KernelStream

    from polymodal.progress import progress_bar

    assert progress_bar(range(3), file=_KernelStream()).mininterval == 1.0
    assert progress_bar(range(3), file=_KernelStream(), mininterval=0).mininterval == 0
