"""Train for a stated time: `--minutes N` (`fit.minutes`) sizes the whole schedule to a wall-clock budget.

Before the fit, a few training batches are timed (on a copy of the state that is then put back: the probe
changes nothing), one validation pass and one checkpoint write too; `plan_budget` turns those into a number of
epochs and of batches per epoch so that the schedule, validation and checkpoints included, ends within the budget.
The plan is written into the resolved recipe (`fit.n_epoch`, `data.epoch_batches`), so `--resume` continues the
same schedule with what is left of it, and every rank follows rank 0's plan.
"""
from __future__ import annotations

import copy
import io
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from fastai.callback.core import Callback, CancelFitException

from .artifacts import _unwrap
from .distributed import broadcast_object
from .utils import log

__all__ = ["Plan", "plan_budget", "measure", "fit_to_budget", "BudgetClock", "clock"]

clock = time.perf_counter  # the one clock of this module: tests replace it, so no test sleeps
MAX_EPOCHS = 50            # validation and a checkpoint this often at most, however long the budget
PROBE_BATCHES = 6          # timed training batches; the first two warm the kernels up and are not counted
MARGIN = 0.93              # of what is left, what the plan fills: the grid, the logs and the progress bar are not timed


@dataclass
class Plan:
    "A budget turned into a schedule, with the measurements it came from (seconds)."
    minutes: float
    n_epoch: int
    epoch_batches: int
    step_s: float
    valid_s: float
    save_s: float
    spent_s: float = 0.0  # already gone when the plan was made: loading photos, building nets, the timing itself
    fixed_epochs: bool = False  # the recipe set the epoch length (how often to validate): only the count is sized

    @property
    def planned_s(self) -> float:
        return self.n_epoch * (self.epoch_batches * self.step_s + self.valid_s + self.save_s)


def plan_budget(minutes: float, step_s: float, valid_s: float, save_s: float, natural_batches: int,
                spent_s: float = 0.0, epoch_batches: int | None = None) -> Plan:
    """The schedule that fits `minutes` (less `spent_s`, already gone, and a margin). With `epoch_batches` (the
    recipe's: how often to validate) only the number of epochs is sized. Otherwise: whole epochs of the photos
    (`natural_batches` each) while they fit, about one validation per natural epoch and at most MAX_EPOCHS; a
    budget shorter than an epoch still validates up to 3 times, with validation and checkpoints taking at most a
    quarter of it; batches per epoch fill what is left."""
    budget, overhead = max(minutes * 60 - spent_s, step_s) * MARGIN, valid_s + save_s
    if epoch_batches:
        n_epoch = max(1, int(budget // (epoch_batches * step_s + overhead)))
        return Plan(minutes, n_epoch, epoch_batches, step_s, valid_s, save_s, spent_s, fixed_epochs=True)
    full_epoch = natural_batches * step_s + overhead
    if budget >= full_epoch:
        n_epoch = min(MAX_EPOCHS, int(budget // full_epoch))
    else:
        n_epoch = max(1, min(3, int(budget / 4 // max(overhead, 1e-9))))
    batches = int((budget / n_epoch - overhead) // step_s)
    return Plan(minutes, n_epoch, max(1, batches), step_s, valid_s, save_s, spent_s)


class _Probe(Callback):
    """Times `n` training batches, each from the end of the one before (the first from its start), so that fetching
    and augmenting a batch counts: timing the step alone left that out, and a 14-minute CPU budget took 16.2. Then
    ends the fit; the colorgan callbacks with state step aside (`probing`)."""
    order = 100

    def __init__(self, n: int):
        self.n, self.times, self.last = n, [], None

    def before_batch(self):
        if self.last is None:
            self.last = clock()

    def after_batch(self):
        if self.training:
            now = clock()
            self.times.append(now - self.last)
            self.last = now
            if len(self.times) >= self.n:
                raise CancelFitException


def _step_s(learn, saved: dict, frozen_body: bool) -> float:
    "Seconds per training batch: a few real steps at a learning rate of 0, with the body frozen or not."
    learn.budget_probe = probe = _Probe(PROBE_BATCHES)
    body = list(learn.splitter(_unwrap(learn.model))[0]) if frozen_body else []  # group 0: the encoder
    trainable = [p.requires_grad for p in body]
    try:
        for p in body:
            p.requires_grad_(False)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, lr=0.0, cbs=[probe])
    finally:
        for p, t in zip(body, trainable):
            p.requires_grad_(t)
        del learn.budget_probe
        _restore(learn, saved)
    return statistics.median(probe.times[2:] or probe.times)  # the first batches warm kernels and caches up


def measure(learn, freeze_pct: float = 0.0) -> tuple[float, float, float]:
    """(seconds per training batch, per validation pass, per checkpoint write) of this Learner as it will train:
    a few real steps (its callbacks included: the critic's steps in stage two) at a learning rate of 0, after
    which the model's, optimizer's and callbacks' state is put back as it was. With the body frozen for
    `freeze_pct` of the schedule (`FreezeBody`), steps are timed both ways and weighed by it."""
    saved = _snapshot(learn)
    step_s = _step_s(learn, saved, False) if freeze_pct < 1 else 0.0
    if freeze_pct:
        step_s = (1 - freeze_pct) * step_s + freeze_pct * _step_s(learn, saved, True)
    start = clock()
    with learn.no_bar():
        learn.validate()
    valid_s = clock() - start
    start = clock()
    torch.save({"model": _unwrap(learn.model).state_dict(), **saved["callbacks"]}, io.BytesIO())
    return step_s, valid_s, 4 * (clock() - start)  # last.pth (the model, Adam's two moments) and best.pth


def _snapshot(learn) -> dict:
    "What a few training steps change: the weights (BatchNorm's statistics), the optimizer, callbacks' own state."
    return {"model": copy.deepcopy(_unwrap(learn.model).state_dict()), "opt": learn.opt,
            "opt_state": copy.deepcopy(learn.opt.state_dict()) if learn.opt is not None else None,
            "callbacks": {k: v for cb in learn.cbs if hasattr(cb, "checkpoint_state")
                          for k, v in copy.deepcopy(cb.checkpoint_state()).items()}}


def _restore(learn, saved: dict) -> None:
    _unwrap(learn.model).load_state_dict(saved["model"])
    learn.opt = saved["opt"]  # None when the fit made the optimizer: the real fit makes a fresh one
    if learn.opt is not None:
        learn.opt.load_state_dict(saved["opt_state"])
    for cb in learn.cbs:
        if hasattr(cb, "load_checkpoint_state"):
            cb.load_checkpoint_state(saved["callbacks"])


def fit_to_budget(learn, minutes: float, started: float, freeze_pct: float = 0.0) -> Plan:
    """Measure on every rank (validation all-reduces its metrics and stage two puts the critic in DDP: collectives
    that every rank must join), plan what is left of `minutes` since `started` (a `clock()` reading) from rank 0's
    measurements, and give every rank that plan; the training loader gets its epoch length."""
    natural = max(1, len(learn.dls.train.dataset) // learn.dls.train.bs)
    measured = measure(learn, freeze_pct)
    plan = plan_budget(minutes, *measured, natural_batches=natural, spent_s=clock() - started,
                       epoch_batches=learn.dls.train.epoch_batches)
    plan = Plan(**broadcast_object(asdict(plan)))
    learn.dls.train.epoch_batches = plan.epoch_batches
    log.info(f"{minutes:g} minutes: {plan.spent_s / 60:.1f} gone to setting up, then {plan.n_epoch} epoch(s) of "
             f"{plan.epoch_batches} batches ({plan.step_s:.2f} s each, validation {plan.valid_s:.1f} s, checkpoints "
             f"{plan.save_s:.1f} s an epoch): planned {(plan.spent_s + plan.planned_s) / 60:.1f} minutes")
    return plan


class BudgetClock(Callback):
    """Shows the time left of the budget beside the epoch bar and in the log, and at the end the planned and actual
    minutes (the actual ones counting from this fit's start: a resumed run counts what it adds). After the first
    epoch of a new run whose plan sized the epochs, the rest are resized to what that epoch really took (`replan`):
    a few timed batches misjudge a machine whose speed drifts, a whole epoch much less. Every epoch stays
    1/n_epoch of the one-cycle schedule (fastai's `pct_train`), so only the budget's use changes; the resolved
    recipe keeps the first plan, which `--resume` follows."""
    order = 70

    def __init__(self, plan: Plan, resumed: bool = False):
        self.plan, self.resumed = plan, resumed

    def before_fit(self): self.start = clock() - (0.0 if self.resumed else self.plan.spent_s)
    def before_train(self): self.train_start = clock()
    def after_train(self): self.train_s, self.train_batches = clock() - self.train_start, self.n_iter

    def after_epoch(self):
        if self.epoch == 0 and not (self.resumed or self.plan.fixed_epochs) and self.n_epoch > 1:
            self.replan()
        used = (clock() - self.start) / 60
        left = max(0.0, self.plan.minutes - used)
        if getattr(self.learn, "progress", None) is not None and getattr(self.learn.progress, "mbar", None):
            self.learn.progress.mbar.main_bar.comment = f"{left:.1f} of {self.plan.minutes:g} min left"
        log.info(f"epoch {self.epoch + 1}/{self.plan.n_epoch}: {used:.1f} min so far, about {left:.1f} min left")

    def replan(self) -> None:
        "The remaining epochs' length from the first one's: its seconds a batch, and the rest of it (validation...)."
        now, step_s = clock(), self.train_s / max(1, self.train_batches)
        rest_s = max(0.0, now - self.train_start - self.train_s)
        left = (self.plan.minutes * 60 - (now - self.start)) * MARGIN / (self.n_epoch - 1)
        batches = broadcast_object(max(1, int((left - rest_s) // max(step_s, 1e-9))))
        dl = getattr(self.dls.train, "dl", self.dls.train)  # the loader inside DDP's wrapper, as fit_to_budget set it
        planned = getattr(dl, "epoch_batches", None)
        if planned and abs(batches - planned) > 0.05 * planned:
            log.info(f"the first epoch ran at {step_s:.2f} s a batch, not the planned {self.plan.step_s:.2f}: the "
                     f"remaining {self.n_epoch - 1} epochs get {batches} batches each, not {planned}")
            dl.epoch_batches = batches

    def after_fit(self):
        actual = (clock() - self.start) / 60
        planned = (self.plan.spent_s + self.plan.planned_s) / 60
        log.info(f"budget {self.plan.minutes:g} min: planned {planned:.1f}, took {actual:.1f}")
