"""Stop 58, helper docs: the README is a front page (intro, set-up, a short tour, the tables, where the details are),
the reference it held moved verbatim into docs/. Its links must lead somewhere, and it must stay short."""

import re

from docs_text import README, ROOT, doc_pages

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside code blocks and code spans, where a bracket is a link, not code."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' dropped, spaces as '-', repeats numbered."""
    seen, out = {}, set()
    for heading in re.findall(r"^#+\s+(.*)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S),
                              flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_every_relative_link_reaches_a_file_and_heading():
    checked = 0
    for page in doc_pages():
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.is_file(), f"{page.relative_to(ROOT)}: {target} is no file"
            assert not anchor or anchor in _anchors(dest), f"{page.relative_to(ROOT)}: {target}: no such heading"
            checked += 1
    assert checked > 20


def test_the_readme_stays_a_front_page_that_lists_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) < 350
    documentation = text.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^- \[[^\]]+\]\((docs/[\w.-]+\.md)\): \S", documentation, flags=re.M))
    assert listed == {str(p.relative_to(ROOT)) for p in doc_pages()[1:]}


def test_the_two_set_up_commands_open_the_readme():
    setup = README.read_text().split("\n## Set-up: two commands\n", 1)[1].split("\n## ", 1)[0]
    block = setup.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in block] == ["make demo", "make test"]
    assert all(len(line.split("# ", 1)[1]) > 20 for line in block)  # each with its one-line comment
