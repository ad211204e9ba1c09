"""Faster variants of an exported fp32 graph: int8 dynamic and static quantization (onnxruntime.quantization)
and bfloat16. Each builder writes one file or raises; whether the variant is kept is the gate's decision
(polymodal.export.onnx_export), never assumed: dynamic int8 convolutions, for one, run slower than fp32 on CPUs.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from polymodal.cache import nearly_full, out_of_space, temp_beside
from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

VARIANTS = ("int8_dynamic", "int8_static", "bf16")


def _atomic(build: Callable[[str], None], out: Path, source: Path | None = None) -> Path:
    fd, tmp = temp_beside(out)
    os.close(fd)
    disabled = logging.root.manager.disable  # the caller's own logging.disable level comes back after
    logging.disable(max(disabled, logging.WARNING))  # the quantizer logs a warning per LayerNorm weight: noise
    # the quantizer's shape inference writes a copy of the graph ``source`` beside it (text.fp32-inferred.onnx:
    # 90 MB for MiniLM) and leaves it there when it fails
    inferred = Path(source).with_name(f"{Path(source).stem}-inferred{Path(source).suffix}") if source else None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # and numpy warnings on constant tensors
            warnings.simplefilter("ignore")
            build(tmp)
        os.replace(tmp, out)
    except Exception as exc:
        full = _full_disk(exc, out)  # before the cleanup below frees the space
        if full is None or full is exc:
            raise
        raise full from exc
    finally:
        logging.disable(disabled)
        for leftover in (tmp, inferred):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
    return out


def _full_disk(exc: BaseException, out: Path) -> OSError | None:
    """The error naming the full disk when a variant failed for lack of space, else None. Not only ENOSPC: onnx
    writes the shape-inferred copy from C++, which truncates it silently on a full disk, and reading it back fails
    with protobuf's DecodeError ("Wire format was corrupt"), so any failure with under 1 MiB left beside ``out``
    counts. An ENOSPC while that disk has room came from the calibration's copies in the temporary folder."""
    own = out_of_space(exc)
    if own and exc.filename:
        return exc
    if nearly_full(out.parent):  # the build's own error said too: under 1 MiB left need not be why it failed (an unknown operator)
        said = "" if own else (" (under 1 MiB left there; the build then failed: "
                               f"{failure_reason(exc).removeprefix('failed here: ')})")
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + said, str(out))
    if own:
        return OSError(exc.errno, f"{os.strerror(exc.errno)} in the temporary folder (onnxruntime's quantizer writes "
                       "copies of the graph there; TMPDIR chooses it)", tempfile.gettempdir())
    return None


def raise_if_disk_full(exc: BaseException) -> None:
    """A variant that failed for lack of space is no finding about the variant: the export stops with the error (the
    CLI's one line names the file; an earlier export stays), instead of serving fp32 with "failed" in the report."""
    if out_of_space(exc):
        raise exc


def int8_dynamic(fp32: Path, out: Path, calibration=None) -> Path:
    """Weights int8, activations quantized per batch at run time (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _atomic(lambda tmp: quantize_dynamic(str(fp32), tmp, weight_type=QuantType.QInt8, per_channel=True), out,
                   fp32)


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over a list of input dicts, handed out one row at a time: the
    calibrator runs a copy of the graph with every activation's range as an output, and that session's memory grows
    with the batch (EfficientNet-Lite0's image graph: 1.4 GB at 8 photos, 0.4 GB at 1, which made it the export's
    peak). The ranges are min and max over all rows, so they come out the same."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator = (row for feed in feeds for row in _rows(feed))

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:  # some onnxruntime versions call it
        pass


def _rows(feed: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """A feed's rows as feeds of one (the same padding: slices of its arrays); a feed whose inputs do not share a
    batch axis whole."""
    sizes = {len(v) if np.ndim(v) else None for v in feed.values()}
    if len(sizes) != 1 or None in sizes:
        yield feed
        return
    for i in range(sizes.pop()):
        yield {k: v[i : i + 1] for k, v in feed.items()}


def int8_static(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Weights and activations int8 (QDQ, per-channel weights), activation ranges from calibration inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("static quantization needs calibration inputs")
    reader = type("Reader", (_Feeds, CalibrationDataReader), {})(calibration)
    return _atomic(lambda tmp: quantize_static(
        str(fp32), tmp, reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8), out, fp32)


BF16_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider")


def bf16_unavailable() -> str | None:
    """Why a bf16 graph cannot run here, or None. onnxruntime's CPU provider has no bf16 kernels for MatMul, Add or
    Conv (checked on 1.32), so without a GPU provider a bf16 variant could only fail."""
    import onnxruntime as ort

    if any(p in BF16_PROVIDERS for p in ort.get_available_providers()):
        return None
    return ("skipped: onnxruntime's CPU provider has no bf16 kernels (MatMul, Add, Conv); on CPUs with bf16 support "
            "use the PyTorch runtime's --precision bf16 instead")


def bf16(export_bf16: Callable[[Path], Path], out: Path) -> Path:
    """The graph traced again with bfloat16 weights and activations (float32 in and out)."""
    return export_bf16(out)


def check_variant_list(variants) -> None:
    """``variants`` names a list of variants; one string would be read as its letters."""
    if isinstance(variants, str):
        raise PolymodalError(f"variants must be a list of names, e.g. [{variants!r}], got the string {variants!r}")


def mark_not_served(row: dict, why: str | None = None) -> None:
    """A try the gate kept that does not serve its graph (a faster kept variant does, unless ``why`` says otherwise):
    say so in the report."""
    row["status"], row["reason"] = "kept (not served)", f"{row['reason']}; {why or 'a faster kept variant serves'}"


def failure_reason(exc: BaseException) -> str:
    """A variant's failure as one report line; some errors (MemoryError()) have no message at all."""
    from polymodal.export.runtime import GraphLoadError

    if isinstance(exc, GraphLoadError):  # onnxruntime 1.19 cannot load the int8 graphs its own quantizer made of
        # the captioner's step graph, nor run the image tower's ConvInteger: the runtime's doing, not a damaged export
        import onnxruntime as ort

        return (f"failed here: onnxruntime {ort.__version__} cannot load this variant's graph ({exc.said}); a newer "
                "onnxruntime may (pip install -U onnxruntime, then export again)")
    lines = str(exc).strip().splitlines()
    return f"failed here: {type(exc).__name__}" + (f": {lines[0][:200]}" if lines else "")


# the variants' speed-ups are paired timings; a reader dividing two items/s cells got another figure and a doubt
PAIRED_NOTE = ("x fp32 ORT is timed against fp32 back to back, turn by turn, and the turn least favourable to the variant "
               "is kept (a speed-up must hold in every turn); the items/s cells come from separate runs, so their "
               "ratio can differ from it.")


def tries_table(tries: list[dict], speed: tuple[str, str], metric: tuple[str, str],
                extra: tuple[str, str] | None = None) -> list[str]:
    """Markdown rows of the variants an export tried: (key, column title) of its speed, its quality metric and an
    ``extra`` figure, if any."""
    if not tries:  # `--variants ''`: a table of headers only would read as a failed report
        return ["No variants were tried (`--variants ''`): the fp32 graphs are served."]
    more = [extra] if extra else []
    lines = [f"| graph | variant | status | {speed[1]} | x fp32 ORT | {metric[1]} | drop (points) | "
             + "".join(f"{title} | " for _, title in more) + "why |", "|" + "---|" * (8 + len(more))]
    for t in tries:
        cells = [t["graph"], t["variant"], t["status"], t.get(speed[0], ""), t.get("x_fp32_onnx", ""),
                 t.get(metric[0], ""), t.get("drop_points", ""), *(t.get(key, "") for key, _ in more),
                 t.get("reason", "")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return [*lines, "", PAIRED_NOTE]
