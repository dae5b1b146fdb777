"""docs/tables.md documents every column of a result table and no column that none has."""

import re
from pathlib import Path

import numpy as np
import polars as pl

from distreach.families import OutlierSettings, lm_generated, migrate, outlier_targets, pos_uniform_targets, shuffled
from distreach.settings import tuning_config
from distreach.tuning import tune_rows
from distreach.targets import target_probs
from distreach.vanilla import EntropyGrid, VanillaSettings, vanilla_targets

DOC = Path(__file__).resolve().parents[1] / "docs" / "tables.md"


def documented_columns() -> set[str]:
    """The column names in the first cell of each row of the page's column tables."""
    names = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Za-z0-9_]+)`", line.split("|")[1]))
    return names


def written_columns(loaded) -> dict[str, list[str]]:
    """The columns of a result table tuned on each target family (no rows: the shard after the
    last row), as the code writes them."""
    v = loaded.vocab_size
    vanilla = vanilla_targets(v, EntropyGrid(step=4.0, unit="bits"), VanillaSettings(per_level=1))
    pos = pl.DataFrame({"token_id": list(range(v)), "pos": ["NOUN"] * v, "kept": [True] * v})
    families = {
        "vanilla": vanilla,
        "outlier": outlier_targets(v, [2.0], "bits", OutlierSettings(ks=(1,), per_level=1)),
        "lm": lm_generated(loaded, 1, 3, "bits"),
        "shuffled": shuffled(vanilla, 1),
        "migrated": migrate(vanilla, np.arange(v), np.arange(v), v, "other"),
        "pos": pos_uniform_targets(pos, v, ["NOUN"], 5, 1, "bits"),
    }
    out = {}
    for name, table in families.items():
        meta, probs = target_probs(table, v)
        n = meta.num_rows
        result = tune_rows(loaded, meta, probs, experiment="e", method="soft", tuning=tuning_config({"max_steps": 1}),
                           inits=1, shard=n, n_shards=n + 1)
        out[name] = result.column_names
    return out


def test_every_result_column_is_documented_and_every_documented_one_is_written(tiny_llama):
    written = written_columns(tiny_llama)
    documented = documented_columns()
    for family, columns in written.items():
        missing = [c for c in columns if c not in documented]
        assert not missing, f"docs/tables.md does not document {missing} (written for {family} targets)"
    every = {c for columns in written.values() for c in columns}
    assert documented <= every, f"docs/tables.md documents {sorted(documented - every)}, which no result table has"
