"""Shared test setup, kept small.

One intra-op thread: every tensor in these tests is tiny, and on a 2-core machine shared with
other jobs, OpenMP threads that spin-wait for a busy core make each op many times slower.
"""

import torch

torch.set_num_threads(1)


# --- one real `run --preset smoke` shared by test_gate.py, test_html.py and test_ci_examples.py ---
import pytest  # noqa: E402
from helpers.cli import GATE_RUN_FLAGS  # noqa: E402


@pytest.fixture(scope="session")
def smoke_report(tmp_path_factory):
    """OUT folder of one real smoke run on onnxruntime-cpu (20 timed runs per stage), for the CI gate tests."""
    from bckd_pipeline.cli import main

    out = tmp_path_factory.mktemp("gate") / "R"
    assert main(["run", *GATE_RUN_FLAGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Files of a model the project does not know (helpers/own_model.py), built once per test module."""
    from helpers.own_model import build_models

    return build_models(tmp_path_factory.mktemp("own"))
