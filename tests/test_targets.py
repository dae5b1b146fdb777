import json
import math

import numpy as np
import pyarrow as pa
import pytest

from distreach.errors import DistreachError
from distreach.io import write_arrow
from distreach.targets import read_target_matrix
from distreach.vanilla import EntropyGrid, VanillaSettings, entropy_matched_targets, vanilla_targets

V = 500
FAST = VanillaSettings(per_level=2, seed=3)


def test_grid_runs_from_zero_to_log_v():
    levels = EntropyGrid(step=2.0, unit="bits").levels(1024)
    assert levels == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    levels = EntropyGrid(step=1.5, unit="nats").levels(V)
    assert levels[0] == 0 and levels[-1] == pytest.approx(math.log(V))
    assert EntropyGrid(step=1.0, start=1.0, stop=3.0, unit="nats").levels(V) == [1.0, 2.0, 3.0]
    with pytest.raises(DistreachError, match="start must be >= 0"):
        EntropyGrid(step=1.0, start=-1.0).levels(V)
    # a start above log|V| (the config's check cannot know |V|): no levels, said in one line, with or without a stop
    assert EntropyGrid(step=1.0, start=10.0, unit="bits").levels(1024) == [10.0]
    for stop in (None, 60.0):
        with pytest.raises(DistreachError, match=r"^entropy grid: start 10.5 bits is above log\|V\| = 10 bits of 1024 tokens: no levels$"):
            EntropyGrid(step=1.0, start=10.5, stop=stop, unit="bits").levels(1024)


@pytest.mark.parametrize("unit", ["nats", "bits"])
def test_vanilla_targets_reach_their_entropy(unit):
    table = vanilla_targets(V, EntropyGrid(step=2.0, unit=unit), FAST)
    meta, probs = read_target_matrix_from(table)
    req = np.array(meta["requested_entropy"])
    got = np.array(meta["achieved_entropy"])
    assert len(req) == 2 * len(EntropyGrid(step=2.0, unit=unit).levels(V))
    assert np.all(np.abs(req - got) <= 0.01 + 1e-9)
    # achieved entropy recomputed from the stored distribution, in the unit
    h = -(probs * np.log(np.where(probs > 0, probs, 1))).sum(1)
    if unit == "bits":
        h /= math.log(2)
    np.testing.assert_allclose(h, got, atol=2e-3)
    assert set(meta["entropy_unit"]) == {unit} and set(meta["kind"]) == {"vanilla"}
    assert len(set(meta["target_id"])) == len(req)


def read_target_matrix_from(table):
    rows = table.drop_columns(["logprobs"]).to_pydict()
    logp = table.column("logprobs").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    return rows, np.exp(logp.astype(np.float64))


def test_targets_are_deterministic_and_independent_of_other_rows():
    a = entropy_matched_targets(V, [1.0, 3.0], ["x", "y"], "nats", FAST)
    b = entropy_matched_targets(V, [3.0], ["y"], "nats", FAST)
    assert a.column("logprobs")[1] == b.column("logprobs")[0]
    c = entropy_matched_targets(V, [1.0, 3.0], ["x", "y"], "nats", FAST)
    assert a.equals(c)


def test_unreachable_target_is_an_error_naming_it():
    with pytest.raises(DistreachError, match=r"target vanilla-L000-r0: entropy 0.0 bits not reached within 3 iterations"):
        vanilla_targets(V, EntropyGrid(step=2.0, unit="bits"), VanillaSettings(per_level=1, max_iters=3))
    with pytest.raises(DistreachError, match="outside"):
        entropy_matched_targets(V, [99.0], ["z"], "nats", FAST)


def test_read_targets_checks_the_file(tmp_path):
    table = vanilla_targets(V, EntropyGrid(step=4.0, unit="nats"), VanillaSettings(per_level=1))
    path = tmp_path / "t.arrow"
    write_arrow(table, path)
    meta, probs = read_target_matrix(path, V)
    assert probs.shape == (table.num_rows, V)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    nearly = table.to_pydict()  # a row summing to 1.0005, within the tolerance: renormalised
    nearly["logprobs"][0] = [x + math.log(1.0005) for x in nearly["logprobs"][0]]
    write_arrow(pa.table(nearly, schema=table.schema), tmp_path / "nearly.arrow")
    _, got = read_target_matrix(tmp_path / "nearly.arrow", V)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(got[0], probs[0], rtol=1e-5, atol=1e-12)
    with pytest.raises(DistreachError, match="targets have 500 entries but the model's vocabulary has 49152"):
        read_target_matrix(path, 49152)
    bad = table.to_pydict()
    bad["logprobs"][0][3] = float("nan")
    write_arrow(pa.table(bad, schema=table.schema), tmp_path / "nan.arrow")
    with pytest.raises(DistreachError, match="NaN"):
        read_target_matrix(tmp_path / "nan.arrow", V)
    bad = table.to_pydict()
    bad["logprobs"][0] = [x + 0.5 for x in bad["logprobs"][0]]
    write_arrow(pa.table(bad, schema=table.schema), tmp_path / "sum.arrow")
    with pytest.raises(DistreachError, match="sums to"):
        read_target_matrix(tmp_path / "sum.arrow", V)
    with pytest.raises(DistreachError, match="not found"):
        read_target_matrix(tmp_path / "missing.arrow", V)
    (tmp_path / "junk.arrow").write_text("not arrow")
    with pytest.raises(DistreachError, match="not a readable Arrow"):
        read_target_matrix(tmp_path / "junk.arrow", V)


def _fit_without_dropping(z, h, tol, max_iters, lr):
    """Eq. 1's descent on every row until all are within tolerance (no row leaves the batch)."""
    import torch

    from distreach.infotheory import entropy

    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    best, done = torch.empty_like(z), torch.zeros(z.shape[0], dtype=torch.bool)
    for _ in range(max_iters + 1):
        logp = torch.log_softmax(z, -1)
        hit = ((entropy(logp) - h).abs() <= tol) & ~done
        best[hit], done = logp.detach()[hit], done | hit
        if done.all():
            break
        opt.zero_grad()
        ((entropy(logp) - h) ** 2).sum().backward()
        opt.step()
    return best, ~done


def test_rows_within_tolerance_leave_the_descent_without_changing_the_others():
    import torch

    from distreach.vanilla import _fit_entropy

    z = torch.randn(5, V, generator=torch.Generator().manual_seed(0))
    h = torch.tensor([0.0, 1.0, 3.0, 5.0, math.log(V) - 0.01])  # rows reach tolerance at different iterations
    got, failed = _fit_entropy(z, h, 0.01, 5000, 0.5)
    want, want_failed = _fit_without_dropping(z, h, 0.01, 5000, 0.5)
    assert torch.equal(got, want) and not failed.any() and not want_failed.any()
    # fewer iterations than the slowest row needs: the rows done keep their result, the others are marked
    few = next(n for n in range(1, 5000) if 0 < int(_fit_without_dropping(z, h, 0.01, n, 0.5)[1].sum()) < len(h))
    got, failed = _fit_entropy(z, h, 0.01, few, 0.5)
    want, want_failed = _fit_without_dropping(z, h, 0.01, few, 0.5)
    assert failed.tolist() == want_failed.tolist() and torch.equal(got[~failed], want[~want_failed])


def test_an_arrow_targets_entropies_are_read_in_the_unit_asked(tiny_llama, tmp_path):
    """Each row converted from its own unit: a tuning reports every row in one (its first
    row's where no unit is asked)."""
    from distreach import api

    nats = api.make_target("vanilla", tiny_llama.vocab_size, 2.0, "nats", n=2, seed=1)
    bits = api.make_target("vanilla", tiny_llama.vocab_size, 2.0, "bits", n=1, seed=2)
    # without a model at hand only an .arrow table is read (all but its length checked)
    np.save(tmp_path / "p.npy", np.full(tiny_llama.vocab_size, 1 / tiny_llama.vocab_size))
    with pytest.raises(DistreachError, match=r"p\.npy: a \.npy target is read against a model's vocabulary: give the model$"):
        api.read_target(tmp_path / "p.npy", None)
    # ids that say what made each target: tables of other calls can be tuned together
    assert nats.column("target_id").to_pylist() + bits.column("target_id").to_pylist() == [
        "vanilla-2nats-s1-0", "vanilla-2nats-s1-1", "vanilla-2bits-s2-0"]
    path = tmp_path / "mixed.arrow"
    mixed = pa.concat_tables([nats, bits])  # another tool's table may leave an entropy out
    mixed = mixed.set_column(2, "requested_entropy", pa.array([2.0, None, 2.0]))
    write_arrow(mixed, path)
    ln2 = math.log(2)
    achieved = np.array(nats.column("achieved_entropy").to_pylist() + bits.column("achieved_entropy").to_pylist())
    for unit, scale in ((None, [1, 1, ln2]), ("nats", [1, 1, ln2]), ("bits", [1 / ln2, 1 / ln2, 1])):
        table = api.read_target(path, tiny_llama, unit)
        assert table.column("entropy_unit").to_pylist() == [unit or "nats"] * 3
        requested = table.column("requested_entropy").to_pylist()
        assert requested[1] is None
        np.testing.assert_allclose(requested[::2], 2.0 * np.array(scale[::2]), rtol=1e-12)
        np.testing.assert_allclose(table.column("achieved_entropy").to_pylist(), achieved * scale, rtol=1e-12)
        assert table.column("target_id").to_pylist() == nats.column("target_id").to_pylist() + bits.column("target_id").to_pylist()
    # a table made in memory is tuned in its first row's unit too, every row converted
    df = api.tune_target(tiny_llama, pa.concat_tables([nats, bits]), inits=1, max_steps=1)
    assert df["entropy_unit"].to_list() == ["nats"] * 3
    np.testing.assert_allclose(df["target_entropy"].to_list(), [2.0, 2.0, 2.0 * ln2], rtol=1e-12)
    # a one-unit table's columns are read as written
    write_arrow(nats, path)
    assert api.read_target(path, tiny_llama).drop_columns(["logprobs"]).equals(nats.drop_columns(["logprobs"]))


def test_token_target_is_the_json_files_target_and_checks_the_same(tiny_llama, tmp_path):
    from distreach import api

    dist = {"table": 0.5, "river": 0.3, "Paris": 0.2}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(dist))
    from_dict = api.token_target(dist, tiny_llama, "mine")
    assert from_dict.equals(api.read_target(path, tiny_llama))
    assert from_dict.column("target_id").to_pylist() == ["mine"]
    p = np.exp(np.asarray(from_dict.column("logprobs")[0].as_py()))
    tok = tiny_llama.tokenizer
    assert {tok.convert_ids_to_tokens(int(i)): round(float(p[i]), 6) for i in np.flatnonzero(p)} == dist
    nested = tmp_path / "nested.json"  # a key twice in an inner object: the file is no target object
    nested.write_text('[{"table": 0.5, "table": 0.5}]')
    with pytest.raises(DistreachError, match=r'nested.json: expected a non-empty object \{"token string": probability\}$'):
        api.read_target(nested, tiny_llama)
    special = api.token_target({"<eos>": 0.5, "Paris": 0.5}, tiny_llama, "stop")  # a special token by its name
    assert np.flatnonzero(np.asarray(special.column("logprobs")[0].as_py()) > -np.inf).tolist() == sorted(
        [tok.eos_token_id, tok.convert_tokens_to_ids("Paris")])
    one = api.token_target({"Paris": 1.0}, tiny_llama, "one")  # a one-token target: entropy 0, not -0
    assert [math.copysign(1, one.column(c)[0].as_py()) for c in ("requested_entropy", "achieved_entropy")] == [1, 1]
    as_numpy = dict(zip(dist, np.array(list(dist.values()), np.float32)))  # probabilities from an array
    assert np.allclose(np.asarray(api.token_target(as_numpy, tiny_llama, "mine").column("logprobs")[0].as_py()),
                       np.asarray(from_dict.column("logprobs")[0].as_py()), atol=1e-6)
    with pytest.raises(DistreachError, match=r"^target mine: token 'table' has probability (np\.True_|True), not a number$"):
        api.token_target({"table": np.bool_(True)}, tiny_llama, "mine")
    with pytest.raises(DistreachError, match=r"^target mine: token 'table' has probability True, not a number$"):
        api.token_target({"table": True}, tiny_llama, "mine")  # an int to Python, not a probability
    with pytest.raises(DistreachError, match=r"^target mine: token 'river' has a negative probability \(-0\.5\)$"):
        api.token_target({"table": 1.5, "river": -0.5}, tiny_llama, "mine")
    with pytest.raises(DistreachError, match=r"^target mine: 1 string is not a single token of this model: 'zebra' \(not in the vocabulary\)$"):
        api.token_target({"table": 1.0, "zebra": 0.0}, tiny_llama, "mine")


def test_a_string_that_is_no_token_is_shown_as_the_tokens_it_makes_or_as_a_tokens_piece(tmp_path, monkeypatch):
    from distreach import api

    from .conftest import write_tiny_gguf

    model = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(model)
    monkeypatch.setenv("DISTREACH_CACHE", str(tmp_path / "cache"))
    loaded = api.load_model(model, dtype="fp32", device="cpu")
    with pytest.raises(DistreachError) as err:
        api.token_target({"\u0120the": 0.2, " thee": 0.2, "": 0.2, 5: 0.2, " the": 0.2}, loaded, "mine")
    assert str(err.value) == ("target mine: 4 strings are not single tokens of this model: 'Ġthe' (the piece of token "
                              "' the': give its text), ' thee' (2 tokens: ' the', 'e'), '' (no tokens), 5 (not a string: "
                              "give a token's text)")
