"""The task interface: the registry, segmentation's numbers pinned, and consumers that go through the task.

A second task (``Agreement``: the share of pixels whose label matches, a made-up metric) is registered
in the tests below: the parity ledger and the CI gate must measure, judge and name it, and ``predict``
and report.html must write and draw its predictions, which they can only do by asking the task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers.ledger import CRITERIA, C, H, N, W, fixed_stages

from bckd_pipeline import tasks as task_registry
from bckd_pipeline.deploy.parity import ledger
from bckd_pipeline.errors import ConfigError
from bckd_pipeline.gate.budgets import parse_budgets
from bckd_pipeline.gate.gate import FAIL, PASS, gate
from bckd_pipeline.imagefile import Decoded
from bckd_pipeline.ledger import REPORT_FORMAT
from bckd_pipeline.predict.outputs import PredictionsWriter
from bckd_pipeline.predict.segmenter import Prediction
from bckd_pipeline.predict.sources import Item, Source
from bckd_pipeline.report.evidence import write_qualitative
from bckd_pipeline.report.html import masks_table
from bckd_pipeline.metrics import ConfusionMatrix
from bckd_pipeline.tasks import TASKS, BudgetKey, ParityMeter, Task, get_task
from bckd_pipeline.tasks.segmentation import SEGMENTATION, miou_of


# The segmentation ledger of fixed_stages(), as the pipeline computed it before the task interface existed.
GOLDEN = {
    "pytorch": {
        "miou": 12.2398364195613,
        "pixel_agreement": 1.0,
        "max_abs_logit": 0.0,
        "failures": [],
    },
    "onnx": {
        "miou": 12.2398364195613,
        "miou_delta_vs_parent": 0.0,
        "pixel_agreement_vs_parent": 1.0,
        "max_abs_logit_vs_parent": 0.00010013580322265625,
        "mean_abs_logit": 9.999629752807474e-05,
        "failures": [],
    },
    "int8": {
        "miou": 11.171153560663925,
        "miou_delta": -1.0686828588973754,
        "per_class_iou": [10.569105691056912, 7.6923076923076925, 13.157894736842104, 13.26530612244898],
        "per_class_delta": [-1.0011422428273864, -1.51821862348178, -2.0206766917293226, 0.26530612244897966],
        "pixel_agreement": 0.9291666666666667,
        "mean_abs_logit": 0.22680442150861685,
        "max_abs_logit_vs_parent": 0.3500986099243164,
        "boundary_f": 100.0,
        "failures": [
            "mIoU fell 1.069 points from onnx (allowed 1)",
            "pixel agreement with onnx is 92.917% (allowed >= 95%)",
        ],
    },
    "labels": {
        "miou": 11.171153560663925,
        "miou_delta_vs_parent": 0.0,
        "pixel_agreement": 0.9291666666666667,
        "pixel_agreement_vs_parent": 1.0,
        "max_abs_logit": None,
        "mean_abs_logit": None,
        "failures": [],
    },
}
GOLDEN_BOOTSTRAP = (-1.0686828588973754, -2.6355268405954586, 0.45095182227747266)  # int8 vs pytorch, seed 3


def test_the_segmentation_ledger_of_fixed_outputs_keeps_its_values():
    stages, feeds = fixed_stages()
    report = ledger(stages, feeds, num_classes=C, ignore_index=255, criteria=CRITERIA.get, keep_labels=2)
    for name, expected in GOLDEN.items():
        row = report.stage(name)
        for key, value in expected.items():
            got = getattr(row, key)
            assert got == (pytest.approx(value, rel=1e-12, abs=1e-12) if isinstance(value, float) else value), (
                name,
                key,
            )
        assert row.passed == (not expected["failures"])
    assert report.culprit.name == "int8"
    assert report.per_image["int8"].shape == (N, C, C) and report.labels["int8"].shape == (2, H, W)
    ci = SEGMENTATION.bootstrap_delta(report.per_image["int8"], report.per_image["pytorch"], resamples=500, seed=3)
    assert (ci.point, ci.lower, ci.upper) == pytest.approx(GOLDEN_BOOTSTRAP, rel=1e-9)
    # The parity record: every field report.json takes from the task, beside the verdict.
    row = report.stage("int8").as_dict()
    assert set(SEGMENTATION.parity_fields) <= set(row)
    assert row["passed"] is False and row["images"] == N


def test_one_miou_formula_serves_the_confusion_matrix_and_the_bootstrap():
    rng = np.random.default_rng(0)
    cms = rng.integers(0, 50, size=(6, C, C))
    cms[2, 1, :] = cms[2, :, 1] = 0  # a class absent from one image
    for cm in cms:
        m = ConfusionMatrix(C)
        m.matrix += cm
        assert float(miou_of(cm)) == m.miou()  # the same number, not an approximation of it
    assert np.array_equal(miou_of(cms), np.array([float(miou_of(cm)) for cm in cms]))
    assert np.isnan(miou_of(np.zeros((3, 3), np.int64)))


def test_an_unknown_task_is_refused_with_the_known_names():
    assert get_task("segmentation") is SEGMENTATION
    with pytest.raises(ConfigError, match=r"Unknown task 'detectoin'.*Allowed: detection, segmentation"):
        get_task("detectoin")


# ---------------------------------------------------------------------------------------------
# a second task, registered here
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgreementCriteria:
    max_score_drop: float

    def for_fine_tuned(self) -> AgreementCriteria:
        return self


class AgreementMeter(ParityMeter):
    def __init__(self) -> None:
        self.per_image, self.kept = [], []

    def update(self, output, prediction, reference, parent, label, keep) -> None:
        self.per_image.append(np.array([(prediction[0] == label).sum(), label.size], np.int64))

    def fields(self, reference, parent):
        score = float(Agreement().metric_of(np.sum(self.per_image, axis=0)))
        return {"score": score, "score_delta_vs_parent": None if parent is None else score - parent["score"]}


class Agreement(Task):
    """Share of pixels labelled as the label map says, in percent (every label counts, 255 included)."""

    name = "agreement"
    metric = "score"
    metric_label = "score"
    metric_unit = "score points"
    evidence = "pixel counts"
    parity_fields = ("score", "score_delta_vs_parent")
    budget_keys = {
        "min_score": BudgetKey("score points", "min", 0.0, 100.0, "agreement score", field="score", label="score"),
    }
    export_heads = ("labels",)
    output_folders = ("agreement",)
    legend = (("#123456", "pixels as labelled"),)

    def prediction_of(self, output):
        return output.argmax(1) if output.ndim == 4 else output

    def image_evidence(self, prediction, target, *, num_classes, ignore_index):
        return np.array([(prediction == target).sum(), target.size], np.int64)

    def metric_of(self, evidence):
        evidence = np.asarray(evidence, np.float64)
        return 100.0 * evidence[..., 0] / evidence[..., 1]

    def parity_meter(self, num_classes, ignore_index):
        return AgreementMeter()

    def judge(self, row, parent_name, same_precision, criteria):
        drop = -(row["score_delta_vs_parent"] or 0.0)
        return [f"score fell {drop:.1f} from {parent_name}"] if drop > criteria.max_score_drop else []

    def as_saved(self, prediction):
        return prediction.astype(np.uint8)

    def write_prediction(self, prediction, out, stem, *, colors, classes):
        path = Path(out) / "agreement" / f"{stem}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, prediction)
        return {"agreement": path.relative_to(out).as_posix(), "pixels": int(prediction.size)}

    def write_overlay(self, prediction, rgb, out, stem, *, colors, classes=()):
        return {"overlay": "none drawn"}

    def draw(self, prediction, colors, *, ignore_index, truth=None, image=None):
        same = np.ones(prediction.shape, bool) if truth is None else prediction == truth
        return np.repeat(np.where(same, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)

    def caption(self, prediction, truth, *, ignore_index):
        return f"{100 * float((prediction == truth).mean()):.0f}% as labelled"


@pytest.fixture
def agreement(monkeypatch):
    task = Agreement()
    monkeypatch.setitem(TASKS, task.name, task)
    return task


def test_the_ledger_measures_and_judges_through_the_task(agreement):
    stages, feeds = fixed_stages()
    report = ledger(
        stages,
        feeds,
        num_classes=C,
        ignore_index=255,
        criteria=lambda _: AgreementCriteria(max_score_drop=0.5),
        task=get_task("agreement"),
    )
    rows = {s.name: s.as_dict() for s in report.stages}
    assert set(rows["int8"]) == {"name", "backend", "precision", "parent", "images", "passed", "failures"} | set(
        agreement.parity_fields
    )
    assert "miou" not in rows["int8"]
    assert rows["onnx"]["score"] == rows["pytorch"]["score"] and rows["onnx"]["failures"] == []
    assert report.per_image["int8"].shape == (N, 2)
    scores = {name: r["score"] for name, r in rows.items()}
    assert scores["int8"] != scores["onnx"]
    failed = [name for name, r in rows.items() if not r["passed"]]
    assert failed == ([] if scores["int8"] >= scores["onnx"] - 0.5 else ["int8"])


def _agreement_report(tmp_path, score: float) -> str:
    row = {
        "name": "onnxruntime",
        "backend": "onnxruntime",
        "precision": "fp32",
        "artifact": None,
        "status": "measured",
        "score": score,
        "latency_ms": dict.fromkeys(("p50", "p90", "p99", "mean")),
    }
    report = {"format": REPORT_FORMAT, "task": "agreement", "target": "onnxruntime-cpu-fp32", "stages": [row]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def test_the_gate_reads_the_task_from_the_report_and_checks_its_budgets(agreement, tmp_path):
    budgets = parse_budgets("[onnxruntime-cpu-fp32]\nmin_score = 60\n", "b.toml")
    low = gate(_agreement_report(tmp_path, 42.0), budgets)
    (check,) = low.checks
    assert (check.status, check.budget, check.measured) == (FAIL, "min_score", 42.0)
    assert check.message == "onnxruntime: score 42.000 vs budget min_score 60: short by 18.000 points"
    assert gate(_agreement_report(tmp_path, 75.0), budgets).checks[0].status == PASS


def test_the_gate_refuses_a_budget_of_another_task(agreement, tmp_path):
    budgets = parse_budgets("[onnxruntime-cpu-fp32]\nmin_miou = 10\n", "b.toml")
    with pytest.raises(ConfigError, match=r"budgets 'min_miou'.*another task.*agreement"):
        gate(_agreement_report(tmp_path, 50.0), budgets)


def test_task_modules_import_neither_torch_nor_scipy_nor_pil_at_module_level():
    import ast
    from pathlib import Path

    folder = Path(task_registry.__file__).parent
    for path in folder.glob("*.py"):
        if path.name == "segmentation_metrics.py":  # the boundary F: scipy, imported where parity measures
            continue
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert names <= {"__future__", "abc", "collections", "dataclasses", "pathlib", "types", "typing", "numpy"}, (
            path.name,
            names,
        )


def test_predict_writes_what_the_task_writes(agreement, tmp_path):
    seg = SimpleNamespace(task=agreement, palette=np.zeros((C, 3), np.uint8), classes=("a", "b", "c", "d"))
    seg.info = SimpleNamespace(as_dict=lambda: {"backend": "fake"})
    writer = PredictionsWriter(tmp_path, seg, Source(tmp_path, "folder"), overlay=True)
    labels = np.arange(H * W).reshape(H, W) % C
    image = Decoded(np.zeros((H, W, 3), np.uint8))
    writer.add(Item("x.png", "x", tmp_path / "x.png"), image, Prediction(labels, 1.0, 2.0))
    path, _ = writer.finish(1.0)
    (entry,) = json.loads(path.read_text())["images"]
    assert entry == {
        "image_id": 0,
        "path": "x.png",
        "agreement": "agreement/x.npy",
        "pixels": H * W,
        "infer_ms": 1.0,
        "total_ms": 2.0,
        "overlay": "none drawn",
    }
    assert np.array_equal(np.load(tmp_path / "agreement/x.npy"), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agreement", "predictions.json"]  # no labels/ PNG


def test_report_html_draws_what_the_task_draws(agreement, tmp_path):
    truth = np.zeros((2, H, W), np.int64)
    pred = truth.copy()
    pred[:, :, : W // 2] = 1  # half the pixels differ from the label
    qualitative = write_qualitative(
        tmp_path, np.zeros((2, H, W, 3), np.uint8), truth, ["a", "b"], {"deployed": lambda i: pred[i]}, {}, 255,
        task=agreement,
    )  # fmt: skip
    assert np.load(tmp_path / qualitative["path"])["pred/deployed"].dtype == np.uint8  # saved as the task says
    page = masks_table({"task": "agreement", "class_names": ["a", "b"], "qualitative": qualitative}, tmp_path)
    assert page.count("50% as labelled") == 2 and "px correct" not in page
    assert "pixels as labelled" in page and "ground-truth boundary" not in page


def test_the_report_lines_name_the_tasks_metric(agreement):
    """The stage's end line, the distillation sentence and the QAT sentence read the task's metric keys."""
    from bckd_pipeline.report.headlines import parity
    from bckd_pipeline.report.markdown import distillation_line, qat_line

    task = get_task("agreement")
    assert parity({"stages": {"int8": {"score_delta": -0.25}}}, "int8", task) == "int8, dscore -0.250"
    assert parity({"stages": {"int8": {"score_delta": -0.25}}}, "int8", SEGMENTATION) == "int8"
    report = {"task": "agreement", "distill": {"kd": "kd", "teacher_score": 80.0, "student_score": 70.0,
                                               "distilled_score": 75.0}}
    assert distillation_line(report) == "Distillation (kd): teacher 80.00, student alone 70.00, distilled 75.00 score."
    qat = {"mode": "on", "ran": True, "teacher": "t", "kd": "none", "cost": {}, "ptq_row": "int8",
           "score_delta_ptq": -2.0, "score_delta_qat": -0.5, "recovered_score": 1.5}
    assert "Δscore -0.500 (qat-int8) against -2.000 (int8): +1.500 points" in qat_line({**report, "qat": qat})
    row = {"pixel_agreement": 0.9915, "miou_delta": -0.129}
    assert SEGMENTATION.headline(row) == ["agreement 99.15 %", "dmIoU -0.129"]
    assert SEGMENTATION.drop_budget() == "max_miou_drop"
