"""The results quoted in README.md and docs/*.md are the ones docs/results/*.json holds: every marked region
renders from its JSON to exactly the committed text, the check catches a region edited by hand, and the
results files whose provenance is complete stay complete."""

import importlib.util
import inspect
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "render_results.py"
RECORD = ROOT / "benchmarks" / "record_command.py"

# Results files that record command, commit, CPU model and ISA, GPU, versions and wall time.
COMPLETE = {
    "quickstart_smoke_timed_cpu",
    "predict_smoke_camvid_cpu",
    "segmenter_smoke_cpu",
    "multi_target_smoke_cpu",
    "ci_gate_smoke_cpu",
    "own_onnx_lraspp_cpu",
    "ci_gate_tight_cpu",
    "ci_gate_npu_pending_cpu",
    "ci_base_smoke_cpu",
    "ci_gate_baseline_cpu",
    "camvid_instances_proxy",
    "deploy_cpu_camvid96x128",
    "pretrained_lite_probe",
    "trt_qat_ready_cpu",
}


@pytest.fixture(scope="module")
def rr():
    spec = importlib.util.spec_from_file_location("render_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_docs_render_from_the_results_json(rr):
    diffs = rr.check(rr.DOCS)
    assert not diffs, "docs differ from docs/results; run `python benchmarks/render_results.py`:\n" + "\n".join(diffs)


def test_the_docs_have_regions_and_every_region_names_a_renderer(rr):
    specs = [s for p in rr.DOCS for s in rr.regions(p.read_text())]
    assert len(specs) >= 10
    for spec in specs:
        name = spec.split()[0]
        assert name in rr.RENDERERS or name in rr.INLINE_RENDERERS, spec


def test_check_fails_on_a_tampered_table(rr, tmp_path):
    doc = (ROOT / "docs" / "deploy-parity.md").read_text()
    assert "| ONNX Runtime INT8 | 27.12 |" in doc
    tampered = tmp_path / "deploy-parity.md"
    tampered.write_text(doc.replace("| ONNX Runtime INT8 | 27.12 |", "| ONNX Runtime INT8 | 28.12 |", 1))
    diffs = rr.check([tampered])
    assert len(diffs) == 1
    assert "-| ONNX Runtime INT8 | 28.12 |" in diffs[0] and "+| ONNX Runtime INT8 | 27.12 |" in diffs[0]
    assert rr.main(["--check", str(tampered)]) == 1
    rr.main([str(tampered)])
    assert tampered.read_text() == doc


def test_check_fails_on_a_tampered_inline_figure(rr, tmp_path):
    path = tmp_path / "x.md"
    path.write_text("ORT INT8 is <!-- r:ort_int8_over_fp32 -->9.9<!-- /r -->x faster than ORT FP32.\n")
    assert rr.main(["--check", str(path)]) == 1
    rr.main([str(path)])
    assert rr.main(["--check", str(path)]) == 0
    assert "9.9" not in path.read_text()


def test_text_outside_regions_is_left_alone(rr):
    text = "before 1.23\n<!-- results:deploy_table -->\nstale\n<!-- /results:deploy_table -->\nafter 4.56\n"
    out = rr.render_text(text)
    assert out.startswith("before 1.23\n<!-- results:deploy_table -->\n| row |")
    assert out.endswith("<!-- /results:deploy_table -->\nafter 4.56\n")


def test_a_region_closed_by_another_name_is_refused(rr):
    with pytest.raises(ValueError, match="closed by"):
        rr.render_text("<!-- results:deploy_table -->\nx\n<!-- /results:quant_table -->\n")


def test_complete_results_files_stay_complete(rr):
    report = rr.audit()
    assert COMPLETE <= set(report)
    assert {stem: report[stem] for stem in COMPLETE} == {stem: [] for stem in COMPLETE}


FULL = {
    "command": "x",
    "git_commit": "0" * 40,
    "git_dirty": False,
    "machine": {"cpu": "AMD EPYC", "isa": ["AVX2"], "gpus": []},
    "versions": {"torch": "2"},
    "wall_s": 1.0,
}


def test_the_audit_names_what_a_file_lacks(rr):
    assert rr.audit_file(FULL) == []
    assert rr.audit_file({k: v for k, v in FULL.items() if k != "wall_s"}) == ["wall_time"]
    assert rr.audit_file({**FULL, "git_commit": None}) == ["commit"]


def test_a_dirty_tree_counts_as_a_commit_only_with_its_diff_hash(rr):
    dirty = {**FULL, "git_dirty": True, "git_diff_sha256": "ab" * 32}
    assert rr.audit_file(dirty) == []
    assert rr.audit_file({**dirty, "git_diff_sha256": None}) == ["commit"]
    assert rr.audit_file({k: v for k, v in dirty.items() if k != "git_diff_sha256"}) == ["commit"]
    assert rr.audit_file({**dirty, "git_diff_sha256": None, "code_hash": "0123456789ab"}) == ["commit"]
    assert rr.audit_file({**FULL, "git_dirty": False}) == []
    # every recorded git state counts: a clean one at the top does not vouch for a dirty one inside
    env = {"git_commit": "1" * 40, "git_dirty": True}
    assert rr.audit_file({**FULL, "git_dirty": False, "configs": [{"environment": env}]}) == ["commit"]
    assert rr.audit_file({**FULL, "configs": [{"environment": {**env, "git_diff_sha256": "cd" * 32}}]}) == []


def test_a_commit_without_a_record_of_the_tree_state_does_not_count(rr):
    no_state = {k: v for k, v in FULL.items() if k not in ("git_commit", "git_dirty")}
    assert rr.audit_file({**no_state, "versions": {"torch": "2", "git": "a9ca227"}}) == ["commit"]
    assert rr.audit_file({**no_state, "git_commit": "0" * 40}) == ["commit"]
    assert rr.audit_file({**no_state, "git_commit": "0" * 40, "git_dirty": None}) == ["commit"]
    assert rr.audit_file({**no_state, "versions": {"torch": "2", "git": "a9ca227", "git_dirty": False}}) == []
    assert rr.audit_file({**no_state, "git_commit": "0" * 40, "runs": [{"git_dirty": False}]}) == []


def test_a_file_that_declares_its_code_unknown_lacks_its_commit(rr):
    assert rr.audit_file({**FULL, "code_unknown": "the runs used an uncommitted tree"}) == ["commit"]
    assert rr.audit_file({**FULL, "code_hash": "0123456789ab", "code_unknown": "no commit has this hash"}) == ["commit"]
    assert rr.audit_file({**FULL, "code_unknown": None}) == []


def test_the_gpu_is_asked_only_of_a_measurement_that_ran_on_one(rr):
    cpu_only = {
        "command": "x --device cpu",
        "git_commit": "0" * 40,
        "git_dirty": False,
        "device": "cpu",
        "machine": {"cpu": "AMD EPYC", "isa": ["AVX2"]},
        "versions": {"torch": "2"},
        "wall_s": 1.0,
    }
    assert rr.audit_file(cpu_only) == []
    assert rr.audit_file({**cpu_only, "device": "cuda"}) == ["gpu"]
    assert rr.audit_file({**cpu_only, "device": "cuda", "machine": {**cpu_only["machine"], "gpus": ["H100"]}}) == []
    no_device = {k: v for k, v in cpu_only.items() if k != "device"}
    assert rr.audit_file({**no_device, "command": "bckd-pipeline train-teacher --device cuda"}) == ["gpu"]
    assert rr.audit_file({**no_device, "commands": ["a", "b --train-device cuda:0"]}) == ["gpu"]
    assert rr.audit_file({**no_device, "rows": [{"command": "c --device cuda"}]}) == ["gpu"]
    assert rr.audit_file({**no_device, "what": "timed on an H100, file h100.json"}) == []


def _stem(rr, spec: str) -> str:
    """The results file a region reads: its first word after the renderer's name, or the renderer's default."""
    name, *args = shlex.split(spec)
    if args:
        return args[0]
    fn = rr.RENDERERS.get(name) or rr.INLINE_RENDERERS[name]
    return next(iter(inspect.signature(fn).parameters.values())).default


def test_no_figure_is_quoted_from_a_file_that_lacks_provenance(rr):
    """A figure whose results file lacks the command, commit, machine, versions or wall time is dropped: only
    the regions that say what a file lacks (and the table of them) may read such a file."""
    audit = rr.audit()
    quoted = {
        (p.name, _stem(rr, spec), spec)
        for p in rr.DOCS
        for spec in rr.regions(p.read_text())
        if shlex.split(spec)[0] not in ("lacks", "provenance_table")
    }
    assert all(stem in audit for _, stem, _ in quoted)
    assert [(page, spec) for page, stem, spec in sorted(quoted) if audit[stem]] == []


def test_a_sentence_can_quote_what_a_results_file_lacks(rr):
    assert rr.lacks("quant_table_cpu") == "commit"
    assert rr.lacks("deploy_cpu_camvid96x128") == "nothing"
    assert rr.lacks("camvid_h200_144x192") == ", ".join(rr.audit()["camvid_h200_144x192"])
    assert "gpu" in rr.lacks("camvid_h200_144x192").split(", ")


def test_record_command_writes_a_complete_results_file(rr, tmp_path):
    out = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, str(RECORD), "--json", str(out), "--what", "a test", "--", sys.executable, "-c", "print(42)"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    record = json.loads(out.read_text())
    assert record["stdout"] == "42\n" and record["exit_code"] == 0 and record["wall_s"] > 0
    assert rr.audit_file(record) == []
    assert record["git_dirty"] is (record["git_diff_sha256"] is not None)


@pytest.mark.parametrize(
    ("page", "figure"),
    [
        ("benchmarks.md", "| student@fp32 | 24.75 | 27.61 |"),
        ("benchmarks.md", "| + PKD | 1 | 3.28 M | 5.33 s (4.91 s) | 2.17 |"),
        ("deploy-parity.md", "| QDQ, u8 / s8, per-tensor weights | 1.47 | 2.28 |"),
    ],
)
def test_check_fails_on_a_tampered_figure_of_each_kind_of_table(rr, tmp_path, page, figure):
    doc = (ROOT / "docs" / page).read_text()
    assert figure in doc
    tampered = tmp_path / page
    tampered.write_text(doc.replace(figure, figure.replace("1", "7"), 1))
    assert rr.main(["--check", str(tampered)]) == 1
    rr.main([str(tampered)])
    assert tampered.read_text() == doc


def test_a_quoted_message_that_the_recorded_output_lacks_is_an_error(rr, tmp_path):
    path = tmp_path / "x.md"
    path.write_text('"<!-- r:recorded_match ci_gate_smoke_cpu "no such message [0-9]+" -->x<!-- /r -->"\n')
    with pytest.raises(ValueError, match="matches nothing"):
        rr.main(["--check", str(path)])


def test_a_region_spec_may_quote_a_json_key_with_spaces(rr):
    text = '<!-- r:value cost_cpu_96x128_bf16 "teacher bf16_over_fp32_paired" .3f -->x<!-- /r -->'
    value = json.loads((ROOT / "docs" / "results" / "cost_cpu_96x128_bf16.json").read_text())[
        "teacher bf16_over_fp32_paired"
    ]
    assert rr.render_text(text) == text.replace("-->x<", f"-->{value:.3f}<")
