"""benchmarks/det_speed.py's pure part: two per-target detection reports (built here) read into the table's rows,
the speed ratio to PyTorch eager FP32, the ΔAP interval and the goals; and its renderer in render_results.py."""

import json

import pytest
from helpers.scripts import load_script


@pytest.fixture(scope="module")
def ds():
    return load_script("det_speed")


def stage(name, precision, p50, ap, delta, post=1.5):
    return {
        "name": name,
        "backend": name.split("-")[0],
        "precision": precision,
        "status": "measured",
        "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50 * 1.05},
        "postprocess_ms": {"p50": post, "p90": post, "p99": post * 2, "mean": post},
        "end_to_end_ms": {"p50": p50 + post, "p90": p50 + post, "p99": p50 * 1.3 + post, "mean": p50 + post},
        "map": ap,
        "ap50": ap * 2,
        "map_delta": delta,
        "matched_share": 0.9,
        "matched_share_vs_parent": 0.85,
        "parity_passed": delta > -1.0,
    }


def fake_reports() -> dict:
    shared = [stage("pytorch", "fp32", 200.0, 10.0, 0.0), stage("onnx", "fp32", 120.0, 10.0, 0.0),
              stage("onnx-simplified", "fp32", 100.0, 10.0, 0.0)]  # fmt: skip
    ort = {"task": "detection", "parity_images": {"images": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
           "stages": [*shared, stage("onnxruntime-int8", "int8", 80.0, 9.5, -0.5)]}  # fmt: skip
    ov = {"task": "detection", "parity_images": {"images": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
          "stages": [*shared, stage("openvino-fp32", "fp32", 60.0, 10.0, 0.0),
                     stage("openvino-int8", "int8", 40.0, 9.0, -1.0),
                     stage("openvino-fp16", "fp16", 50.0, 9.9, -0.1)]}  # fmt: skip
    return {"onnxruntime-cpu": ort, "openvino-cpu": ov}


def interval(point, lower, upper):
    return {"point": point, "lower": lower, "upper": upper, "confidence": 0.95}


def test_rows_hold_latency_ratio_ap_and_goals(ds):
    intervals = {"onnxruntime-int8": interval(-0.5, -0.9, -0.1), "openvino-int8": interval(-1.0, -1.6, -0.4)}
    rows = ds.rows_from_reports(fake_reports(), intervals)
    assert [r["row"] for r in rows] == [label for label, _, _ in ds.ROWS]
    by = {r["stage"]: r for r in rows}
    assert by["pytorch"]["speedup_vs_pytorch"] == 1.0
    assert by["openvino-int8"]["speedup_vs_pytorch"] == pytest.approx(200.0 / 40.0)  # p50 over p50
    assert by["onnxruntime-int8"]["speedup_vs_pytorch"] == pytest.approx(2.5)
    assert by["openvino-int8"]["postprocess_p50_ms"] == 1.5 and by["openvino-int8"]["end_to_end_p50_ms"] == 41.5
    assert by["openvino-int8"]["e2e_speedup_vs_pytorch"] == pytest.approx(201.5 / 41.5)
    assert by["openvino-int8"]["map"] == 9.0 and by["openvino-int8"]["map_delta"] == -1.0
    # the goals: >= 4x met by OpenVINO INT8, not by ORT INT8; the ΔAP bound decides the accuracy goal
    assert by["openvino-int8"]["goal_speedup_met"] is True and by["onnxruntime-int8"]["goal_speedup_met"] is False
    assert by["openvino-int8"]["goal_delta_ap_met"] is False and by["onnxruntime-int8"]["goal_delta_ap_met"] is True
    assert by["openvino-fp32"]["goal_delta_ap_met"] is None  # no interval: unknown, never passed
    assert ds.evaluation_images(fake_reports()["openvino-cpu"]) == 3
    table = ds.markdown(rows)
    assert "| OpenVINO INT8 | 40.00 / 52.00 |" in table and "[-1.60, -0.40]" in table


def test_a_missing_stage_is_named(ds):
    reports = fake_reports()
    reports["openvino-cpu"]["stages"] = reports["openvino-cpu"]["stages"][:-1]
    with pytest.raises(KeyError, match="openvino-int8"):
        ds.rows_from_reports(reports)


def test_the_renderer_writes_the_goals_and_the_bounds(ds, tmp_path, monkeypatch):
    rr = load_script("render_results")
    rows = ds.rows_from_reports(fake_reports(), {"openvino-int8": interval(-1.0, -1.6, -0.4)})
    (tmp_path / "fake_det_speed.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(rr, "RESULTS", tmp_path)
    text = rr.det_speed_table("fake_det_speed")
    line = next(ln for ln in text.splitlines() if ln.startswith("| OpenVINO INT8 |"))
    assert "5.00" in line and "−1.00 [−1.60, −0.40]" in line and line.endswith("| met, not met | 85.0 | failed |")
    line = next(ln for ln in text.splitlines() if ln.startswith("| ONNX Runtime INT8 |"))
    assert line.endswith("| not met, n/a | 85.0 | passed |")
