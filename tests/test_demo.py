"""`make demo` (python -m polymodal.demo), the project's main job, end to end on the pip-installed gallery."""

import html
import re

from polymodal import demo


def test_demo_indexes_searches_classifies_and_captions(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "7. Captions written by the built-in captioner" in out and "8. Thumbnails" in out
    captions = dict(re.findall(r"^  (\w+\.jpg) +(\S.*)$", out.split("7. Captions")[1].split("8. Thumbnails")[0], re.M))
    assert set(captions) == {f"{n}.jpg" for n in demo.CAPTIONED}
    assert all(len(c.split()) >= 3 for c in captions.values())  # sentences, not empty or one word
    page = (tmp_path / "results.html").read_text()
    for caption in captions.values():
        assert html.escape(caption.strip()) in page
    assert (tmp_path / "index").is_dir()
