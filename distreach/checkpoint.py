"""Checkpoints of a tuning run, so a killed run started again resumes where it was.

A checkpoint is one ``torch.save`` file (tensors, lists and numbers only, read back with
``weights_only=True``) holding a key and the tuning state. The key is a hash of everything
the results depend on (model, dtype, device, weights, targets, seeds, settings); a file with
another key, or one that cannot be read, is ignored with a warning and the run starts over.
Files are written atomically, so a run killed while saving leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path
from .models import attention_of
from .schema import default

log = logging.getLogger(__name__)
CHECKPOINT_SECONDS = float(default("checkpoint_seconds"))  # how often a tuning run saves its state, unless told
FORMAT = 7  # layout of the saved state and the loss it was tuned on; a checkpoint of another is not resumed


def checkpoint_path(output) -> Path:
    """Where the tuning that writes ``output`` (a result table, or a tuning job's folder) keeps
    its checkpoint: ``.<name>.ckpt`` beside it."""
    return Path(output).with_name(f".{Path(output).name}.ckpt")


def checkpoint_key(loaded, target: torch.Tensor, seeds, cfg, record_curve: bool) -> str:
    """What a checkpoint must have been made from to be resumed: model, dtype, device,
    attention implementation, targets, seeds and settings."""
    h = hashlib.sha256(f"checkpoint format {FORMAT}".encode())
    h.update(repr((loaded.name, str(loaded.embeddings.dtype), str(loaded.embeddings.device), attention_of(loaded), cfg,
                   record_curve)).encode())
    h.update(str((getattr(loaded, "manifest", None) or {}).get("weights_sha256")).encode())
    h.update(target.numpy().tobytes())
    h.update(np.asarray(seeds, dtype=np.int64).tobytes())
    return h.hexdigest()


class Checkpoint:
    """The checkpoint file of one run: ``path`` (None: no checkpoints), saved at most every
    ``seconds`` by :meth:`save_if_due` and always by :meth:`save`."""

    def __init__(self, path: str | Path | None, key: str, seconds: float = 60.0):
        self.path, self.key, self.seconds = path, key, seconds
        self.last_save = time.monotonic()

    def read(self) -> dict | None:
        """The saved state if the file exists and was made from the same inputs, else None."""
        if self.path is None or not Path(self.path).is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: start over
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            log.warning("ignoring checkpoint %s: made from other inputs or settings", self.path)
            return None
        return state

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            torch.save({"key": self.key, **state}, tmp)
        self.last_save = time.monotonic()

    def save_if_due(self, make_state) -> None:
        """Save ``make_state()`` if ``seconds`` have passed since the last save."""
        if self.path is not None and time.monotonic() - self.last_save >= self.seconds:
            self.save(make_state())
