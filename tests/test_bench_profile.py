"""benchmarks/step_profile.py: the README's table is the one its results file gives, and its
groups take every operator once."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("step_profile", REPO / "benchmarks" / "step_profile.py")
step_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_profile)


def test_readme_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "step-profile.json").read_text())
    readme = (REPO / "benchmarks" / "README.md").read_text()
    assert {(r["model"], r["dtype"]) for r in report["runs"]} == {("smollm2", "fp32"), ("gemma3", "fp32")}
    assert step_profile.table(report["runs"]) in readme
    for r in report["runs"]:
        assert abs(sum(r["shares"].values()) - 1) < 1e-9


def test_operators_are_grouped_by_name():
    group = step_profile.group_of
    assert [group(n) for n in ("aten::mm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                               "aten::_log_softmax_backward_data", "aten::xlogy", "aten::_foreach_lerp_",
                               "aten::copy_", "aten::index", "aten::rsqrt", "ProfilerStep#3")] == [
        "matmul", "matmul", "attention", "softmax and KL", "softmax and KL", "optimiser", "copies and casts",
        "copies and casts", "other", "Python between ops"]
