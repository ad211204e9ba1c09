"""Command-line options shared by several commands (torch-free: parsers are built before any model loads)."""

from __future__ import annotations


def add_precision(parser) -> None:
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="image inference precision for the PyTorch runtime: bf16 runs a frozen bf16 graph of the "
        "EfficientNet-Lite0 tower, several times faster on CPUs with bf16 instructions (default fp32)",
    )
