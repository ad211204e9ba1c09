"""Prompt templates for zero-shot (`classify`, `eval zeroshot`): `--template` flags and `--templates-file FILE`, one
template per line, checked before a model loads."""

from __future__ import annotations

from polymodal.errors import PolymodalError


def check_template(template: str, where: str = "") -> None:
    """One error for a template with no '{}' where the label goes (every prompt would be the same text)."""
    if "{}" not in template:
        named = " (only an empty {} is filled, not a named field)" if "{" in template else ""
        raise PolymodalError(f"{where}template {template!r} has no '{{}}' where the label goes{named}, e.g. 'a photo "
                             "of a {}.'")


def read_templates(path) -> list[str]:
    """The templates of a UTF-8 text file, one per line (blank lines and lines starting with # skipped), each with
    '{}'; a template repeated is kept once (twice, it would weigh double in the mean of the prompts)."""
    from polymodal.apps.text_search import read_text_lines

    lines, numbers = read_text_lines(path, "templates")
    for template, n in zip(lines, numbers):
        check_template(template, f"{path} line {n}: ")
    return list(dict.fromkeys(lines))


def add_template_options(parser, default: str) -> None:
    parser.add_argument("--template", action="append",
                        help=f"prompt template with {{}}; repeat for an ensemble (default: {default})")
    parser.add_argument("--templates-file", metavar="FILE",
                        help="prompt templates, one per line with {} (blank lines and lines starting with # "
                             "skipped); with --template, the file's templates and the flags' are used")


def chosen_templates(args) -> list[str] | None:
    """--templates-file's templates, then --template's (None when neither is given: the command's default), each
    checked here, before the model loads and the photos are read."""
    templates = read_templates(args.templates_file) if args.templates_file else []
    for template in args.template or []:
        check_template(template, "--template: ")
    templates += [t for t in args.template or [] if t not in templates]
    return templates or None
