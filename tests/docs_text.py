"""The documentation as a user reads it: README.md (the front page), then docs/*.md (the reference moved out of it at
stop 58). Tests that check a documented claim read it whole, so a claim may live on whichever page suits it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def doc_pages() -> list[Path]:
    """README.md first, then docs/*.md in name order."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def docs_text() -> str:
    """Every page's text, README first, pages separated by a blank line."""
    return "\n\n".join(page.read_text(encoding="utf-8") for page in doc_pages())
