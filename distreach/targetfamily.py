"""The targets of one configured target family (the config's ``targets.<name>``) over the
vocabulary of a materialised model: reads the model's manifest (the LM-generated family loads
the model), its vocabulary table where the family needs token text or usable tokens, and the
file the family derives from, then makes the targets with :mod:`distreach.vanilla` or
:mod:`distreach.families`."""

from __future__ import annotations

import pyarrow as pa

from .errors import DistreachError
from .families import (DEFAULT_POS_TAGS, LM_PROMPT_LEN, LM_PROMPTS, POS_DRAWS, POS_TOKENS, SHUFFLED_COPIES,
                       OutlierSettings, lm_generated, migrate, migration_map, outlier_targets, pos_uniform_targets,
                       shuffled)
from .io import arrow_metadata, read_arrow
from .models import load_materialised, read_manifest
from .settings import DESCENT_KEYS, FAMILY_KEYS
from .targets import pad_rows
from .tokens import ids_of
from .vanilla import EntropyGrid, VanillaSettings, entropy_matched_targets, vanilla_targets
from .vocab import surface_forms, vocab_table


def _pick(settings: dict, keys) -> dict:
    return {k: settings[k] for k in keys if k in settings}


def _vocab(model_dir, path, manifest: dict):
    """The vocabulary table of a materialised model (:func:`distreach.vocab.vocab_table`): read
    from ``path`` (the workflow's ``results/vocab/<model>.arrow``), else made from the model's
    tokenizer (seconds to load for a large vocabulary)."""
    import polars as pl

    size = manifest["vocab_size"]
    if path is None:
        return vocab_table(load_materialised(model_dir, with_model=False)[0].tokenizer, size)
    table = read_arrow(path)
    of = arrow_metadata(table).get("model")
    missing = sorted({"surface", "is_byte_fallback", "is_usable"} - set(table.column_names))
    if of != manifest["name"] or missing or table.num_rows != size:
        why = ("it names no model" if of is None else f"it is model {of}'s" if of != manifest["name"]
               else f"missing {', '.join(missing)} (an older distreach's table: delete it and run again)" if missing
               else f"{table.num_rows} rows, the model has {size}")
        raise DistreachError(f"{path}: not the vocabulary table of model {manifest['name']} ({model_dir}): {why}")
    return pl.from_arrow(table)


def make_family(settings: dict, model_dir, unit: str, seed: int = 0, base=None, source_dir=None, bos: str = "auto",
                vocab_file=None, source_vocab_file=None) -> pa.Table:
    """The targets of one configured family (``settings`` as in the config's ``targets.<name>``)
    over the vocabulary of the materialised model in ``model_dir``: probabilities over its
    |V| tokens, zero on output rows past them (:mod:`distreach.tokens`).

    ``base`` is the target file a matched, shuffled or migrated family derives from (for
    migrated: the source model's; for pos: the model's POS table), ``source_dir`` the source
    model's folder; ``bos`` the tuning's BOS policy (LM-generated targets use the family's
    ``bos`` setting if it has one, else this). ``vocab_file`` and ``source_vocab_file`` are the
    model's and the source model's vocabulary tables (:func:`distreach.models.write_vocab`), from
    which the families that need token text or the usable tokens read them; without them the
    tokenizers are loaded."""
    kind = settings.get("kind", "vanilla")
    manifest = read_manifest(model_dir)
    if kind == "lm":
        # the usable tokens from the vocabulary table, the BOS token from the manifest: the
        # tokenizer is not loaded
        usable = None if vocab_file is None else _vocab(model_dir, vocab_file, manifest)["is_usable"].to_numpy()
        loaded = load_materialised(model_dir, dtype="fp32", with_tokenizer=usable is None)[0]
        n, prompt_len = settings.get("n", LM_PROMPTS), settings.get("prompt_len", LM_PROMPT_LEN)
        return lm_generated(loaded, n, prompt_len, unit, seed, bos=settings.get("bos", bos), usable=usable)
    n_rows = manifest["vocab_size"]
    support = manifest["vocab_support"]  # |V|: most families need no tokenizer (seconds to load)
    grid = EntropyGrid(unit=unit, **settings.get("grid", {}))
    if kind == "vanilla":
        vs = VanillaSettings(seed=seed, **_pick(settings, ("per_level", *DESCENT_KEYS)))
        return pad_rows(vanilla_targets(support, grid, vs), n_rows)
    if kind == "outlier":
        keys = set(FAMILY_KEYS["outlier"]) - {"grid", "ks"}
        os_ = OutlierSettings(seed=seed, **_pick(settings, keys), **({"ks": tuple(settings["ks"])} if "ks" in settings else {}))
        pool = ids_of(_vocab(model_dir, vocab_file, manifest)["is_usable"].to_numpy()[:support])
        return pad_rows(outlier_targets(support, grid.levels(support), unit, os_, pool), n_rows)
    if kind == "pos":
        import polars as pl

        tags = list(settings.get("tags", DEFAULT_POS_TAGS))
        pos = pl.from_arrow(read_arrow(base))
        n_tokens, draws = settings.get("n_tokens", POS_TOKENS), settings.get("draws", POS_DRAWS)
        usable = _vocab(model_dir, vocab_file, manifest)["is_usable"].to_numpy()
        return pos_uniform_targets(pos, n_rows, tags, n_tokens, draws, unit, seed, usable=usable)
    table = read_arrow(base)
    if kind == "matched":
        vs = VanillaSettings(seed=seed, **_pick(settings, DESCENT_KEYS))
        ent = table.column("achieved_entropy").to_pylist()
        ids = [f"matched-{t}" for t in table.column("target_id").to_pylist()]
        made = pad_rows(entropy_matched_targets(support, ent, ids, unit, vs, kind="matched"), n_rows)
        return made.append_column("source_target_id", table.column("target_id"))
    if kind == "shuffled":
        return shuffled(table, settings.get("copies", SHUFFLED_COPIES), seed, support)
    if kind == "migrated":
        src = read_manifest(source_dir)
        src_ids, dst_ids = migration_map(
            surface_forms(_vocab(source_dir, source_vocab_file, src)), surface_forms(_vocab(model_dir, vocab_file, manifest))
        )
        return migrate(table, src_ids, dst_ids, n_rows, src["name"])
    raise DistreachError(f"target kind {kind!r} is not known")
