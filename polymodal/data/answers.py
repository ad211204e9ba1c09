"""Answers as VQA compares them (torch-free: the ONNX runtime shares it with the PyTorch models)."""

from __future__ import annotations

from typing import Any, Sequence

from polymodal.errors import PolymodalError

YES_NO = ("yes", "no")


def normalize_answer(text: Any) -> str:
    """Lower case, single spaces, no trailing full stop: 'Yes.' and ' yes' are the same answer."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


def unique_choices(choices: Sequence[Any]) -> dict[str, str]:
    """Candidate answers -> {normalised: as given (first spelling wins)}; blank ones dropped; none left is an error."""
    from polymodal.models.inputs import as_texts

    seen: dict[str, str] = {}
    for c in as_texts(choices, "choices"):  # one string is one choice, not its letters
        if c.strip():
            seen.setdefault(normalize_answer(c), c.strip())
    if not seen:
        raise PolymodalError("no choices given; pass candidate answers like --choices yes,no")
    return seen
