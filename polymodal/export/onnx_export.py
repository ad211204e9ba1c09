"""`polymodal export onnx MODEL --out DIR`: export both towers, check parity, try faster variants, keep what earns it.

1. Trace the image graph (pixels -> unit embedding) and the text graph (token ids, mask -> unit embedding) to
   fp32 ONNX with dynamic batch (and token) axes.
2. Parity on real inputs (the validation photos and captions): every onnxruntime fp32 embedding must have cosine
   >= 0.999 with PyTorch's, or the export fails.
3. Per tower, try int8 dynamic, int8 static (calibrated on validation inputs) and bf16 (skipped, with the reason in
   the report, where onnxruntime has only its CPU provider: it has no bf16 kernels). A variant is KEPT only if
   it is faster here than fp32 onnxruntime at batch 32 (by >= 5%, above timing noise) AND text->image and
   image->text R@5 on the validation set drop by at most ``max_drop_points`` (1 point) against PyTorch fp32
   AND its vectors keep a cosine of at least VARIANT_MIN_COSINE with PyTorch's on every validation item.
   The fastest kept variant serves each tower; the combination is checked once more.
4. Write onnx_config.json (what `polymodal.load(DIR, runtime="onnx")` reads: files, variants, preprocessing,
   tokenizer), tokenizer.json, report.json and report.md (every try, kept or not, and why), and delete the graphs
   not served (``keep_unserved`` keeps them).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from polymodal.cache import atomic_write_bytes
from polymodal.data.tokenizer import FastTokenizer
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.export import variants as V
from polymodal.export.graphs import ImageGraph, TextGraph, check_exportable, export_graph, made_with
from polymodal.export.out_folder import staged_export
from polymodal.export.runtime import ONNX_CONFIG, drop_unserved, onnx_session, removed_line, return_freed_memory, \
    shrink_arena
from polymodal.models.inputs import each_or_error, readable_results

log = logging.getLogger(__name__)

PARITY_MIN_COSINE = 0.999
# A faster variant's vectors must stay this close to PyTorch's (the smallest cosine over the validation items): an
# index built with one runtime is searched with the other's queries. R@5 alone let an int8 static image graph at
# min cosine 0.70 through (a 1.0-point drop on 300 photos); the text tower's int8 dynamic graphs measure 0.98-0.99.
VARIANT_MIN_COSINE = 0.95
MIN_SPEEDUP = 1.05
SPEED_BATCH = 32


@dataclass
class ValidationSet:
    images: list  # paths or arrays
    captions: list[str]
    caption_image: np.ndarray  # [C] index into images
    source: str


MIN_GATE_IMAGES = 50  # below this, recall saturates and the accuracy gate cannot tell variants apart


def warn_if_the_gate_is_coarse(images: int) -> None:
    """The embedding export's int8 gate is R@5 over the validation images: over a few it is nearly always 1.0."""
    if images < MIN_GATE_IMAGES:
        log.warning("--val-pairs has %d images: R@5 over so few is nearly always 1.0, so the int8 gate can hardly "
                    "refuse a variant (the parity cosines in report.md still tell); pass %d or more", images,
                    MIN_GATE_IMAGES)


def validation_set(pairs: str | Path | Sequence | None = None, limit: int = 300, seed: int = 0,
                   warn_few: bool = True) -> ValidationSet:
    """Image-caption pairs for parity and the accuracy gate: ``limit`` images (a seeded sample) of a pair source,
    or, without one, the built-in sample photos with their descriptions (small: the gate is then coarse).
    ``warn_few``: warn of an R@5 gate over too few images (a captioner's gate is CIDEr-D: the CLI warns later)."""
    if pairs is None:
        from polymodal.data.samples import sample_photos

        photos = sample_photos("checking an export on the built-in sample photos", "onnx",
                               " or pass --val-pairs FILE (image-caption pairs)")
        return ValidationSet([a for a, _ in photos.values()], [d for _, d in photos.values()],
                             np.arange(len(photos)), "built-in sample photos (pass --val-pairs for a real gate)")
    from polymodal.eval.retrieval import read_pairs

    p = read_pairs(pairs)
    if warn_few:
        warn_if_the_gate_is_coarse(len(p.images))
    keep = sorted(random.Random(seed).sample(range(len(p.images)), min(limit, len(p.images))))
    return _subset(ValidationSet(p.images, p.captions, p.caption_image, ""), keep, f"{pairs} ({len(keep)} images)")


def _subset(val: ValidationSet, keep: list[int], source: str) -> ValidationSet:
    """The images at ``keep`` (ascending) and their captions."""
    new_index = {old: new for new, old in enumerate(keep)}
    rows = [c for c in range(len(val.captions)) if int(val.caption_image[c]) in new_index]
    return ValidationSet([val.images[i] for i in keep], [val.captions[c] for c in rows],
                         np.array([new_index[int(val.caption_image[c])] for c in rows], dtype=np.int64), source)


def _items_per_second(run: Callable[[], Any], items: int, min_seconds: float = 1.0, repeats: int = 3,
                      warm_up: bool = True) -> float:
    """Best of ``repeats`` timings (each >= min_seconds of calls), after one warm-up call unless ``warm_up=False``."""
    if warm_up:
        run()
    best = float("inf")
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            run()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / n)
    return items / best


def paired_speed(run: Callable[[], Any], base_run: Callable[[], Any], items: int, seconds: float,
                 turns: int = 3, release: tuple[Callable[[], Any], Callable[[], Any]] | None = None
                 ) -> tuple[float, float]:
    """Items/s of ``run`` and of ``base_run`` from the turn (of up to ``turns``, each timing both back to back, so
    that a load spike from elsewhere hits both alike) least favourable to ``run``: a speed-up must hold in every
    turn, not only in the luckiest one (timing noise on a shared 2-core machine exceeds MIN_SPEEDUP, and the best
    turn of each let a variant that fp32 beat in the same export's baseline pass as 1.06x). A variant under 2/3 of
    the speed it needs after a turn stops there: more turns cannot make it kept, and a slow graph's turns are the
    slowest part of an export. ``release``: (run's, base_run's) calls that give a graph's run-time memory back
    after its timing, so that the two never hold it at once; each is then warmed up again before it is timed."""
    if release is None:
        run()
        base_run()
    timed = []
    for _ in range(turns):
        pair = []
        for fn, let_go in zip((run, base_run), release or (None, None)):
            pair.append(_items_per_second(fn, items, seconds, 1, warm_up=let_go is not None))
            if let_go is not None:
                let_go()
        timed.append(tuple(pair))
        if timed[-1][0] * 1.5 < MIN_SPEEDUP * timed[-1][1]:
            break
    return min(timed, key=lambda t: t[0] / t[1])


def _r5(metrics: dict) -> dict:
    return {"t2i_R@5": metrics["t2i_R@5"], "i2t_R@5": metrics["i2t_R@5"]}


class _Session:
    """An onnxruntime session of one tower's graph with a batched embed()."""

    def __init__(self, path: Path, tower: str, tokenizer: FastTokenizer) -> None:
        self.session, self.tower, self.tokenizer = onnx_session(path), tower, tokenizer
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, batch, options=None) -> np.ndarray:
        feeds = {"pixels": batch} if self.tower == "image" else \
            {k: v for k, v in self.tokenizer(batch).items() if k in self.inputs}
        return self.session.run(None, feeds, options)[0].astype(np.float32, copy=False)

    def release(self, items) -> None:
        """Give back the memory its runs keep for the next one (a run of one item that shrinks the arena after it):
        onnxruntime keeps it for the session's life, and EfficientNet-Lite0's at batch 32 is 0.4 GB in fp32 and
        0.7 GB in int8 dynamic; the fp32 graph's lived beside each variant's, which made the export's peak."""
        self.run(items[:1], shrink_arena())
        return_freed_memory()

    def embed(self, items, batch: int = SPEED_BATCH) -> np.ndarray:
        return np.concatenate([self.run(items[i : i + batch]) for i in range(0, len(items), batch)])


@staged_export
def export_onnx(model, out: str | Path, val: ValidationSet, variants: Sequence[str] = V.VARIANTS,
                max_drop_points: float = 1.0, progress: Callable[[str], None] = log.info,
                timing_seconds: float = 1.0, keep_unserved: bool = False) -> dict:
    """Export ``model`` to ``out`` (see the module docstring); returns the report (also written to out). ``out``:
    a new or empty folder, or an earlier export, replaced whole once this one is complete (staged_export).
    ``timing_seconds``: each speed figure is the best of 3 runs of at least this long. Graphs tried but not served
    (the fp32 graph a kept variant replaces, a kept but slower variant) are deleted unless ``keep_unserved``."""

    def speed(run, items: int = SPEED_BATCH) -> float:
        return _items_per_second(run, items, min_seconds=timing_seconds)

    check_exportable(model)
    if not isinstance(val, ValidationSet):
        raise PolymodalError(f"val must be a ValidationSet, got {type(val).__name__}; build one with "
                             "validation_set(PAIRS_FILE) or validation_set() for the built-in sample photos")
    V.check_variant_list(variants)
    unknown = set(variants) - set(V.VARIANTS)
    if unknown:
        raise PolymodalError(f"unknown variants {sorted(unknown)}; choose from {', '.join(V.VARIANTS)}")
    # each once: a second try of a name rewrites the first's file, and a rejected second try deleted the graph a
    # kept first one serves (`--variants int8_dynamic,int8_dynamic`: an export that cannot load)
    variants = list(dict.fromkeys(variants))
    hf_tok, max_length = model.text_tokenizer
    if not getattr(hf_tok, "is_fast", False):
        raise PolymodalError("the ONNX runtime needs a fast (tokenizer.json) tokenizer; this model's is a slow one")
    hf_tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    pad_token = hf_tok.pad_token or hf_tok.eos_token
    tok_cfg = {"tokenizer": "tokenizer.json", "max_length": int(max_length),
               "pad_id": int(hf_tok.convert_tokens_to_ids(pad_token)), "pad_token": str(pad_token)}
    tokenizer = FastTokenizer(out / "tokenizer.json", tok_cfg["max_length"], tok_cfg["pad_id"], pad_token)

    progress(f"preprocessing {len(val.images)} validation images and {len(val.captions)} captions")
    # an unreadable photo is left out with a warning, as `eval retrieval` and the captioner's export leave it out,
    # rather than ending the export
    decoded = each_or_error(lambda batch: list(model.transform(batch)), list(val.images), batch_size=64)
    readable = readable_results(decoded, "validation photo")
    if len(readable) < len(val.images):
        val = _subset(val, readable, f"{val.source}; {len(val.images) - len(readable)} unreadable left out")
    pixels = np.stack([decoded[i] for i in readable])
    del decoded  # a copy of pixels (180 MB at 300 photos) for the rest of the export
    captions = list(val.captions)
    if tokenizer(captions[:16])["input_ids"].tolist() != hf_tok(captions[:16], padding=True, truncation=True,
                                                               max_length=max_length)["input_ids"]:
        raise PolymodalError("the exported tokenizer.json does not reproduce the model's tokenizer; cannot export")

    progress("PyTorch fp32 reference embeddings and speed")
    with torch.inference_mode():
        ref = {"image": np.concatenate([model.embed_pixels(pixels[i : i + SPEED_BATCH])
                                        for i in range(0, len(pixels), SPEED_BATCH)]),
               "text": model.encode_text(captions, batch_size=SPEED_BATCH)}
        speed_items = {"image": pixels[:SPEED_BATCH], "text": (captions * SPEED_BATCH)[:SPEED_BATCH]}
        torch_speed = {"image": speed(lambda: model.embed_pixels(speed_items["image"]), len(speed_items["image"])),
                 "text": speed(lambda: model.encode_text(speed_items["text"], SPEED_BATCH))}
    reference = _r5(retrieval_metrics(ref["image"], ref["text"], val.caption_image))

    enc = hf_tok(captions[:2], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    examples = {"image": ((torch.from_numpy(pixels[:2]),), ["pixels"], ImageGraph(model)),
                "text": ((enc["input_ids"], enc["attention_mask"]), ["input_ids", "attention_mask"], TextGraph(model))}
    calibration = {"image": [{"pixels": pixels[i : i + 8]} for i in range(0, min(len(pixels), 64), 8)],
                   "text": [{k: v for k, v in tokenizer(captions[i : i + 16]).items()}
                            for i in range(0, min(len(captions), 128), 16)]}
    rows, chosen, embeddings = [], {}, {}
    for tower in ("image", "text"):
        example, names, graph = examples[tower]
        fp32 = out / f"{tower}.fp32.onnx"
        progress(f"exporting the {tower} graph (fp32)")
        export_graph(graph, example, names, fp32)
        items = pixels if tower == "image" else captions
        session = _Session(fp32, tower, tokenizer)
        emb = session.embed(items)
        cosine = float((emb * ref[tower]).sum(1).min())
        if cosine < PARITY_MIN_COSINE:
            raise PolymodalError(f"{tower} graph parity failed: min cosine with PyTorch {cosine:.5f} < "
                                 f"{PARITY_MIN_COSINE}; the export is wrong, please report it")
        base_speed = speed(lambda: session.run(speed_items[tower]), len(speed_items[tower]))
        session.release(items)  # each variant is built and checked without it
        rows.append(_row(tower, "fp32", "baseline", base_speed, torch_speed[tower], base_speed, emb, ref, tower, val,
                         reference, f"parity: min cosine {cosine:.6f} vs PyTorch", fp32.name))
        chosen[tower], embeddings[tower] = (fp32.name, "fp32", base_speed), emb
        if tower == "text":
            calibration["text"] = [{k: v for k, v in c.items() if k in session.inputs} for c in calibration["text"]]
        for name in variants:
            path = out / f"{tower}.{name}.onnx"
            if name == "bf16" and V.bf16_unavailable():
                rows.append({"tower": tower, "variant": name, "status": "skipped", "reason": V.bf16_unavailable()})
                continue
            progress(f"trying {name} for the {tower} graph")
            try:
                if name == "bf16":
                    V.bf16(lambda p, g=graph, e=example, n=names: export_graph(g, e, n, p, bf16=True), path)
                else:
                    getattr(V, name)(fp32, path, calibration[tower])
                trial = _Session(path, tower, tokenizer)
                v_emb = trial.embed(items)
                alone = trial.embed(items[:SPEED_BATCH], batch=1)  # vs the same items in one batch (v_emb's first)
                v_speed, fp32_now = paired_speed(lambda: trial.run(speed_items[tower]),
                                                 lambda: session.run(speed_items[tower]),
                                                 len(speed_items[tower]), timing_seconds,
                                                 release=(lambda: trial.release(items), lambda: session.release(items)))
            except Exception as exc:  # an unsupported operator or type is a finding for the report, not a crash
                V.raise_if_disk_full(exc)  # a full disk is not
                reason = V.failure_reason(exc)
                rows.append({"tower": tower, "variant": name, "status": "failed", "reason": reason})
                path.unlink(missing_ok=True)
                continue
            finally:  # its onnxruntime session (the int8 dynamic image graph's: 0.7 GB after batches of 32) must
                trial = None  # not live on while the next variant is quantized beside the fp32 one
            row = _row(tower, name, "", v_speed, torch_speed[tower], fp32_now, v_emb, ref, tower, val, reference, "",
                       path.name)
            # int8 dynamic quantizes activations per batch: a vector then depends on the rest of its batch
            row["alone_vs_batch_min_cosine"] = alone_vs_batch(alone, v_emb)
            row["status"], row["reason"] = gate(v_speed, fp32_now, row["drop_points"], max_drop_points,
                                                min_cosine=row["min_cosine_vs_pytorch"])
            rows.append(row)
            comparable = base_speed * v_speed / fp32_now  # on the fp32 row's scale, for choosing among kept ones
            if row["status"] == "kept" and comparable > chosen[tower][2]:
                chosen[tower], embeddings[tower] = (path.name, name, comparable), v_emb
            elif row["status"] != "kept":
                path.unlink(missing_ok=True)
        session = None  # the next tower's graphs are traced and quantized without this one's session

    combined = _r5(retrieval_metrics(embeddings["image"], embeddings["text"], val.caption_image))
    drop = _drop(reference, combined)
    why = {}  # tower -> why its kept variants do not serve, when not "a faster kept variant serves"
    if drop > max_drop_points and "fp32" not in (chosen["image"][1], chosen["text"][1]):
        # each variant passed alone but not together: serve the text tower in fp32 (the image tower is the cost)
        why["text"] = (f"with the image graph's {chosen['image'][1]} R@5 dropped {_beside(drop, max_drop_points)} "
                       f"points (over the {max_drop_points:g}-point limit): fp32 serves")
        chosen["text"] = ("text.fp32.onnx", "fp32", 0.0)
        combined = _r5(retrieval_metrics(embeddings["image"], ref["text"], val.caption_image))
        drop = _drop(reference, combined)
    for row in rows:
        if row["status"] == "kept" and chosen[row["tower"]][0] != row["file"]:
            V.mark_not_served(row, why.get(row["tower"]))
    config = {"type": "onnx_embedding", "name": model.name, "version": model.version, "dim": int(model.dim),
              "logit_scale": float(model.logit_scale), "transform": model.transform.to_dict(),
              "image": {"file": chosen["image"][0], "variant": chosen["image"][1]},
              "text": {"file": chosen["text"][0], "variant": chosen["text"][1], **tok_cfg}}
    report = {"model": model.key, "validation": val.source, "max_drop_points": max_drop_points,
              "reference_pytorch_fp32": reference, "served": {t: chosen[t][1] for t in chosen},
              "served_metrics": combined, "served_drop_points": round(drop, 2),
              "pytorch_fp32_items_per_s": {t: round(v, 1) for t, v in torch_speed.items()}, "tries": rows,
              "made_with": made_with()}
    atomic_write_bytes(out / ONNX_CONFIG, json.dumps(config, indent=2).encode())  # first: it must name what stays
    report["removed"] = [] if keep_unserved else drop_unserved(out, config)
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(out / "report.md", report_table(report).encode())
    return report


def alone_vs_batch(alone: np.ndarray, batched: np.ndarray) -> float:
    """The smallest cosine between an item embedded alone (``alone``, the first items) and the same item embedded
    inside a batch (``batched``'s first rows): 1.0 for a graph whose output does not depend on its batch."""
    return round(float((alone * batched[:len(alone)]).sum(1).min()), 5)


def gate(speed: float, base_speed: float, drop_points: float, max_drop_points: float,
         metric: str = "R@5", min_cosine: float | None = None) -> tuple[str, str]:
    """Keep a variant only if it is faster than fp32 onnxruntime (by MIN_SPEEDUP, above timing noise), its
    R@5 drop is within max_drop_points and (an embedding graph's, given ``min_cosine``) its vectors stay
    within VARIANT_MIN_COSINE of PyTorch's. -> (status, reason)."""
    faster = speed >= MIN_SPEEDUP * base_speed
    accurate = drop_points <= max_drop_points
    close = min_cosine is None or min_cosine >= VARIANT_MIN_COSINE
    # a drop over the limit is shown however small (--max-drop-points 0 and a 0.03-point drop read "unchanged")
    change = f"{metric} drop {_beside(drop_points, max_drop_points)} points" if drop_points >= 0.05 or not accurate \
        else f"{metric} gain {-drop_points:.1f} points" if drop_points <= -0.05 else f"{metric} unchanged"  # -0.0: none
    speedup = f"{_beside(speed / base_speed, MIN_SPEEDUP, 2)}x fp32 onnxruntime"
    reason = (f"{'faster' if faster else 'not faster'} ({speedup}{'' if faster else f', {MIN_SPEEDUP:g}x needed'}); "
              f"{change} ({'within' if accurate else 'over'} the {max_drop_points:g}-point limit)")
    if not close:
        reason += (f"; vectors too far from PyTorch's (min cosine {min_cosine:.3f} < {VARIANT_MIN_COSINE}: an index "
                   "built with one runtime would not answer the other's queries alike)")
    return ("kept" if faster and accurate and close else "rejected"), reason


def speed_up(speed: float, base_speed: float) -> float:
    """A report's "x fp32 ORT" figure: ``speed / base_speed`` to 2 decimals, or more where rounding would put it on
    the other side of MIN_SPEEDUP (a rejected 1.049x printed 1.05 beside "1.049x fp32 onnxruntime, 1.05x needed")."""
    return float(_beside(speed / base_speed, MIN_SPEEDUP, 2))


def _beside(value: float, bar: float, digits: int = 1) -> str:
    """``value`` to ``digits`` decimals, or more where rounding would put it on the other side of ``bar``: a 1.049x
    speed-up printed "not faster (1.05x)", a 1.04-point drop "1.0 points (over the 1-point limit)"."""
    for d in range(digits, 6):
        text = f"{value:.{d}f}"
        if (float(text) < bar) == (value < bar) and (float(text) > bar) == (value > bar):
            return text
    return repr(value)


def _drop(reference: dict, metrics: dict) -> float:
    return max(100 * (reference[k] - metrics[k]) for k in reference)


def _row(tower, variant, status, speed, torch_speed, base, emb, ref, which, val, reference, reason, file) -> dict:
    other = ref["text" if which == "image" else "image"]
    pair = (emb, other) if which == "image" else (other, emb)
    metrics = _r5(retrieval_metrics(pair[0], pair[1], val.caption_image))
    return {"tower": tower, "variant": variant, "status": status, "file": file, "items_per_s": round(speed, 1),
            "x_fp32_onnx": speed_up(speed, base), "x_pytorch_fp32": round(speed / torch_speed, 2),
            "min_cosine_vs_pytorch": round(float((emb * ref[which]).sum(1).min()), 5), **metrics,
            "drop_points": round(_drop(reference, metrics), 2), "reason": reason}


def report_table(report: dict) -> str:
    """The report as a Markdown table (one row per try)."""
    head = ("| tower | variant | status | items/s (batch 32) | x fp32 ORT | x PyTorch fp32 | min cosine | "
            "alone vs in a batch (min cosine) | t2i R@5 | i2t R@5 | R@5 drop (points) | why |")
    lines = [f"# ONNX export of {report['model']}", "",
             f"Validation: {report['validation']}. PyTorch fp32 R@5: t2i "
             f"{report['reference_pytorch_fp32']['t2i_R@5']}, i2t {report['reference_pytorch_fp32']['i2t_R@5']}. "
             f"PyTorch fp32 items/s at batch 32 (the BatchNorm-folded tower it serves): "
             f"{report['pytorch_fp32_items_per_s']}. Served: {report['served']} (R@5 drop "
             f"{report['served_drop_points']} points).", "", *removed_line(report), head, "|" + "---|" * 12]
    for r in report["tries"]:
        cells = [r["tower"], r["variant"], r["status"], r.get("items_per_s", ""), r.get("x_fp32_onnx", ""),
                 r.get("x_pytorch_fp32", ""), r.get("min_cosine_vs_pytorch", ""),
                 r.get("alone_vs_batch_min_cosine", ""), r.get("t2i_R@5", ""),
                 r.get("i2t_R@5", ""), r.get("drop_points", ""), r.get("reason", "")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    paired = any("x_fp32_onnx" in r for r in report["tries"])  # a variant was timed against fp32
    return "\n".join([*lines, *(["", V.PAIRED_NOTE] if paired else [])]) + "\n"
