"""How many rows of a tuning step fit in the memory a CPU run has.

On a GPU the engine halves a batch that runs out of memory (:func:`distreach.engine._halving_on_oom`);
on a CPU an allocation past the memory there is does not fail in Python: the kernel's OOM killer (or
a Slurm job's memory limit) ends the process. So before a CPU tuning starts, :func:`rows_that_fit`
measures what one row of its step keeps for the backward pass (the tensors autograd saves, counted
by storage, in a forward pass of one and of two rows) and compares it with the memory free to this
process (:func:`free_bytes`: the machine's available memory, or less where a cgroup, as Slurm sets
one per job, caps it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# the share of the free memory a batch plans to use: the backward pass's gradients, the optimiser's
# moments and the allocator's fragmentation come on top of what the forward pass saves
HEADROOM = 0.6
# what one row holds besides its step's saved tensors, in |V|-sized fp32 arrays: its target and the
# target's logarithm (kept for the batch), its gradient to log q and the KL's terms during a step
PER_ROW_VOCAB_ARRAYS = 6


def free_bytes() -> int | None:
    """The memory this process may still allocate: the machine's MemAvailable, capped by its
    cgroup's limit less its usage (cgroup v2, or v1) where one is set; None where neither is known."""
    free = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage, stat, reclaimable in _cgroup_files():
        try:
            cap = limit.read_text().strip()
            if cap == "max" or int(cap) >= 1 << 60:  # no limit (v1 writes a huge number)
                continue
            used = int(usage.read_text().strip())
            # the usage counts the page cache of files read (a model's weights); its inactive part is
            # reclaimed before the limit bites
            free.append(int(cap) - used + _stat(stat).get(reclaimable, 0))
        except (OSError, ValueError):
            continue
    return max(0, min(free)) if free else None


def _stat(path: Path) -> dict[str, int]:
    """A cgroup's memory.stat (``key value`` lines); empty where it cannot be read."""
    try:
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines() if line.count(" ") == 1)}
    except (OSError, ValueError):
        return {}


def _cgroup_files() -> list[tuple[Path, Path, Path, str]]:
    """(limit, usage, stat file, its key of reclaimable page cache) of this process's memory
    cgroup, v2 and v1."""
    out = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            base = Path("/sys/fs/cgroup") / path
            out.append((base / "memory.max", base / "memory.current", base / "memory.stat", "inactive_file"))
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path
            out.append((base / "memory.limit_in_bytes", base / "memory.usage_in_bytes", base / "memory.stat",
                        "total_inactive_file"))
    return out


def saved_bytes(forward, params) -> int:
    """Bytes of the tensors autograd saves for the backward pass while ``forward()`` runs, each
    storage counted once, the model's own parameters (``params``) left out."""
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


def rows_that_fit(step_forward, params, vocab: int, wanted: int, where: str, extra_per_row: int = 0) -> int:
    """How many of ``wanted`` rows a CPU batch may hold: ``step_forward(n)`` runs the step's
    forward pass for n rows (its result is dropped); ``extra_per_row`` bytes a row's step takes
    besides. Fewer than ``wanted`` only where the free memory is short (a message says so); a
    :class:`DistreachError` naming ``where`` where not even one row fits."""
    from .errors import DistreachError

    free = free_bytes()
    if free is None or wanted < 1:
        return wanted
    params = list(params)
    one = saved_bytes(lambda: step_forward(1), params)
    two = saved_bytes(lambda: step_forward(2), params) if wanted > 1 else 2 * one  # one row: all of it counts
    per_row = max(two - one, 1) + PER_ROW_VOCAB_ARRAYS * 4 * vocab + extra_per_row
    fit = int(HEADROOM * free // per_row)
    if fit < 1:
        raise DistreachError(
            f"{where}: one row's step needs about {per_row / 2**30:.2f} GiB and this process has "
            f"{free / 2**30:.2f} GiB free: use a shorter prompt, a smaller model or a GPU"
        )
    if fit < wanted:
        log.warning("%s: a batch of %d rows needs about %.1f GiB and %.1f GiB are free: batches of %d rows",
                    where, wanted, wanted * per_row / 2**30, free / 2**30, fit)
    return min(fit, wanted)
