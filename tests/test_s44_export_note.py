"""Export reports say how "x fp32 ORT" is timed: paired with fp32 turn by turn, the least favourable turn kept, so
it can differ from the ratio of two items/s cells (measured in separate runs); a reader saw 312 vs 233 items/s
beside "2.49x" and doubted the report."""

from polymodal.export.variants import PAIRED_NOTE, tries_table

TRY = {"graph": "grid", "variant": "int8_dynamic", "status": "kept", "items_per_s": 312.1, "x_fp32_onnx": 2.49,
       "accuracy": 0.9, "drop_points": 0.1, "reason": "faster"}


def test_the_tries_table_ends_with_how_speed_ups_are_timed():
    lines = tries_table([TRY], ("items_per_s", "items/s"), ("accuracy", "accuracy"))
    assert lines[-1] == PAIRED_NOTE and "least favourable" in PAIRED_NOTE
    assert tries_table([], ("items_per_s", "items/s"), ("accuracy", "accuracy"))[-1] != PAIRED_NOTE  # no table


def test_the_embedding_report_says_it_too():
    from polymodal.export.onnx_export import report_table

    report = {"model": "lite", "validation": "sample", "reference_pytorch_fp32": {"t2i_R@5": 1.0, "i2t_R@5": 1.0},
              "pytorch_fp32_items_per_s": {"image": 10, "text": 100}, "served": {"image": "fp32", "text": "fp32"},
              "served_drop_points": 0.0, "tries": [{"tower": "text", "variant": "fp32", "status": "baseline"}]}
    assert PAIRED_NOTE not in report_table(report)  # no variant tried (--variants ''): nothing paired to explain
    report["tries"].append({"tower": "text", "variant": "int8_dynamic", "status": "kept", "x_fp32_onnx": 2.49})
    assert report_table(report).rstrip().endswith(PAIRED_NOTE)
