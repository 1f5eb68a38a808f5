"--minutes: a schedule sized to a wall-clock budget from measured step times (a fake clock here: no test sleeps)."
import csv
import json

import pytest

import colorgan.budget
from colorgan.budget import MARGIN, MAX_EPOCHS, plan_budget
from colorgan.recipes import RecipeError
from colorgan.train import pretrain
from colorgan.utils import ColorganError
from conftest import TINY_MODEL, interrupted, tiny_recipe


@pytest.mark.parametrize("minutes, step, natural", [(90, 0.8, 165), (10, 0.8, 165), (1, 0.8, 165), (0.2, 2.0, 1000),
                                                    (600, 0.01, 10)])
def test_a_plan_ends_within_its_budget_and_uses_most_of_it(minutes, step, natural):
    plan = plan_budget(minutes, step_s=step, valid_s=5.0, save_s=1.0, natural_batches=natural)
    budget = minutes * 60
    assert 1 <= plan.n_epoch <= MAX_EPOCHS and plan.epoch_batches >= 1
    assert plan.planned_s <= budget * MARGIN  # a margin for what the timing does not see (grids, logs)
    assert plan.planned_s >= budget * MARGIN - plan.n_epoch * step - 6.0 or plan.epoch_batches == 1
    if budget >= natural * step + 6:  # a whole epoch fits: epochs at least as long as one pass over the photos
        assert plan.epoch_batches >= natural
    else:  # shorter than an epoch: still validated, with at most a quarter of the budget on it
        assert plan.n_epoch * 6.0 <= budget / 4 or plan.n_epoch == 1


def test_90_minutes_at_the_cpu_recipes_speed():
    "2,642 photos at 64 px, batches of 16 at 0.8 s: 165 batches an epoch; 93% of 90 minutes is 36 such epochs."
    plan = plan_budget(90, step_s=0.8, valid_s=4.0, save_s=2.0, natural_batches=165)
    assert plan.n_epoch == 36 and plan.epoch_batches == 166


@pytest.fixture
def fake_clock(monkeypatch):
    "Every reading of the clock is half a second after the last: each timed thing takes 0.5 s."
    now = [0.0]

    def tick():
        now[0] += 0.5
        return now[0]
    monkeypatch.setattr(colorgan.budget, "clock", tick)


def _rows(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_minutes_size_the_run_from_the_measured_step_time(photo_dir, tmp_path, fake_clock):
    """Each timing 0.5 s on the fake clock: a batch 0.5 s, validation 0.5 s, checkpoints 4 x 0.5 s; the plan fills
    what is left of 30 s after setting up, ends within it, and the run trains exactly the planned epochs."""
    run = tmp_path / "run"
    recipe = tiny_recipe(model=TINY_MODEL)
    pretrain(photo_dir, run, recipe=recipe, minutes=0.5)  # replaces the recipe's n_epoch, and says so
    plan = json.loads((run / "checkpoints" / "budget.json").read_text())
    assert (plan["step_s"], plan["valid_s"], plan["save_s"]) == (0.5, 0.5, 2.0) and 0 < plan["spent_s"] < 30
    epoch_s = plan["epoch_batches"] * 0.5 + 2.5
    assert plan["n_epoch"] * epoch_s <= 30 - plan["spent_s"] < (plan["n_epoch"] + 1) * epoch_s + 0.5 + 30 * 0.07
    assert plan["epoch_batches"] >= 2  # 9 photos in batches of 4: at least one whole pass an epoch
    import tomllib
    resolved = tomllib.loads((run / "recipe.resolved.toml").read_text())
    assert resolved["fit"]["minutes"] == 0.5 and "n_epoch" not in resolved["fit"]  # the budget, not one plan of it
    assert "epoch_batches" not in resolved["data"] and len(_rows(run)) == plan["n_epoch"]
    pretrain(photo_dir, tmp_path / "again", recipe=run / "recipe.resolved.toml")  # the resolved recipe re-runs it
    assert json.loads((tmp_path / "again" / "checkpoints" / "budget.json").read_text())["minutes"] == 0.5


def test_minutes_keep_the_recipes_epoch_length_and_size_the_epochs(photo_dir, tmp_path, fake_clock):
    """As `--minutes` with recipes/cpu-gan.toml (n_epoch 12, epoch_batches 22): n_epoch is replaced, the epoch
    length (how often stage two validates and picks its best) is kept: 3 batches an epoch here."""
    recipe = tiny_recipe(model=TINY_MODEL, data={"epoch_batches": 3}, fit={"n_epoch": 12})
    pretrain(photo_dir, tmp_path / "run", recipe=recipe, minutes=0.3)
    plan = json.loads((tmp_path / "run" / "checkpoints" / "budget.json").read_text())
    epoch_s = 3 * 0.5 + 2.5
    assert plan["epoch_batches"] == 3 and plan["n_epoch"] * epoch_s <= 18 - plan["spent_s"]
    assert len(_rows(tmp_path / "run")) == plan["n_epoch"] > 1


def test_a_fixed_epoch_length_is_planned_by_count_alone():
    plan = plan_budget(10, step_s=1.2, valid_s=1.5, save_s=1.8, natural_batches=165, epoch_batches=33)
    assert plan.epoch_batches == 33 and plan.n_epoch == int(600 * MARGIN // (33 * 1.2 + 3.3)) == 13


def test_a_resumed_budget_run_continues_its_plan(photo_dir, tmp_path, fake_clock):
    run = tmp_path / "run"
    recipe = tiny_recipe(model=TINY_MODEL)
    interrupted(pretrain, photo_dir, run, recipe=recipe, minutes=0.5)
    planned = json.loads((run / "checkpoints" / "budget.json").read_text())
    assert len(_rows(run)) == 1 and planned["n_epoch"] > 1
    with pytest.raises(ColorganError, match="continues that plan"):
        pretrain(photo_dir, run, resume=True, minutes=5)
    pretrain(photo_dir, run, resume=True)  # the rest of the same plan, not a fresh budget
    assert len(_rows(run)) == planned["n_epoch"]
    assert json.loads((run / "checkpoints" / "budget.json").read_text()) == planned


@pytest.mark.parametrize("setting, named", [(["fit.n_epoch=3"], "fit.n_epoch = 3")])
def test_a_budget_and_a_contradicting_setting_are_refused_naming_both(photo_dir, tmp_path, setting, named):
    recipe = {**tiny_recipe(model=TINY_MODEL), "fit": {"minutes": 1.0, "lr_max": 1e-3}}
    with pytest.raises(RecipeError) as err:
        pretrain(photo_dir, tmp_path / "run", recipe=recipe, overrides=setting)
    assert "fit.minutes = 1" in str(err.value) and named in str(err.value) and "contradict" in str(err.value)
    recipe = {**tiny_recipe(model=TINY_MODEL), "fit": {"lr_max": 1e-3}}
    with pytest.raises(RecipeError, match="neither fit.n_epoch nor fit.minutes"):
        pretrain(photo_dir, tmp_path / "run", recipe=recipe)


def test_the_timing_changes_nothing(photo_dir):
    "The probe trains a few real batches; the weights, BatchNorm statistics and an optimizer's state come back."
    import torch

    from colorgan.budget import measure
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    learn.fit(1, 1e-3)  # an optimizer with state, as a Python user's Learner has
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    moments = {k: v.clone() for k, v in learn.opt.state_dict()["state"][0].items() if torch.is_tensor(v)}
    step_s, valid_s, save_s = measure(learn)
    assert step_s > 0 and valid_s > 0 and save_s > 0
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
    assert all(torch.equal(moments[k], v) for k, v in learn.opt.state_dict()["state"][0].items() if k in moments)


@pytest.mark.slow
def test_minutes_under_bf16_both_stages(photo_dir, tmp_path, fake_clock):
    "--minutes times batches on a copy of the state, mixed precision's loss scale and the EMA included."
    from colorgan.train import gan_finetune
    bf16 = {"precision": "bf16"}
    pretrain(photo_dir, tmp_path / "g", recipe=tiny_recipe(model=TINY_MODEL, learner=bf16, fit={"n_epoch": None}),
             minutes=0.5)
    gan = gan_finetune(photo_dir, tmp_path / "g", tmp_path / "gan", minutes=0.5,
                       recipe=tiny_recipe(learner=bf16, critic={"n_filters": 8}, fit={"n_epoch": None}))
    assert gan.policy.precision == "bf16"
    import torch
    for run in ("g", "gan"):
        plan = json.loads((tmp_path / run / "checkpoints/budget.json").read_text())
        assert (tmp_path / run / "generator.pth").is_file() and plan["n_epoch"] >= 1
        assert 'precision = "bf16"' in (tmp_path / run / "recipe.resolved.toml").read_text()
        rows = _rows(tmp_path / run)
        assert rows and all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)  # finite, every epoch
    last = torch.load(tmp_path / "gan" / "checkpoints" / "last.pth", weights_only=True)
    # the timing's steps were undone: the EMA (which steps aside) and the critic (whose state is put back) count
    # the same real generator steps
    assert last["ema_updates"] == last["gan_batches"] > 0


def test_checkpoint_state_may_be_called_any_time(photo_dir):
    "Before the first fit, inside one, after one: the protocol of every callback that offers it, and what each holds."
    import torch
    from fastai.callback.core import Callback
    from colorgan.data import photo_dls
    from colorgan.gan import gan_learner
    from colorgan.models import build_critic, build_generator
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        precision="bf16", ema_decay=0.9)
    holders = [cb for cb in learn.cbs if hasattr(cb, "checkpoint_state")]
    assert {type(cb).__name__ for cb in holders} >= {"DeviceMixedPrecision", "GeneratorEMA", "ConditionalGAN"}
    before = {type(cb).__name__: cb.checkpoint_state() for cb in holders}
    assert before["GeneratorEMA"] == {}  # nothing averaged yet

    class During(Callback):
        def after_batch(self): self.states = [cb.checkpoint_state() for cb in holders]
    during = During()
    learn.fit(1, 1e-3, cbs=[during])
    after = {type(cb).__name__: cb.checkpoint_state() for cb in holders}
    assert len(during.states) == len(holders)
    inside = dict(zip((type(cb).__name__ for cb in holders), during.states))
    gan = learn.conditional_gan
    assert before["ConditionalGAN"]["critic_opt"] is None and inside["ConditionalGAN"]["critic_opt"]["state"]
    assert inside["ConditionalGAN"]["gan_batches"] <= 1 == after["ConditionalGAN"]["gan_batches"]  # one batch
    assert all(torch.equal(v, gan.critic.state_dict()[k]) for k, v in after["ConditionalGAN"]["critic"].items())
    n_tensors = len(learn.model.state_dict())
    assert len(inside["GeneratorEMA"]["ema_raw"]) == n_tensors and inside["GeneratorEMA"]["ema_updates"] == 1
    assert inside["DeviceMixedPrecision"]["scaler"] is not None  # bf16: the scaler exists, disabled
    assert after["DeviceMixedPrecision"]["scaler"] is not None and "ema_raw" in after["GeneratorEMA"]
    learn.validate()  # fastai's MixedPrecision.after_fit sets learn.scaler to None again
    assert learn.mixed_precision.checkpoint_state() == after["DeviceMixedPrecision"]


def test_a_resumed_clock_counts_only_what_it_adds(monkeypatch):
    "Set-up time was spent (and counted) when the plan was made; a resumed run does not count it again."
    from colorgan.budget import BudgetClock, Plan
    plan = Plan(minutes=10, n_epoch=2, epoch_batches=5, step_s=1.0, valid_s=1.0, save_s=1.0, spent_s=120.0)
    monkeypatch.setattr(colorgan.budget, "clock", lambda: 1000.0)
    fresh, resumed = BudgetClock(plan), BudgetClock(plan, resumed=True)
    fresh.before_fit(), resumed.before_fit()
    assert fresh.start == 880.0 and resumed.start == 1000.0


def test_a_frozen_body_is_timed_frozen_and_weighed_by_its_share(photo_dir, monkeypatch):
    "fit.freeze_pct: the plan's step time is the frozen and the trained body's, weighed by the schedule's shares."
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    seen, real = [], colorgan.budget._step_s

    def timed(learn, saved, frozen_body):
        real(learn, saved, frozen_body)
        seen.append(frozen_body)
        return 1.0 if frozen_body else 3.0
    monkeypatch.setattr(colorgan.budget, "_step_s", timed)
    body = list(learn.splitter(learn.model)[0])
    frozen_during = []
    probe_batch = colorgan.budget._Probe.before_batch
    monkeypatch.setattr(colorgan.budget._Probe, "before_batch", lambda self: frozen_during.append(
        not any(p.requires_grad for p in body)) or probe_batch(self))
    assert colorgan.budget.measure(learn, 0.25)[0] == pytest.approx(0.25 * 1.0 + 0.75 * 3.0)
    assert seen == [False, True] and True in frozen_during and False in frozen_during
    assert all(p.requires_grad for p in learn.model.parameters())  # thawed again
    seen.clear()
    assert colorgan.budget.measure(learn, 1.0)[0] == pytest.approx(1.0) and seen == [True]


def test_the_step_time_counts_fetching_the_batch(photo_dir, monkeypatch, fake_clock):
    "A batch that takes as long to fetch and augment as to train is timed at twice its step (0.5 s a clock reading)."
    from colorgan.data import LabDataLoader, photo_dls
    from colorgan.learner import pretrain_learner
    dls = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, epoch_batches=8)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    assert colorgan.budget.measure(learn)[0] == 0.5  # the step alone: one reading a batch
    create = LabDataLoader.create_batch
    monkeypatch.setattr(LabDataLoader, "create_batch", lambda self, idxs: colorgan.budget.clock() and create(self, idxs))
    assert colorgan.budget.measure(learn)[0] == 1.0  # fetching it too


class _Seconds:
    "A clock that only the fit moves: each training batch `step` s, each validation pass 1 s."
    def __init__(self, monkeypatch, step: float):
        self.now, self.step, self.lengths = 0.0, step, []
        monkeypatch.setattr(colorgan.budget, "clock", lambda: self.now)

    def callback(self):
        from fastai.callback.core import Callback
        seconds = self

        class Tick(Callback):
            order = 60  # before BudgetClock (70): an epoch's batches and validation are over when it reads the clock
            def before_train(self): seconds.lengths.append(len(self.dls.train))
            def after_batch(self): seconds.now += seconds.step if self.training else 0.0
            def after_validate(self): seconds.now += 1.0
        return Tick()


@pytest.mark.parametrize("step, lengths", [(2.0, [17, 5, 5]), (0.5, [17, 44, 44]), (1.0, [17, 18, 18])])
def test_the_first_epoch_resizes_the_rest_when_the_plan_misjudged_the_step(photo_dir, monkeypatch, step, lengths):
    """A plan for 1 minute made at 1 s a batch (3 epochs of 17, validation 1 s: 54 s of 55.8); the batches really
    take `step` (1 s: as planned, and the last 2 s of the margin filled): after the first epoch the other two fill
    what is left, and the fit ends within the minute."""
    from colorgan.budget import BudgetClock, Plan
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    seconds = _Seconds(monkeypatch, step)
    plan = Plan(minutes=1, n_epoch=3, epoch_batches=17, step_s=1.0, valid_s=1.0, save_s=0.0)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=17, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    learn.fit_one_cycle(3, 1e-3, cbs=[BudgetClock(plan), seconds.callback()])
    assert seconds.lengths == lengths
    assert 0.9 * 60 <= seconds.now <= 60


def test_a_recipes_epoch_length_is_not_resized(photo_dir, monkeypatch):
    "Stage two's epochs are how often it validates and keeps its best: a slow first epoch leaves them as they are."
    from colorgan.budget import BudgetClock
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    seconds = _Seconds(monkeypatch, 2.0)
    plan = plan_budget(1, step_s=1.0, valid_s=1.0, save_s=0.0, natural_batches=2, epoch_batches=5)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=5, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    learn.fit_one_cycle(2, 1e-3, cbs=[BudgetClock(plan), seconds.callback()])
    assert seconds.lengths == [5, 5]


class _Slowing:
    "A clock only the fit moves: training batches `fast` s until `after` of them, `slow` s from then on; validation `valid`."
    def __init__(self, monkeypatch, fast: float, slow: float, after: int, valid: float = 1.0):
        self.now, self.fast, self.slow, self.after, self.valid = 0.0, fast, slow, after, valid
        self.batches, self.lengths, self.pcts = 0, [], []
        monkeypatch.setattr(colorgan.budget, "clock", lambda: self.now)

    def callback(self):
        from fastai.callback.core import Callback
        seconds = self

        class Tick(Callback):
            order = 60  # before BudgetClock (70)
            def before_train(self): seconds.lengths.append(0)

            def after_batch(self):
                if self.training:
                    seconds.now += seconds.fast if seconds.batches < seconds.after else seconds.slow
                    seconds.batches += 1
                    seconds.lengths[-1] += 1

            def after_validate(self): seconds.now += seconds.valid
        return Tick()


class _Pct:
    "The schedule's position after each training batch (BudgetClock, order 70, has moved it)."
    def __init__(self):
        from fastai.callback.core import Callback
        seen = self.seen = []

        class Record(Callback):
            order = 71
            def after_batch(self): seen.append(self.pct_train) if self.training else None
        self.callback = Record()


@pytest.mark.parametrize("fast, slow, after, valid, n_epoch, batches", [
    (1.0, 3.0, 16, 1.0, 6, 8),   # slows to a third mid-run: epochs 3-6 no longer fit
    (2.4, 2.4, 0, 2.4, 12, 2),   # 2.4x slower from the start, validation as costly as two batches: fewer epochs
])
def test_a_budget_is_kept_when_the_machine_slows_down(photo_dir, monkeypatch, fast, slow, after, valid, n_epoch,
                                                     batches):
    """A plan for 1 minute at 1 s a batch; the machine turns slower: the fit ends within the minute, on fewer
    epochs (each still validated and checkpointed), its one-cycle schedule run to its end (annealed)."""
    from colorgan.budget import BudgetClock, Plan
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    seconds, pct = _Slowing(monkeypatch, fast, slow, after, valid), _Pct()
    plan = Plan(minutes=1, n_epoch=n_epoch, epoch_batches=batches, step_s=1.0, valid_s=1.0, save_s=0.0)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=batches, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    learn.fit_one_cycle(n_epoch, 1e-3, cbs=[BudgetClock(plan), seconds.callback(), pct.callback])
    assert seconds.now <= 60, seconds.lengths
    assert 2 <= len(seconds.lengths) < n_epoch and len(learn.recorder.values) == len(seconds.lengths)
    assert pct.seen[-1] == pytest.approx(1.0) and pct.seen == sorted(pct.seen)  # run to its end, never back


def test_a_re_plan_never_trusts_a_pace_over_almost_no_batches(photo_dir, monkeypatch):
    """A first epoch of one batch that ran in 0.01 s, the rest at the planned 1 s (a pace over one batch, or none,
    as a rank of several can see): the remaining epochs are not blown up to hundreds of batches, and the fit ends
    within its budget."""
    from colorgan.budget import BudgetClock, Plan
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    seconds = _Slowing(monkeypatch, 0.01, 1.0, 1, valid=0.5)
    plan = Plan(minutes=0.5, n_epoch=4, epoch_batches=1, step_s=1.0, valid_s=0.5, save_s=0.0)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=1, decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    learn.fit_one_cycle(4, 1e-3, cbs=[BudgetClock(plan), seconds.callback()])
    assert max(seconds.lengths) <= 30 and seconds.now <= 30, seconds.lengths  # 30 s hold 30 batches of 1 s at most


def test_a_plan_for_several_processes_gives_each_its_share_of_the_batches():
    """Two ranks: each steps through half the loader's batches an epoch, so the loader's epoch holds twice the
    steps a rank's share of the budget buys (one process's plan fills it at the same pace)."""
    one = plan_budget(10, step_s=1.0, valid_s=2.0, save_s=1.0, natural_batches=200)
    two = plan_budget(10, step_s=1.0, valid_s=2.0, save_s=1.0, natural_batches=200, world=2)
    assert two.steps * 2 >= two.epoch_batches > (two.steps - 1) * 2
    assert two.planned_s <= 600 * MARGIN and two.planned_s >= 600 * MARGIN - two.n_epoch * 1.0 - 3.0
    assert two.n_epoch * two.steps == pytest.approx(one.n_epoch * one.steps, rel=0.05)  # a rank trains as long
    fixed = plan_budget(10, step_s=1.0, valid_s=2.0, save_s=1.0, natural_batches=200, epoch_batches=40, world=4)
    assert fixed.epoch_batches == 40 and fixed.steps == 10 and fixed.n_epoch == int(600 * MARGIN // 13)


def test_a_resumed_budget_run_counts_the_minutes_already_used(photo_dir, tmp_path, fake_clock, caplog):
    "The time a run used before it was interrupted is in its checkpoint: the resumed clock shows what is left of it."
    import logging
    run = tmp_path / "run"
    interrupted(pretrain, photo_dir, run, recipe=tiny_recipe(model=TINY_MODEL), minutes=0.5)
    import torch
    used = torch.load(run / "checkpoints" / "last.pth", weights_only=True)["budget"]["used_s"]
    assert used > 0
    with caplog.at_level(logging.INFO, logger="colorgan"):
        pretrain(photo_dir, run, resume=True)
    first = next(r.message for r in caplog.records if r.message.startswith("epoch 2/") and "so far" in r.message)
    assert float(first.split(": ")[1].split(" min so far")[0]) >= used / 60 - 0.05, first


def test_a_re_plan_after_a_frozen_first_epoch_expects_the_thawed_bodys_pace(photo_dir, monkeypatch):
    """fit.freeze_pct = 0.5: frozen steps 1 s, thawed 3 s, as timed. The first epoch is frozen throughout; sizing the
    rest at its pace would overrun the budget by the thawed half's extra cost. The fit ends within its budget."""
    from fastai.callback.core import Callback

    from colorgan.budget import BudgetClock
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    now = [0.0]
    monkeypatch.setattr(colorgan.budget, "clock", lambda: now[0])

    class Tick(Callback):
        order = 60
        def after_batch(self): now[0] += (1.0 if self.pct_train < 0.5 else 3.0) if self.training else 0.0
        def after_validate(self): now[0] += 1.0
    step = 0.5 * 1.0 + 0.5 * 3.0
    plan = plan_budget(1, step_s=step, valid_s=1.0, save_s=0.0, natural_batches=4, freeze_pct=0.5,
                       frozen_step_s=1.0, thawed_step_s=3.0)
    assert plan.n_epoch >= 3
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=plan.epoch_batches,
                    decode_workers=1)
    learn = pretrain_learner(dls, pretrained=False, width=0.25)
    learn.fit_one_cycle(plan.n_epoch, 1e-3, cbs=[BudgetClock(plan), Tick()])
    assert 0.8 * 60 <= now[0] <= 60
