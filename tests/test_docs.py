"""What the docs say about the default run is what the run wrote (docs/default-run/)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml
from .conftest import load_script

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "default-run"


def docs_script():
    return load_script(REPO / "scripts" / "default_run_docs.py")


def test_default_run_page_says_what_the_run_wrote():
    script = docs_script()
    run = json.loads((DATA / "run.json").read_text())
    claims = pl.read_ipc(DATA / "claims.arrow")
    page = (REPO / "docs" / "default-run.md").read_text()
    part = page[page.index(script.BEGIN): page.index(script.END) + len(script.END)]
    assert part == script.render(run, claims), "docs/default-run.md is stale: run python scripts/default_run_docs.py"
    # every outcome of the claims report is on the page, and the README states the same time
    assert set(claims["verdict"]) <= {"holds", "contradicted", "not shown", "too few data"}
    assert all(f"**{v}**" in part for v in claims["verdict"])
    readme = " ".join((REPO / "README.md").read_text().split())
    # this run's and the AVX2 run's time, CPU and dtype, in the README and (the AVX2 one) on the page
    avx2 = json.loads((DATA / "avx2-fp32-5abe422.json").read_text())
    for facts, where in ((run, [readme]), (avx2, [readme, " ".join(page.split())])):
        mins, secs = divmod(facts["wall_seconds"], 60)
        for text in where:
            assert f"{mins} min {secs} s" in text
        assert f"**{mins} min {secs} s**" in readme and facts["cpu"] in readme
        assert all(f"`dtype: auto` is {d}" in readme for d in facts["dtypes"])
    for facts in (run, avx2):  # the code each run's tables were made by
        assert f"of `{facts['commit'][:7]}` took **" in readme
    # the AVX2 run's tuning jobs, as its log counted them
    assert f"`dtype: auto` is bf16: {run['jobs']['tune_job']} tuning jobs (" in readme
    assert run["jobs"]["tune_job"] == avx2["jobs"]["tune_job"]
    assert f"`docs/default-run/avx2-fp32-{avx2['commit'][:7]}.json`; the same {avx2['jobs']['tune_job']} tuning jobs)" in readme
    # the spread of AVX2 runs: an earlier one on another machine, and a later one of the same rows and claims
    other = json.loads((DATA / "avx2-fp32-ceea747.json").read_text())
    later = json.loads((DATA / "avx2-fp32-8540c9c.json").read_text())
    assert other["cpu"] == later["cpu"] == avx2["cpu"] and other["dtypes"] == later["dtypes"] == avx2["dtypes"]
    assert later["rows"] == avx2["rows"] and later["row_steps"] == avx2["row_steps"]
    assert (DATA / "avx2-fp32-8540c9c-claims.arrow").read_bytes() == (DATA / "avx2-fp32-5abe422-claims.arrow").read_bytes()
    (om, os_), (lm, ls) = divmod(other["wall_seconds"], 60), divmod(later["wall_seconds"], 60)
    prep = [sum(r["job_seconds"][k] for k in ("materialise_model", "pos_tag", "targets")) for r in (later, avx2)]
    tune = [r["job_seconds"]["tune_job"] for r in (later, avx2)]
    assert (f"Runs on this CPU model spread widely: the code of `{other['commit'][:7]}` took {om} min {os_} s "
            f"(`docs/default-run/avx2-fp32-{other['commit'][:7]}.json`), and the code of `{later['commit'][:7]}` took "
            f"{lm} min {ls} s (`docs/default-run/avx2-fp32-{later['commit'][:7]}.json`) with the same rows, row-steps and "
            f"claims report as the `{avx2['commit'][:7]}` run, its preparation jobs (the same code) taking {prep[0]} s of "
            f"job time against {prep[1]} s and its tuning jobs {tune[0]:,} s against {tune[1]:,} s") in readme
    # the latest run on this CPU model: the claims report of the same rows, byte for byte
    latest = json.loads((DATA / "avx2-fp32-d2e969a.json").read_text())
    assert latest["cpu"] == avx2["cpu"] and latest["row_steps"] == avx2["row_steps"] and latest["rows"] == avx2["rows"]
    assert (DATA / "avx2-fp32-d2e969a-claims.arrow").read_bytes() == (DATA / "avx2-fp32-5abe422-claims.arrow").read_bytes()
    (nm, ns) = divmod(latest["wall_seconds"], 60)
    assert (f"The code of `{latest['commit'][:7]}` (with changes no job reads) took {nm} min {ns} s "
            f"(`docs/default-run/avx2-fp32-{latest['commit'][:7]}.json`), its claims report byte for byte the "
            f"`{avx2['commit'][:7]}` run's, its tuning jobs {latest['job_seconds']['tune_job']:,} s") in readme
    # the outcomes that differ between the two runs, as the page states them
    avx2_claims = pl.read_ipc(DATA / "avx2-fp32-5abe422-claims.arrow")

    def verdict(df, claim, model):
        return df.filter((pl.col("claim") == claim) & (pl.col("model") == model))["verdict"].item()

    said = (f"has C3 **{verdict(avx2_claims, 'C3', 'smollm2')}** and C9 on SmolLM2 **{verdict(avx2_claims, 'C9', 'smollm2')}**,"
            f" where this {run['dtypes'][0]} run has C3 **{verdict(claims, 'C3', 'smollm2')}** and C9 on SmolLM2"
            f" **{verdict(claims, 'C9', 'smollm2')}**")
    assert said in " ".join(page.split())
    # the same job code with the dtype forced to fp32 on the bf16 run's CPU: its time and outcomes
    forced_name = FORCED
    forced = json.loads((DATA / f"{forced_name}.json").read_text())
    forced_claims = pl.read_ipc(DATA / f"{forced_name}-claims.arrow")
    assert forced["cpu"] == run["cpu"] and forced["dtypes"] == ["fp32"] and forced_name.endswith(forced["commit"][:7])
    assert forced["config"] == "config.yaml with --config dtype=fp32"  # how the record says it was run
    assert forced["jobs"]["tune_job"] == run["jobs"]["tune_job"] and forced["rows"] == run["rows"]
    for report, dtype in ((forced_claims, "fp32"), (avx2_claims, "fp32"), (claims, run["dtypes"][0])):
        assert set(report["dtype"]) - {""} == {dtype}  # each report's rows were tuned in the dtype it is named by
    mins, secs = divmod(forced["wall_seconds"], 60)
    code = (f"The same code (`{run['commit'][:7]}`)" if forced["commit"] == run["commit"] else
            f"The code of `{forced['commit'][:7]}` (its jobs' code unchanged since `{run['commit'][:7]}`)")
    assert (f"{code} with the dtype forced to fp32 (`--config dtype=fp32`) on that CPU took **{mins} min {secs} s**"
            in " ".join(readme.split()))

    def adj_verb_n80(report):
        n80 = report.filter((pl.col("claim") == "C9") & (pl.col("model") == "smollm2"))["n80"].item()
        return re.search(r"ADJ < VERB: (\d+) targets per group", n80).group(1)

    def c9_p(report):
        return script._p(report.filter((pl.col("claim") == "C9") & (pl.col("model") == "smollm2"))["p"].item())

    said = (f"(`{forced['commit'][:7]}`, {mins} min {secs} s; `docs/default-run/{forced_name}.json` and `{forced_name}-claims.arrow`)"
            f" has C3 **{verdict(forced_claims, 'C3', 'smollm2')}** and C9 on SmolLM2 **{verdict(forced_claims, 'C9', 'smollm2')}**"
            f" (its p = {c9_p(forced_claims)}; the AVX2 fp32 run's {c9_p(avx2_claims)}; this bf16 run's"
            f" {c9_p(claims)}): with 6 targets per POS, C9 on SmolLM2 held in this bf16 run only. At each run's observed effect,"
            f" its ADJ < VERB comparison would need {adj_verb_n80(forced_claims)} targets per group in the fp32-forced run,"
            f" {adj_verb_n80(avx2_claims)} in the AVX2 run and {adj_verb_n80(claims)} in this one (the `n80` column)")
    assert verdict(claims, "C9", "smollm2") == "holds" and run["dtypes"] == ["bf16"]
    assert verdict(avx2_claims, "C9", "smollm2") != "holds" != verdict(forced_claims, "C9", "smollm2")
    assert said in " ".join(page.split())


FORCED = "fp32-forced-2846b0b"  # the record of the page run's job code run with the dtype forced to fp32
JOB_CODE = ["distreach", "scripts", "rules", "Snakefile", "config.yaml", "configs", "schemas", "envs", "requirements.txt",
            "requirements-models.txt", "pyproject.toml"]


def test_the_fp32_forced_run_has_the_page_runs_job_code():
    """README: the fp32-forced run's code is the page run's, where jobs are concerned (git history needed)."""
    run = json.loads((DATA / "run.json").read_text())
    forced = json.loads((DATA / f"{FORCED}.json").read_text())
    commits = [run["commit"].removesuffix("+dirty"), forced["commit"].removesuffix("+dirty")]
    assert not forced["commit"].endswith("+dirty") and not run["commit"].endswith("+dirty")
    if commits[0] == commits[1]:
        pytest.skip("both runs are of one commit (the README says 'the same code', checked with it)")
    try:
        known = all(subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=REPO, capture_output=True).returncode == 0
                    for c in commits)
    except FileNotFoundError:
        known = False
    if not known:
        pytest.skip("this checkout has no git history holding both commits")
    diff = subprocess.run(["git", "diff", "--stat", *commits, "--", *JOB_CODE], cwd=REPO, capture_output=True, text=True, check=True)
    assert diff.stdout == ""


def test_job_time_is_read_from_snakemakes_log():
    log = """
[Fri Dec  4 12:11:42 2026]
localrule targets:
    input: results/models/smollm2
    output: results/targets/vanilla/smollm2.arrow
    jobid: 7
    reason: Missing output files
[Fri Dec  4 12:11:50 2026]
rule tune_job:
    jobid: 3
[Fri Dec  4 12:11:52 2026]
Finished jobid: 7 (Rule: targets)
[Fri Dec  4 12:21:50 2026]
Finished jobid: 3 (Rule: tune_job)
"""
    assert docs_script().job_seconds(log) == {"targets": 10.0, "tune_job": 600.0}
    assert docs_script().rule_jobs(log + log.replace("jobid: 3", "jobid: 4").replace("jobid: 7", "jobid: 8")
                                   .replace("12:21:50", "12:22:50")) == {"targets": [10.0, 10.0],
                                                                         "tune_job": [600.0, 660.0]}


def test_generated_part_is_replaced_and_nothing_else():
    script = docs_script()
    page = f"intro\n{script.BEGIN}\nold\n{script.END}\noutro\n"
    new = script.rewrite(page, f"{script.BEGIN}\nnew\n{script.END}")
    assert new == f"intro\n{script.BEGIN}\nnew\n{script.END}\noutro\n"
    assert re.search("old", new) is None


def test_the_run_facts_name_the_commit_and_packages_that_made_the_tables(tmp_path, monkeypatch):
    from distreach import tables
    from distreach.io import write_arrow

    script = docs_script()
    commit = "0123456789abcdef0123456789abcdef01234567"
    shard = pl.DataFrame({"model": ["m", "m"], "method": ["soft"] * 2, "target_id": ["a", "b"], "init_index": [0, 0],
                          "steps": [3, 4], "dtype": ["fp32", "fp32"]}).to_arrow()
    write_arrow(shard, tmp_path / "s.arrow", {"packages": {"distreach_commit": commit, "torch": "2.12.0"}})  # as a tuning job writes it

    def collected(name, at, torch="2.13.0"):  # collected by code at commit ``at`` (None: outside a checkout)
        monkeypatch.setattr(tables, "package_versions", lambda: {"torch": torch, **({"distreach_commit": at} if at else {})})
        tables.collect([str(tmp_path / "s.arrow")], str(tmp_path / "results" / "collected" / f"{name}.arrow"))

    collected("a", None)
    run = script.run_facts(tmp_path / "results", 61.0, "")
    assert run["commit"] == commit and run["row_steps"] == 7  # the tuning job's commit, from the shard's provenance
    assert run["packages"] == {"torch": ["2.12.0", "2.13.0"]}  # the tuning job's and the collecting job's
    page = script.render(run, pl.read_ipc(DATA / "claims.arrow"))
    assert "code at commit `0123456`)" in page and "| packages | torch 2.12.0 and 2.13.0 (the tables' provenance) |" in page
    collected("b", commit + "+dirty", torch="2.14.0")
    run = script.run_facts(tmp_path / "results", 61.0, "")
    assert run["commit"] == [commit, commit + "+dirty"] and run["packages"] == {"torch": ["2.12.0", "2.13.0", "2.14.0"]}
    assert "| packages | torch 2.12.0 and 2.13.0 and 2.14.0 (the tables' provenance) |" in script.render(
        run, pl.read_ipc(DATA / "claims.arrow"))
    write_arrow(shard, tmp_path / "s.arrow", {"packages": {"distreach_commit": commit}})  # no versions: none of it
    collected("a", None, torch="2.13.0")
    collected("b", None, torch="2.13.0")
    assert script.run_facts(tmp_path / "results", 61.0, "")["packages"] == {"torch": "2.13.0"}
    assert script._at(run["commit"]) == (", its tables made by the code of several commits: `0123456`, "
                                         "`0123456` with uncommitted changes")
    assert script._at(commit + "+dirty") == ", code at commit `0123456` with uncommitted changes"


def test_command_line_examples_show_what_their_commands_printed():
    """README.md's and docs/api.md's command-line examples are the commands scripts/readme_examples.py
    runs, with the output it recorded from running them (docs/readme-examples.json)."""
    script = load_script(REPO / "scripts" / "readme_examples.py")
    data = json.loads(script.DATA.read_text())
    assert {name: ex["commands"] for name, ex in data["examples"].items()} == \
        {name: commands for name, (commands, _) in script.EXAMPLES.items()}, "rerun scripts/readme_examples.py"
    made = script.parts(data)
    readme, api = (script.page_parts(p.read_text()) for p in script.PAGES)
    assert set(readme) == set(made) - {"errors"} and set(api) == {"soft", "errors"}
    for name, text in [*readme.items(), *api.items()]:
        assert text == made[name], f"the {name} example is stale: run scripts/readme_examples.py"
    # the outputs are of one run: each tuning wrote its table, and show and generate read the soft one
    ex = {name: e["output"] for name, e in data["examples"].items()}
    for name, table in script.TABLES.items():
        assert ex[name].startswith("capitals: kl_min ") and ex[name].endswith(f"wrote 2 rows to {table}\n")
    soft_kl = ex["soft"].split()[2]
    assert ex["show"].startswith(f"capitals (init 0; smollm2, soft, experiment cli): KL {soft_kl} bits;")
    assert ex["generate"].startswith(f"capitals (init 0; smollm2, soft, experiment cli), KL {soft_kl} bits when tuned")
    # each bad input stopped with one line naming what is wrong; the commands making the inputs printed nothing
    errors = data["examples"]["errors"]
    refused = [c.startswith(f"{script.BIN}distreach") for c in errors["commands"]]
    assert [len(o.splitlines()) for o in errors["outputs"]] == [int(r) for r in refused]
    assert errors["exit_statuses"] == [script.BAD_INPUT if r else 0 for r in refused]
    assert all(o.startswith("distreach") and ": error: " in o for o in errors["outputs"] if o)


def test_cluster_page_states_the_paper_studys_estimate():
    """docs/cluster.md's rows and compute of the paper study are what benchmarks/paper_estimate.py computes."""
    est = load_script(REPO / "benchmarks" / "paper_estimate.py").main(str(REPO / "configs" / "paper.yaml"))
    page = " ".join((REPO / "docs" / "cluster.md").read_text().split())
    mantissa, exponent = f"{est['flops']:.1e}".split("e")
    hours = [est["flops"] / (tflops * 1e12) / 3600 for tflops in (200, 20)]
    models = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())["models"]
    assert f"{est['rows']:,} (target, init) rows on {len(models)} models" in page
    assert f"{mantissa} × 10{''.join('⁰¹²³⁴⁵⁶⁷⁸⁹'[int(c)] for c in str(int(exponent)))} FLOPs, about {hours[0]:.1f} GPU-hours at a " \
           f"sustained 200 TFLOP/s or {hours[1]:.0f} at 20 TFLOP/s ({est['gcg_flops'] / est['flops']:.0%} of it the gcg series" in page


def test_a_recorded_run_writes_its_numbers_and_nothing_else(tmp_path, monkeypatch):
    """``--record NAME`` keeps a run beside the page's (docs/default-run/NAME.json and
    NAME-claims.arrow) and leaves the page and its figures alone."""
    import shutil
    import sys

    import pytest

    from distreach import tables
    from distreach.io import write_arrow

    script = docs_script()
    shard = pl.DataFrame({"model": ["m"], "method": ["soft"], "target_id": ["a"], "init_index": [0], "steps": [5],
                          "dtype": ["fp32"]}).to_arrow()
    write_arrow(shard, tmp_path / "s.arrow", {})
    results = tmp_path / "results"
    tables.collect([str(tmp_path / "s.arrow")], str(results / "collected" / "a.arrow"))
    (results / "report").mkdir()
    shutil.copyfile(DATA / "claims.arrow", results / "report" / "claims.arrow")
    (tmp_path / "log").write_text("")
    page = tmp_path / "page.md"
    page.write_text("the page\n")
    monkeypatch.setattr(script, "DATA", tmp_path / "data")
    monkeypatch.setattr(script, "PAGE", page)
    argv = ["default_run_docs.py", "--wall", "90", "--log", str(tmp_path / "log"), "--results", str(results),
            "--record", "other-cpu", "--config"]
    monkeypatch.setattr(sys, "argv", [*argv, "seed=1", "dtype=bf16"])  # a config the tables contradict
    with pytest.raises(SystemExit, match=r"^--config dtype=bf16: the run's tables were tuned in fp32$"):
        script.main()
    assert not (tmp_path / "data").exists()
    monkeypatch.setattr(sys, "argv", [*argv, "dtype=fp32"])
    script.main()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["other-cpu-claims.arrow", "other-cpu.json"]
    facts = json.loads((tmp_path / "data" / "other-cpu.json").read_text())
    assert facts["wall_seconds"] == 90 and facts["row_steps"] == 5 and facts["dtypes"] == ["fp32"]
    assert facts["config"] == "config.yaml with --config dtype=fp32"
    assert pl.read_ipc(tmp_path / "data" / "other-cpu-claims.arrow").equals(pl.read_ipc(DATA / "claims.arrow"))
    assert page.read_text() == "the page\n"


def test_a_bad_record_name_or_a_missing_report_writes_nothing(tmp_path, monkeypatch):
    import sys

    import pytest

    script = docs_script()
    monkeypatch.setattr(script, "DATA", tmp_path / "data")
    (tmp_path / "results" / "report").mkdir(parents=True)
    (tmp_path / "log").write_text("")
    for name, says in (("run", "--record 'run'"), ("../x", "--record '../x'"), ("ok", "no claims report")):
        monkeypatch.setattr(sys, "argv", ["default_run_docs.py", "--wall", "1", "--log", str(tmp_path / "log"),
                                          "--results", str(tmp_path / "results"), "--record", name])
        with pytest.raises(SystemExit, match=says.replace("(", r"\(")):
            script.main()
    assert not (tmp_path / "data").exists()


def test_speed_page_states_the_default_run_with_and_without_reused_memory():
    """docs/speed.md's two AVX2 runs (without and with distreach.models.reuse_freed_memory): their
    times, and the same claims report from both."""
    page = " ".join((REPO / "docs" / "speed.md").read_text().split())
    runs = {c: json.loads((DATA / f"avx2-fp32-{c}.json").read_text()) for c in ("44fa2fa", "ceea747")}
    said = ("took {} without it (`docs/default-run/avx2-fp32-44fa2fa.json`) and {} with it (`avx2-fp32-ceea747.json`),"
            " one run each (a difference within the spread between runs), with the same claims report to the last bit").format(
        *(f"{r['wall_seconds'] // 60} min {r['wall_seconds'] % 60} s" for r in runs.values()))
    assert said in page
    assert all(r["cpu"] == runs["44fa2fa"]["cpu"] and r["dtypes"] == ["fp32"] for r in runs.values())
    assert runs["44fa2fa"]["row_steps"] == runs["ceea747"]["row_steps"]
    assert all(r["commit"].startswith(c) for c, r in runs.items())  # each file is of the code it is named by
    assert (DATA / "avx2-fp32-44fa2fa-claims.arrow").read_bytes() == (DATA / "avx2-fp32-ceea747-claims.arrow").read_bytes()
    # where it pays: a [rows, |V|] fp32 tensor of 32 MiB (2**25 bytes) or more from the rows the page names
    for rows, vocab in ((32, 262_144), (171, 49_152)):
        assert rows * vocab * 4 >= 2**25 > (rows - 1) * vocab * 4
