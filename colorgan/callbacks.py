"""Callbacks that make a fit a resumable run: checkpoints kept by a stated rule, sample grids, an exponential moving
average of the generator, and a faithful history after --resume."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import TrackerCallback
from fastcore.foundation import L
from PIL import Image

from .artifacts import _unwrap, save_generator
from .distributed import all_reduce_sum, is_main_process
from .show import sample_grid
from .utils import ColorganError, atomic_path, log

__all__ = ["RunCheckpoint", "ReplayHistory", "GeneratorEMA", "LowestLoss", "ColourRule", "StopOnNaN", "EpochLines",
           "wants_bar",
           "load_checkpoint", "tensorboard_callback", "LAST", "BEST"]

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


class LowestLoss:
    "Stage one's rule for `best`: the lowest validation L1."
    def judge(self, record: dict) -> tuple[float | None, str]:
        loss = record.get("valid_loss")
        return loss, f"valid_loss {loss:.4f}" if loss is not None else "no validation loss"


class ColourRule:
    """Stage two's rule for `best`: among the generators whose validation PSNR is within `max_psnr_drop` dB of the
    generator the stage started from (`start`, a validation record), whose false-colour area is at most
    `max_false_color` and (when `max_wrong_hue` is set) whose wrong-hue area is at most that, the one whose
    colourfulness is closest to the real photos' (smallest delta-colourfulness)."""
    def __init__(self, start: dict, max_psnr_drop: float = 0.5, max_false_color: float = 0.02,
                 max_wrong_hue: float | None = None):
        self.start, self.max_psnr_drop, self.max_false_color = dict(start), max_psnr_drop, max_false_color
        self.max_wrong_hue = max_wrong_hue

    def judge(self, record: dict) -> tuple[float | None, str]:
        psnr, floor, fc = record["psnr"], self.start["psnr"] - self.max_psnr_drop, record["false_color"]
        hue = record.get("wrong_hue")  # absent from the histories of runs before it was measured
        delta_cf = abs(record["colorfulness_real"] - record["colorfulness"])
        facts = f"delta-colourfulness {delta_cf:.2f}, PSNR {psnr:.2f} dB, false colour {fc:.2%}" \
                + (f", wrong hue {hue:.2%}" if hue is not None else "")
        if not psnr >= floor:  # `not >=`: a NaN PSNR is never eligible
            return None, f"{facts}: PSNR below the floor {floor:.2f} dB (start {self.start['psnr']:.2f} - " \
                         f"{self.max_psnr_drop})"
        if not fc <= self.max_false_color:
            return None, f"{facts}: false colour above {self.max_false_color:.0%}"
        if self.max_wrong_hue is not None and not (hue is not None and hue <= self.max_wrong_hue):
            return None, f"{facts}: wrong hue above {self.max_wrong_hue:.1%}"
        return delta_cf, facts


def epoch_record(recorder) -> dict:
    "The epoch's numbers by name: train_loss, valid_loss and every metric."
    return dict(zip(recorder.metric_names[1:], recorder.final_record))


class RunCheckpoint(TrackerCallback):
    """The run folder's one owner (the Learner's `path`): after each finished epoch, on rank 0 only, the resume
    state (`checkpoints/last.pth`: model, optimizer, history, and whatever other callbacks add through
    `checkpoint_state`), the generator that `rule` (lowest `valid_loss` unless told) likes best so far
    (`checkpoints/best.pth`, with the reason logged) and a sample grid (`samples/epoch_NNN.png`), all atomic.
    A fastai TrackerCallback: it checks that the monitored column exists, steps aside under `lr_find` and
    `get_preds`, keeps its best across fits (`reset_on_fit=False`) and can be reused for another fit."""
    order = 65  # after the Recorder has the epoch's numbers

    def __init__(self, meta: dict, best: float = float("inf"), n_samples: int = 8, rule=None,
                 monitor: str = "valid_loss"):
        super().__init__(monitor=monitor, comp=np.less, reset_on_fit=False)
        self.meta, self.best, self.n_samples, self.rule = meta, best, n_samples, rule or LowestLoss()

    @property
    def folder(self) -> Path: return Path(self.learn.path)

    def before_fit(self):
        super().before_fit()
        self.sample = None

    def before_epoch(self): self.skipped = False
    def after_cancel_epoch(self): self.skipped = True

    def after_epoch(self):
        if self.skipped or not is_main_process():
            return
        score, why = self.rule.judge(epoch_record(self.recorder))
        self.new_best = score is not None and score < self.best
        if self.new_best:
            self.best = score
            save_generator(self.model, self.folder / BEST, self.meta)
            log.info(f"epoch {self.epoch + 1}: kept as {BEST} ({why})")
        elif not isinstance(self.rule, LowestLoss):
            log.info(f"epoch {self.epoch + 1}: not kept ({why}{'' if score is None else '; best so far is closer'})")
        self._save_last()  # after `best` is updated, so a resumed run compares with this epoch too
        self._save_samples()

    def restore(self, learn, cbs=()) -> tuple[int, Callback]:
        """The other half of `_save_last`, for --resume: model, optimizer, this tracker's best and the own state of
        every callback of the Learner's and of `cbs` (the fit's: `load_checkpoint_state`) from
        `checkpoints/last.pth`; returns (epochs done, the history replay)."""
        state = load_checkpoint(learn, learn.path)
        self.best = state["best"]
        for cb in [*learn.cbs, *cbs]:
            if hasattr(cb, "load_checkpoint_state"):
                cb.load_checkpoint_state(state)
        return state["epoch"], ReplayHistory(state["history"])

    def _save_last(self):
        state = {"epoch": self.epoch + 1, "best": self.best, "history": _plain(self.recorder.values),
                 "model": _unwrap(self.model).state_dict(), "opt": _plain(self.opt.state_dict())}
        for cb in self.learn.cbs:
            if hasattr(cb, "checkpoint_state"):
                state.update(cb.checkpoint_state())
        with atomic_path(self.folder / LAST) as tmp:
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
        with atomic_path(self.folder / "samples" / f"epoch_{self.epoch + 1:03d}.png") as tmp:
            sample_grid(l, pred, ab, caption=f"epoch {self.epoch + 1}").save(tmp, format="PNG")


def probing(learn) -> bool:
    """Whether the fit under way only probes (`lr_find`, `get_preds`, the budget's timing): callbacks with state of
    their own step aside."""
    return hasattr(learn, "lr_finder") or hasattr(learn, "gather_preds") or hasattr(learn, "budget_probe")


class StopOnNaN(Callback):
    """fastai's TerminateOnNaN, with the reason kept: the fit is cancelled at the first loss that is NaN or infinite,
    a training batch's or an epoch's validation loss, before any checkpoint of the broken weights (so --resume never
    starts from them), and `diverged` says where (the run then raises it). Under several processes the check is
    reduced across ranks, so all of them cancel at the same batch."""
    order = -9  # before the recorder and the checkpoints

    def before_fit(self):
        self.diverged = None

    def after_batch(self):
        if not self.training or probing(self.learn):
            return
        here = not bool(torch.isfinite(self.learn.loss).all())
        if all_reduce_sum(float(here)) > 0:  # every rank cancels together, or the others wait in the next all-reduce
            lr = self.opt.hypers[-1]["lr"]
            loss = self.learn.loss.item() if here else "not finite on another process"
            self.diverged = (f"the loss became {loss} at epoch {self.epoch + 1}, batch "
                             f"{self.iter + 1} (learning rate {lr:.2e}): training diverged; nothing of this epoch was "
                             f"saved. Lower fit.lr_max and start again, or --resume from the last good epoch")
            raise CancelFitException

    def after_epoch(self):  # before the Recorder (50) and RunCheckpoint (65): this epoch is not recorded or saved
        names, log = list(self.recorder.metric_names), list(self.recorder.log)  # log: epoch, train_loss, valid_loss..
        at = names.index("valid_loss") if "valid_loss" in names else len(log)
        loss = log[at] if at < len(log) else None
        here = isinstance(loss, float) and not math.isfinite(loss)
        if not probing(self.learn) and all_reduce_sum(float(here)) > 0:  # every rank, as in `after_batch`
            self.diverged = (f"the validation loss became {loss} at epoch {self.epoch + 1}: the generator's outputs "
                             f"are not finite (training diverged; nothing of this epoch was saved). Lower fit.lr_max "
                             f"and start again, or --resume from the last good epoch")
            raise CancelFitException


class GeneratorEMA(Callback):
    """An exponential moving average of the generator's weights (`decay` per optimizer step, with the usual
    warm-up `min(decay, (1 + n) / (10 + n))` so a short run is not dominated by its start). The averaged weights
    are swapped in for validation and stay in through `after_epoch`, so metrics, sample grids and checkpoints all
    see them, and they are what the model holds after the fit; the raw weights are kept aside, so the next fit
    trains them on. Steps aside under `lr_find`."""
    order = 64  # swaps in before RunCheckpoint (65) reads the model

    def __init__(self, decay: float):
        self.decay, self.shadow, self.raw, self.n_updates = decay, None, None, 0

    def before_fit(self):
        self.run = not probing(self.learn)
        if self.run and self.shadow is None:
            self.shadow = [t.detach().clone() for t in self._tensors()]

    def _tensors(self) -> list[torch.Tensor]: return list(_unwrap(self.model).state_dict().values())

    @torch.no_grad()
    def after_step(self):
        self.n_updates += 1
        decay = min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))
        pairs = list(zip(self.shadow, self._tensors()))
        floats = [(s, t) for s, t in pairs if t.is_floating_point()]
        torch._foreach_lerp_([s for s, _ in floats], [t for _, t in floats], 1 - decay)
        for s, t in pairs:
            if not t.is_floating_point():
                s.copy_(t)  # BatchNorm's batch counters follow the live model

    def before_validate(self): self._swap_in()
    def before_train(self): self._swap_out()  # the raw weights train on, in this fit and the next (fit(1); fit(1))

    def __getstate__(self) -> dict:
        "Pickled (fastai's `export`) without the average and the raw copy: the model already holds the average."
        return {**self.__dict__, "shadow": None, "raw": None}

    @torch.no_grad()
    def _swap_in(self):
        if self.raw is None:
            self.raw = [t.detach().clone() for t in self._tensors()]
            torch._foreach_copy_(self._tensors(), self.shadow)

    @torch.no_grad()
    def _swap_out(self):
        if self.raw is not None:
            torch._foreach_copy_(self._tensors(), self.raw)
            self.raw = None

    def checkpoint_state(self) -> dict:
        """Any time: before the first fit there is no average yet, and nothing to save. While the model holds the
        average (from validation to the end of the epoch, when checkpoints are written) it is saved with the model
        and only the raw weights here, so last.pth holds the generator twice, not three times."""
        if self.shadow is None:
            return {}
        if self.raw is not None:
            return {"ema_raw": [t.cpu() for t in self.raw], "ema_updates": self.n_updates}
        return {"ema": [t.cpu() for t in self.shadow], "ema_raw": [t.cpu() for t in self._tensors()],
                "ema_updates": self.n_updates}

    @torch.no_grad()
    def load_checkpoint_state(self, state: dict):
        "The checkpoint's model holds the averaged weights (saved after validation), unless it says otherwise."
        if "ema_raw" not in state:
            return
        average = state["ema"] if "ema" in state else [t.detach().clone() for t in self._tensors()]
        self.shadow = [s.to(t.device) for s, t in zip(average, self._tensors())]
        torch._foreach_copy_(self._tensors(), [r.to(t.device) for r, t in zip(state["ema_raw"], self._tensors())])
        self.raw, self.n_updates = None, state["ema_updates"]


class ReplayHistory(Callback):
    """With `fit(..., start_epoch=k)` fastai skips epochs below k; this fills their rows in the Recorder (and so
    in CSVLogger's history.csv and the progress table) with the numbers the interrupted run logged."""
    def __init__(self, history: list): self.history = history
    def after_cancel_epoch(self):
        if self.epoch < len(self.history):
            self.recorder.log = L([self.epoch, *self.history[self.epoch]])


class EpochLines(Callback):
    """A line a finished epoch in the log (`epoch 3/12: train_loss 0.0841, valid_loss 0.0822, psnr 24.31, ...`), in
    place of fastai's progress bar when the output is not a terminal (`wants_bar`): a run logged to a file keeps one
    line an epoch instead of every redraw of the bar."""
    order = 52  # after the Recorder (50) has the epoch's numbers

    def before_epoch(self): self.skipped = False
    def after_cancel_epoch(self): self.skipped = True

    def after_epoch(self):
        if self.skipped or not is_main_process():
            return
        values = [f"{name} {_fmt(v)}" for name, v in zip(self.recorder.metric_names[1:], self.recorder.log[1:])]
        log.info(f"epoch {self.epoch + 1}/{self.n_epoch}: " + ", ".join(values))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def wants_bar(stream=None) -> bool:
    "Whether fastai's progress bar suits the output: a terminal or a notebook, not a file or a pipe."
    from fastprogress.fastprogress import IN_NOTEBOOK
    stream = stream or sys.stdout
    return IN_NOTEBOOK or bool(getattr(stream, "isatty", lambda: False)())


def load_checkpoint(learn, run: str | Path) -> dict:
    "Restore model and optimizer from `run/checkpoints/last.pth`; return the whole state for other callbacks."
    path = Path(run) / LAST
    if not path.is_file():
        raise ColorganError(f"nothing to resume in {run}: {LAST} does not exist (the run never finished an epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  a truncated or damaged file: torch's errors vary (OSError, RuntimeError)
        raise ColorganError(f"{path} is damaged ({type(e).__name__}: {e}): the run cannot be resumed from it; start "
                            f"it again with --overwrite ({BEST} and generator.pth, where present, hold generators "
                            f"that colorize)") from None
    if not isinstance(state, dict) or not {"model", "opt", "epoch"} <= state.keys():
        raise ColorganError(f"{path} is not a colorgan checkpoint: start the run again with --overwrite")
    model = _unwrap(learn.model)
    model.load_state_dict(state["model"])
    model.to(learn.dls.device)  # first: torch puts optimizer state on its parameters' device as it loads it
    learn.create_opt()
    try:
        learn.opt.load_state_dict(state["opt"])
    except (ValueError, KeyError) as e:
        raise ColorganError(f"{path} holds optimizer state of another kind (written by an older colorgan?): "
                            f"start the run again with --overwrite ({e})") from e
    return state


def tensorboard_callback(tensorboard: bool = False) -> list[Callback]:
    """The run's TensorBoard log (`log.tensorboard = true`, `--tensorboard`): losses, metrics, the learning-rate
    schedule and each epoch's sample grid under `RUN/tensorboard`; [] when off. Needs the `tensorboard` package."""
    if not tensorboard:
        return []
    try:
        from fastai.callback.tensorboard import TensorBoardCallback
    except ImportError:
        raise ColorganError("--tensorboard needs its package: pip install 'colorgan[tensorboard]'") from None

    class RunTensorBoard(TensorBoardCallback):
        "fastai's TensorBoardCallback, on a step count that goes on across --resume, with the epoch's sample grid."
        order = RunCheckpoint.order + 1  # after the grid is written

        def __init__(self):
            super().__init__(trace_model=False, log_preds=False)

        def before_fit(self):
            self.log_dir = Path(self.learn.path) / "tensorboard"
            super().before_fit()

        @property
        def step(self) -> int: return self.epoch * self.n_iter + self.iter
        def before_epoch(self): self.skipped = False
        def after_cancel_epoch(self): self.skipped = True  # an epoch a resumed run replays from its history

        def after_batch(self):
            if self.training:
                self.writer.add_scalar("train_loss", self.smooth_loss, self.step)
                for i, hypers in enumerate(self.opt.hypers):
                    for k, v in hypers.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):  # lr, mom, wd...; not flags
                            self.writer.add_scalar(f"{k}_{i}", v, self.step)

        def after_epoch(self):
            if self.skipped:
                return
            step = (self.epoch + 1) * len(self.dls.train)
            for name, value in zip(self.recorder.metric_names[2:-1], self.recorder.log[2:-1]):
                self.writer.add_scalar(name, value, step)
            grid = Path(self.learn.path) / "samples" / f"epoch_{self.epoch + 1:03d}.png"
            if grid.is_file():
                self.writer.add_image("samples", np.asarray(Image.open(grid).convert("RGB")), step, dataformats="HWC")
            self.writer.flush()
    return [RunTensorBoard()]
