"""benchmarks/boundary_diagnosis.py: the ground truth at the grid, the path ends and the gradient probe (tiny
models, no training loop)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from bckd_pipeline.configs import BCKDConfig, DistillConfig
from bckd_pipeline.distill.models import build_model, default_taps
from bckd_pipeline.distill.task import SegDistillTask, StepInfo

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bd():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("boundary_diagnosis", BENCH / "boundary_diagnosis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCH))


def test_grid_truth_marks_the_cells_a_label_edge_runs_through(bd):
    mask = torch.zeros(16, 16, dtype=torch.long)
    mask[:, 8:] = 1  # an edge between pixel columns 7 and 8: grid columns 1 and 2 of 4
    mask[:4, :4] = 255  # an unlabelled cell: no boundary with its labelled neighbours, and left out
    edge, kept = bd.grid_truth(mask, (4, 4), num_classes=2)
    assert edge.tolist() == [[False, True, True, False]] * 4
    assert not kept[0, 0] and kept.sum() == 15


def test_path_ends_follow_the_search_paths(bd):
    assert bd.path_ends(3) == [(0, 1), (0, 2)] + [(y, x) for y in (1, 2) for x in range(-2, 3)]


def test_pair_truth_compares_the_source_with_each_path_end(bd):
    labels = torch.zeros(3, 5, dtype=torch.long)
    labels[:, 3:] = 1  # the only source (radius 3 on a 3 x 5 grid) is (0, 2)
    labels[2, 0] = -1  # unknown
    different, known = bd.pair_truth(labels, 3)
    ends = bd.path_ends(3)
    assert different.shape == (12, 1, 1)
    by_end = {e: (bool(d), bool(k)) for e, d, k in zip(ends, different.flatten(), known.flatten(), strict=True)}
    assert by_end[(0, 1)] == (True, True) and by_end[(1, -1)] == (False, True) and by_end[(2, -2)][1] is False


def test_the_probe_measures_the_terms_gradients_without_touching_the_step(bd):
    torch.manual_seed(0)
    task = SegDistillTask(
        build_model("tiny-student", 3),
        build_model("tiny-teacher", 3),
        cfg=DistillConfig(kd="kd+bckd", bckd=BCKDConfig(grid_stride=4, radius=3, fusion_dim=8)),
        student_taps=default_taps("tiny-student"),
        teacher_taps=default_taps("tiny-teacher", role="teacher"),
        example_input=torch.randn(2, 3, 32, 32),
    ).train()
    probe = bd.GradientProbe(task, every=2, last_iteration=10)
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    task(images, masks, StepInfo(0, 10, 2, 8))  # iteration 1: not measured
    assert probe.records == []
    out = task(images, masks, StepInfo(1, 10, 2, 8))
    (rec,) = probe.records
    assert rec["iteration"] == 2 and rec["gamma"] == 1.0
    for where in ("fused", "deep"):
        assert -1.0 <= rec[where]["cos_boundary_context"] <= 1.0
        assert rec[where]["norm_boundary_weighted"] > 0 and rec[where]["norm_context_weighted"] > 0
    out["loss"].backward()  # the graph was retained: the trainer's own backward still runs
    probe.close()
    task(images, masks, StepInfo(3, 10, 2, 8))
    assert len(probe.records) == 1  # closed: no more hooks
