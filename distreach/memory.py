"""How many rows of a tuning step fit in the memory a CPU run has (Linux; elsewhere no check).

On a GPU the engine halves a batch that runs out of memory (:func:`distreach.engine._halving_on_oom`);
on a CPU an allocation past the memory there is does not fail in Python: the kernel's OOM killer (or
a Slurm job's memory limit) ends the process. So before a CPU tuning starts, :func:`rows_that_fit`
estimates what a batch of its rows takes: the tensors autograd saves for the backward pass in a
forward pass of one and of two rows (measured, :func:`saved_bytes`), |V|-sized arrays per row, and
what the batch's own step holds besides (its candidates' scoring: ``scratch_bytes`` of the engine's
batches); and compares it with the memory free to this process (:func:`free_bytes`: the machine's
available memory, or less where a cgroup, as Slurm sets one per job, caps it). The estimate against
measured peaks: ``benchmarks/memory_check.py``, whose recorded ratios :data:`HEADROOM` covers
(tests/test_memory.py). Each process plans for the memory free when it starts: tuning jobs started
side by side do not know of each other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# the share of the free memory a batch plans to use: the estimate leaves out the backward pass's
# gradients, transient buffers and the allocator's fragmentation (benchmarks/memory_check.py measures
# the peak against the estimate)
HEADROOM = 0.5
# what one row holds besides its step's saved tensors, in |V|-sized fp32 arrays: its target and the
# target's logarithm (kept for the batch), its gradient to log q and the KL's terms during a step
PER_ROW_VOCAB_ARRAYS = 6
# the |V|-sized fp32 arrays one candidate prompt's scoring holds at once: the model's logits and
# their fp32 copy, log q, its row's p and log p, the KL's difference and product
CANDIDATE_VOCAB_ARRAYS = 7
CGROUP = Path("/sys/fs/cgroup")


def free_bytes(proc: Path = Path("/proc"), root: Path = CGROUP) -> int | None:
    """The memory this process may still allocate: the machine's MemAvailable, capped by every
    memory cgroup above the process (cgroup v2, or v1) that sets a limit, less that cgroup's usage
    (its inactive page cache counted as free: the kernel reclaims it first); None where neither is
    known (not Linux)."""
    free = []
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage, stat, reclaimable in cgroup_levels(proc / "self" / "cgroup", root):
        try:
            cap = limit.read_text().strip()
            if cap == "max" or int(cap) >= 1 << 60:  # no limit here (v1 writes a huge number)
                continue
            free.append(int(cap) - int(usage.read_text().strip()) + _stat(stat).get(reclaimable, 0))
        except (OSError, ValueError):
            continue
    return max(0, min(free)) if free else None


def _stat(path: Path) -> dict[str, int]:
    """A cgroup's memory.stat (``key value`` lines); empty where it cannot be read."""
    try:
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines() if line.count(" ") == 1)}
    except (OSError, ValueError):
        return {}


def cgroup_levels(proc_cgroup: Path, root: Path = CGROUP) -> list[tuple[Path, Path, Path, str]]:
    """(limit, usage, stat file, its key of reclaimable page cache) of the process's memory cgroup
    and of each cgroup above it, from ``/proc/self/cgroup``: cgroup v2 (``root``) and v1
    (``root/memory``). A limit set on a parent (a Slurm job's, above its steps and tasks) binds too."""
    out = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base, files = root, ("memory.max", "memory.current", "memory.stat", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
                                            "total_inactive_file")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # the process's cgroup, then each one above it
            level = base.joinpath(*parts[:depth])
            out.append((level / files[0], level / files[1], level / files[2], files[3]))
    return out


def saved_bytes(forward, params) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``forward()`` runs, each
    storage counted once (a tensor saved by several operations, or views of one), the model's own
    parameters (``params``) left out."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(seen.values())


def estimate(step_forward, params, vocab: int, rows: int, scratch: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """(bytes per row, fixed bytes) of a batch's step: ``step_forward(n)`` runs the forward pass of
    the first n of ``rows`` rows (with one row only, all it saves counts per row); ``scratch`` the
    step's other memory (per row, fixed)."""
    params = list(params)
    one = saved_bytes(lambda: step_forward(1), params)
    two = saved_bytes(lambda: step_forward(2), params) if rows > 1 else 2 * one
    return max(two - one, 1) + PER_ROW_VOCAB_ARRAYS * 4 * vocab + scratch[0], scratch[1]


def rows_that_fit(step_forward, params, vocab: int, rows: int, wanted: int, where: str,
                  scratch: tuple[int, int] = (0, 0)) -> int:
    """How many of ``wanted`` rows a CPU batch may hold (arguments as :func:`estimate`'s). Fewer
    than ``wanted`` only where the free memory is short (a message says so); a
    :class:`DistreachError` naming ``where`` where not even one row fits."""
    from .errors import DistreachError

    if wanted < 1 or free_bytes() is None:
        return wanted
    per_row, fixed = estimate(step_forward, params, vocab, rows, scratch)
    free = free_bytes()  # after the probe's forward passes have read the weights in
    fit = int((HEADROOM * free - fixed) // per_row)
    if fit < 1:
        raise DistreachError(
            f"{where}: a batch of one row needs about {(per_row + fixed) / HEADROOM / 2**30:.2f} GiB free "
            f"(with headroom) and this process has {free / 2**30:.2f} GiB: free memory, or use a smaller model or a GPU"
        )
    if fit < wanted:
        log.warning("%s: a batch of %d rows needs about %.2f GiB free (with headroom) and %.2f GiB are: batches of %d rows",
                    where, wanted, (wanted * per_row + fixed) / HEADROOM / 2**30, free / 2**30, fit)
    return min(fit, wanted)
