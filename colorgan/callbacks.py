"""Callbacks that make a fit a resumable run: checkpoints, sample grids, and a faithful history after --resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastcore.foundation import L

from .artifacts import _unwrap, save_generator
from .distributed import is_main_process
from .show import sample_grid
from .utils import ColorganError, atomic_path

__all__ = ["RunCheckpoint", "ReplayHistory", "load_checkpoint", "LAST", "BEST"]

LAST, BEST = Path("checkpoints/last.pth"), Path("checkpoints/best.pth")


def _plain(obj):
    "Numbers from schedulers can be numpy scalars; make a structure that `torch.load(weights_only=True)` reads."
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, L)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return obj


class RunCheckpoint(Callback):
    """After each finished epoch, on rank 0 only: the resume state (`checkpoints/last.pth`: model, optimizer,
    history, and whatever other callbacks add through `checkpoint_state`), the generator artefact with the best
    validation loss so far (`checkpoints/best.pth`) and a sample grid (`samples/epoch_NNN.png`), all atomic."""
    order = 65  # after the Recorder has the epoch's numbers

    def __init__(self, run: str | Path, meta: dict, best: float = float("inf"), n_samples: int = 8):
        self.run, self.meta, self.best, self.n_samples = Path(run), meta, best, n_samples

    def before_fit(self): self.sample = None
    def before_epoch(self): self.skipped = False
    def after_cancel_epoch(self): self.skipped = True

    def after_epoch(self):
        if self.skipped or not is_main_process():
            return
        valid_loss = self.recorder.final_record[1] if len(self.recorder.final_record) > 1 else None
        if valid_loss is not None and valid_loss < self.best:
            self.best = valid_loss
            save_generator(self.model, self.run / BEST, self.meta)
        self._save_last()  # after `best` is updated, so a resumed run compares with this epoch too
        self._save_samples()

    def _save_last(self):
        state = {"epoch": self.epoch + 1, "best": self.best, "history": _plain(self.recorder.values),
                 "model": _unwrap(self.model).state_dict(), "opt": _plain(self.opt.state_dict())}
        for cb in self.learn.cbs:
            if hasattr(cb, "checkpoint_state"):
                state.update(cb.checkpoint_state())
        with atomic_path(self.run / LAST) as tmp:
            torch.save(state, tmp)

    @torch.no_grad()
    def _save_samples(self):
        if self.sample is None:  # rank 0 alone: the plain loader and model, so nothing waits on other ranks
            valid = getattr(self.dls.valid, "dl", self.dls.valid)
            self.sample = [t[:self.n_samples] for t in valid.one_batch()]
        l, ab = self.sample
        model = _unwrap(self.model)
        was_training = model.training
        model.eval()
        pred = model(l)
        model.train(was_training)
        with atomic_path(self.run / "samples" / f"epoch_{self.epoch + 1:03d}.png") as tmp:
            sample_grid(l, pred, ab).save(tmp, format="PNG")


class ReplayHistory(Callback):
    """With `fit(..., start_epoch=k)` fastai skips epochs below k; this fills their rows in the Recorder (and so
    in CSVLogger's history.csv and the progress table) with the numbers the interrupted run logged."""
    def __init__(self, history: list): self.history = history
    def after_cancel_epoch(self):
        if self.epoch < len(self.history):
            self.recorder.log = L([self.epoch, *self.history[self.epoch]])


def load_checkpoint(learn, run: str | Path) -> dict:
    "Restore model and optimizer from `run/checkpoints/last.pth`; return the whole state for other callbacks."
    path = Path(run) / LAST
    if not path.is_file():
        raise ColorganError(f"nothing to resume in {run}: {LAST} does not exist (the run never finished an epoch)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    _unwrap(learn.model).load_state_dict(state["model"])
    learn.create_opt()
    learn.opt.load_state_dict(state["opt"])
    return state
