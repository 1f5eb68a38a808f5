"""Train for a stated time: `--minutes N` (`fit.minutes`) sizes the whole schedule to a wall-clock budget.

Before the fit, a few training batches are timed (on a copy of the state that is then put back: the probe
changes nothing), one validation pass and one checkpoint write too; `plan_budget` turns those into a number of
epochs and of batches per epoch so that the schedule, validation and checkpoints included, ends within the budget.
The plan is kept in the run's `checkpoints/budget.json` (the resolved recipe keeps the budget), `BudgetClock`'s
re-plans and the time used in its `last.pth`, so `--resume` continues the same schedule with what is left of it;
every rank follows rank 0's plan.
"""
from __future__ import annotations

import copy
import io
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from fastai.callback.core import Callback, CancelFitException, CancelTrainException
from fastai.torch_core import num_distrib

from .artifacts import _unwrap
from .distributed import all_reduce_sum, broadcast_object
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
    world: int = 1  # processes training: each steps through epoch_batches / world of the loader's batches an epoch
    freeze_pct: float = 0.0  # the share of the schedule with the body frozen, whose steps cost `frozen_step_s`
    frozen_step_s: float | None = None
    thawed_step_s: float | None = None

    @property
    def steps(self) -> int:
        "Optimizer steps an epoch on each process (fastai's DistributedDL gives each rank its share of the batches)."
        return steps_of(self.epoch_batches, self.world)

    @property
    def planned_s(self) -> float:
        return self.n_epoch * (self.steps * self.step_s + self.valid_s + self.save_s)

    def step_between(self, start: float, end: float) -> float:
        """The expected seconds a step over the schedule's share [start, end): the frozen and the thawed body's steps
        weighed by how much of it is frozen; `step_s` where they were not timed apart."""
        if self.frozen_step_s is None or self.thawed_step_s is None or end <= start:
            return self.step_s
        frozen = min(1.0, max(0.0, (self.freeze_pct - start) / (end - start)))
        return frozen * self.frozen_step_s + (1 - frozen) * self.thawed_step_s


def steps_of(loader_batches: int, world: int) -> int:
    "A rank's steps an epoch when `world` processes share `loader_batches` (DistributedDL rounds up)."
    return -(-loader_batches // max(1, world))


def plan_budget(minutes: float, step_s: float, valid_s: float, save_s: float, natural_batches: int,
                spent_s: float = 0.0, epoch_batches: int | None = None, world: int = 1, **timings) -> Plan:
    """The schedule that fits `minutes` (less `spent_s`, already gone, and a margin). With `epoch_batches` (the
    recipe's: how often to validate) only the number of epochs is sized. Otherwise: whole epochs of the photos
    (`natural_batches` each) while they fit, about one validation per natural epoch and at most MAX_EPOCHS; a
    budget shorter than an epoch still validates up to 3 times, with validation and checkpoints taking at most a
    quarter of it; batches per epoch fill what is left. `world` processes share each epoch's loader batches, each
    stepping through its share (`steps_of`) at `step_s`; `epoch_batches` and the plan's are the loader's. `timings`:
    the Plan's frozen/thawed step fields, recorded for the re-plans."""
    budget, overhead = max(minutes * 60 - spent_s, step_s) * MARGIN, valid_s + save_s
    world = max(1, world)
    if epoch_batches:
        n_epoch = max(1, int(budget // (steps_of(epoch_batches, world) * step_s + overhead)))
        return Plan(minutes, n_epoch, epoch_batches, step_s, valid_s, save_s, spent_s, fixed_epochs=True, world=world,
                    **timings)
    natural = steps_of(natural_batches, world)
    full_epoch = natural * step_s + overhead
    if budget >= full_epoch:
        n_epoch = min(MAX_EPOCHS, int(budget // full_epoch))
    else:
        n_epoch = max(1, min(3, int(budget / 4 // max(overhead, 1e-9))))
    steps = max(1, int((budget / n_epoch - overhead) // step_s))
    return Plan(minutes, n_epoch, steps * world, step_s, valid_s, save_s, spent_s, world=world, **timings)


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


def measure(learn, freeze_pct: float = 0.0, split: bool = False) -> tuple:
    """(seconds per training batch, per validation pass, per checkpoint write) of this Learner as it will train:
    a few real steps (its callbacks included: the critic's steps in stage two) at a learning rate of 0, after
    which the model's, optimizer's and callbacks' state is put back as it was. With the body frozen for
    `freeze_pct` of the schedule (`FreezeBody`), steps are timed both ways and weighed by it; `split` adds the two
    (thawed, frozen; None where not timed) to the tuple."""
    saved = _snapshot(learn)
    thawed = _step_s(learn, saved, False) if freeze_pct < 1 else None
    frozen = _step_s(learn, saved, True) if freeze_pct else None
    step_s = (1 - freeze_pct) * (thawed or 0.0) + freeze_pct * (frozen or 0.0)
    start = clock()
    with learn.no_bar():
        learn.validate()
    valid_s = clock() - start
    start = clock()
    torch.save({"model": _unwrap(learn.model).state_dict(), **saved["callbacks"]}, io.BytesIO())
    save_s = 4 * (clock() - start)  # last.pth (the model, Adam's two moments) and best.pth
    return (step_s, valid_s, save_s, thawed, frozen) if split else (step_s, valid_s, save_s)


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
    measurements for this many processes, and give every rank that plan; the training loader gets its epoch
    length."""
    natural = max(1, len(learn.dls.train.dataset) // learn.dls.train.bs)
    step_s, valid_s, save_s, thawed, frozen = measure(learn, freeze_pct, split=True)
    plan = plan_budget(minutes, step_s, valid_s, save_s, natural_batches=natural, spent_s=clock() - started,
                       epoch_batches=learn.dls.train.epoch_batches, world=max(1, num_distrib()),
                       freeze_pct=freeze_pct, frozen_step_s=frozen, thawed_step_s=thawed)
    plan = Plan(**broadcast_object(asdict(plan)))
    learn.dls.train.epoch_batches = plan.epoch_batches
    ranks = f" on each of {plan.world} processes" if plan.world > 1 else ""
    log.info(f"{minutes:g} minutes: {plan.spent_s / 60:.1f} gone to setting up, then {plan.n_epoch} epoch(s) of "
             f"{plan.steps} batches{ranks} ({plan.step_s:.2f} s each, validation {plan.valid_s:.1f} s, checkpoints "
             f"{plan.save_s:.1f} s an epoch): planned {(plan.spent_s + plan.planned_s) / 60:.1f} minutes")
    return plan


MIN_PACE_BATCHES = 4  # a re-plan trusts the pace of an epoch of at least this many batches, else the plan's
REPLAN_OFF = 0.05     # the epoch length is changed when the re-plan's differs from it by more than this share
ON_COURSE = 0.8       # after the first epoch, a finish between this share of what is left and all of it holds


class BudgetClock(Callback):
    """Keeps a fit to its budget (`Plan.minutes`): the time left beside the epoch bar and in the log, and at the end
    the planned and actual minutes. The clock owns the one-cycle schedule's position (`pct_train`): each remaining
    epoch takes an equal share of what is left of it. After every epoch (the first of a plan always, later ones when
    the finish would fall outside the budget) the remaining epochs are re-planned from the pace measured (an epoch of
    at least MIN_PACE_BATCHES batches, else no faster than planned; the frozen and the thawed body's steps weighed
    by where they fall): their length, where the plan sized it (never below MIN_PACE_BATCHES when it was longer),
    and their number, so that each epoch's validation and checkpoint still fit. Within an epoch, once what is left of the budget no longer covers its validation and
    checkpoint, training stops for it. The epoch the re-plan makes the last ends the fit, its schedule annealed,
    its checkpoint and best written. Under several processes every rank takes rank 0's decisions. The state (time
    used, schedule position, re-planned epochs) goes into the run's checkpoint, so `--resume` continues it."""
    order = 70

    def __init__(self, plan: Plan, resumed: bool = False):
        self.plan, self.resumed, self.state = plan, resumed, None

    def before_fit(self):
        state = self.state or {}
        self.start = clock() - (state.get("used_s", 0.0) if self.resumed else self.plan.spent_s)
        self.pct0, self.share, self.last = state.get("pct", 0.0), state.get("share"), state.get("last")
        self.overhead_s, self.skipped, self.ended_early = self.plan.valid_s + self.plan.save_s, False, False
        if "epoch_batches" in state:
            self._loader().epoch_batches = state["epoch_batches"]
        if self.resumed and state and state["last"] < state["done"]:
            log.info(f"the budget of {self.plan.minutes:g} min was used up by epoch {state['done']}: nothing left")
            raise CancelFitException

    def before_epoch(self):
        self.skipped = False
        if self.share is None:  # a new schedule: fastai's, each epoch 1 / n_epoch of it
            self.share, self.last = 1 / self.n_epoch, self.n_epoch - 1

    def _loader(self):
        return getattr(self.dls.train, "dl", self.dls.train)  # the loader inside DDP's wrapper

    def after_cancel_epoch(self): self.skipped = True  # an epoch a resumed run skips

    def before_train(self):
        self.train_start, self.batches = clock(), 0
        self.learn.pct_train = self.pct0  # TrainEvalCallback put it at epoch / n_epoch

    def before_batch(self):
        if self.training:
            self.pct_before = self.learn.pct_train

    def after_batch(self):
        "This batch's share of the schedule (what TrainEvalCallback moved it by, scaled); the in-epoch guard."
        if not self.training:
            return
        moved = self.learn.pct_train - self.pct_before  # 1 / (n_iter * n_epoch), or 0 for a batch that held it
        self.learn.pct_train = self.pct_before + moved * self.share * self.n_epoch
        self.batches += 1
        over = self.left_s() < self.overhead_s  # what is left covers this epoch's validation and checkpoint no more
        if all_reduce_sum(float(over)) > 0:
            self.last = self.epoch
            log.info(f"budget: {self.plan.minutes:g} min nearly used: epoch {self.epoch + 1} stops training after "
                     f"{self.batches} batches, validates, and the fit ends")
            raise CancelTrainException

    def after_train(self): self.train_end = clock()

    def left_s(self, now: float | None = None) -> float:
        return self.plan.minutes * 60 - ((clock() if now is None else now) - self.start)

    def after_epoch(self):
        if self.skipped:
            return
        now = clock()
        self.pct0, self.overhead_s = self.learn.pct_train, max(0.0, now - self.train_end)
        if self.epoch < self.last:
            self.replan(now)
        left = max(0.0, self.left_s(now)) / 60
        if getattr(self.learn, "progress", None) is not None and getattr(self.learn.progress, "mbar", None):
            self.learn.progress.mbar.main_bar.comment = f"{left:.1f} of {self.plan.minutes:g} min left"
        log.info(f"epoch {self.epoch + 1}/{self.last + 1}: {(now - self.start) / 60:.1f} min so far, about "
                 f"{left:.1f} min left")
        if self.epoch >= self.last and self.epoch < self.n_epoch - 1:
            self.ended_early = True
            raise CancelFitException  # the budget's last epoch: its checkpoint and best are written

    def pace(self) -> float:
        "Seconds a step for the rest of the fit, from this epoch's (trusted over MIN_PACE_BATCHES batches)."
        measured = (self.train_end - self.train_start) / max(1, self.batches)
        expected = self.plan.step_between(self.pct0 - self.share, self.pct0)
        if self.batches < MIN_PACE_BATCHES:
            measured = max(measured, expected)  # a pace over (almost) no batches is never trusted to be fast
        return measured / max(expected, 1e-9) * self.plan.step_between(self.pct0, 1.0)

    def replan(self, now: float) -> None:
        """The remaining epochs (their number, and their length where the plan sized it) that fit what is left of
        the budget at this epoch's pace, each epoch's validation and checkpoint included; rank 0's decision, every
        rank's (each rank's clock differs: one decision, shared, or the ranks would part at the next collective)."""
        remaining, world = self.last - self.epoch, self.plan.world
        steps = steps_of(self._loader().epoch_batches or self.n_iter * world, world)
        step, epochs, new_steps = broadcast_object(self._replanned(now, steps, remaining))
        if epochs == remaining and new_steps == steps:
            return
        if epochs < remaining:
            log.info(f"budget: at {step:.2f} s a batch, {epochs} more epoch(s) fit, not {remaining}: the schedule "
                     f"is compressed into them")
        self.last, self.share = self.epoch + epochs, (1 - self.pct0) / max(epochs, 1)
        if new_steps != steps:
            log.info(f"budget: the epochs ran at {step:.2f} s a batch, not the planned {self.plan.step_s:.2f}: the "
                     f"remaining {epochs} get {new_steps} batches each, not {steps}")
            self._loader().epoch_batches = new_steps * world

    def _replanned(self, now: float, steps: int, remaining: int) -> tuple[float, int, int]:
        "(seconds a step, epochs, steps an epoch) for the rest, as this rank sees it; unchanged while on course."
        step, left = self.pace(), self.left_s(now) * MARGIN
        finish = remaining * (steps * step + self.overhead_s)
        if self.epoch > 0 and ON_COURSE * left <= finish <= left:
            return step, remaining, steps  # on course: the plan holds
        if self.plan.fixed_epochs:  # the recipe's epoch length (how often to validate) stays; only the count shrinks
            return step, min(remaining, int(left // (steps * step + self.overhead_s))), steps
        shortest = min(steps, MIN_PACE_BATCHES)  # epochs long enough to time, training at least as long as validating
        epochs = min(remaining, int(left // (shortest * step + self.overhead_s)),
                     max(1, int(left // max(2 * self.overhead_s, 1e-9))))
        epochs = max(epochs, 1 if left >= step + self.overhead_s else 0)  # the last: whatever still fits
        new_steps = int((left / max(epochs, 1) - self.overhead_s) // max(step, 1e-9))
        if not epochs or abs(new_steps - steps) <= REPLAN_OFF * steps:
            new_steps = steps
        return step, epochs, max(1, new_steps)

    def checkpoint_state(self) -> dict:
        "Any time during a fit: the time used, the schedule's position and the epochs as re-planned."
        if getattr(self, "share", None) is None:
            return {}
        return {"budget": {"used_s": clock() - self.start, "pct": self.learn.pct_train, "share": self.share,
                           "last": self.last, "done": self.epoch + 1,
                           "epoch_batches": self._loader().epoch_batches}}

    def load_checkpoint_state(self, state: dict): self.state = state.get("budget")

    def after_fit(self):
        actual = (clock() - self.start) / 60
        planned = (self.plan.spent_s + self.plan.planned_s) / 60
        early = f", ending after epoch {self.last + 1} of {self.n_epoch}" if self.ended_early else ""
        log.info(f"budget {self.plan.minutes:g} min: planned {planned:.1f}, took {actual:.1f}{early}")
