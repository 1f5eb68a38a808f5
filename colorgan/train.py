"""Recipe in, run folder out: `pretrain` (stage one) and `gan_finetune` (stage two), each one library call that the
CLI commands of the same names wrap."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from fastai.callback.progress import CSVLogger
from fastai.learner import Learner
from fastai.torch_core import set_seed

from . import learner as _patched  # noqa: F401  (fit_one_cycle is patched onto Learner there)
from .artifacts import (ARTIFACT_NAME, CRITIC_NAME, _unwrap, generator_meta, load_critic_state, load_generator,
                        resolve_artifact, save_critic, save_generator)
from . import budget
from .budget import BudgetClock, Plan, fit_to_budget
from .callbacks import (BEST, LAST, ColourRule, EpochLines, RunCheckpoint, StopOnNaN, epoch_record,
                        tensorboard_callback, wants_bar)
from .data import photo_dls
from .distributed import (barrier, distributed, init_distributed, is_distributed, is_main_process,
                          main_process_first)
from .gan import ConditionalGAN, gan_learner
from .learner import fit_pretrain, pretrain_learner
from .models import build_critic, build_generator
from .losses import ADV_LOSSES, ColourClassLoss
from .recipes import RecipeError, Section, dumps_toml, load_recipe, number, one_of, whole
from .utils import TEMP_SUFFIX, ColorganError, atomic_path, check_out, check_writable, log, require_extra

__all__ = ["pretrain", "gan_finetune", "PRETRAIN_SCHEMA", "GAN_SCHEMA", "RECIPE_NAME"]

RECIPE_NAME = "recipe.resolved.toml"
# Limits on values that have the right type but would crash deep inside, or train nothing (docs/reliability.md)
DATA_LIMITS = {"size": whole(32, 4096), "bs": whole(1), "valid_pct": number(0, 1, True, True),
               "min_scale": number(0, 1, low_open=True), "min_colorfulness": number(0), "seed": whole(0),
               "epoch_batches": whole(1, optional=True), "decode_workers": whole(1, optional=True)}
LEARNER_LIMITS = {"wd": number(0), "precision": one_of("auto", "fp32", "bf16", "fp16"),
                  "loss": one_of("auto", "l1", "classes"),
                  "ema_decay": number(0, 1, high_open=True, optional=True), "rebalance": number(0, 1, high_open=True),
                  "feature_views": whole(0, 64)}
_LR = number(0, low_open=True, optional=True)[0]
FIT_LIMITS = {"n_epoch": whole(1, optional=True), "minutes": number(0, 7 * 24 * 60, low_open=True, optional=True),
              "div": number(0, low_open=True),
              "lr_max": (lambda v: _LR(v) or (isinstance(v, list) and v != [] and all(_LR(x) for x in v)),
                         "a finite number above 0, a list of them (one per parameter group) or unset"),
              "div_final": number(0, low_open=True), "pct_start": number(0, 1, high_open=True)}
FIT = Section(fit_pretrain, ("learn", "cbs", "reset_opt", "start_epoch"),
              {**FIT_LIMITS, "freeze_pct": number(0, 1), "lr_mult": number(1)})
PRETRAIN_SCHEMA = {
    "data": Section(photo_dls, ("path",), DATA_LIMITS),
    "model": Section(build_generator, ("img_size",), {"width": number(0, 1, low_open=True),
                                                      "out_stride": one_of(1, 2, 4, 8), "head": one_of("ab", "classes")}),
    "learner": Section(pretrain_learner, ("dls", "model", "path", "cbs", "metrics"), LEARNER_LIMITS),
    "fit": FIT,
    "log": Section(tensorboard_callback),
}
GAN_SCHEMA = {
    "data": Section(photo_dls, ("path",), DATA_LIMITS),
    "critic": Section(build_critic, (), {"n_in": one_of(3), "n_filters": whole(1), "n_strided": whole(1, 6),
                                         "norm": one_of("spectral", "batch", "instance")}),
    "gan": Section(ConditionalGAN, ("critic",), {
        "adv_loss": one_of(*ADV_LOSSES), "lambda_l1": number(0), "critic_lr": number(0, low_open=True),
        "warmup": whole(0), "critic_steps": whole(1), "critic_every": whole(1),
        "label_smoothing": number(0, 1, high_open=True)}),
    "learner": Section(gan_learner, ("dls", "generator", "critic", "path", "cbs", *inspect.signature(
        ConditionalGAN).parameters), LEARNER_LIMITS),  # ConditionalGAN's own keys belong to [gan]
    "keep": Section(ColourRule, ("start",), {"max_psnr_drop": number(0), "max_false_color": number(0, 1),
                                               "max_wrong_hue": number(0, 1, optional=True)}),
    "fit": FIT,
    "log": Section(tensorboard_callback),
}


def write_recipe(run: Path, recipe: dict) -> None:
    "The run's resolved recipe, as it now stands, into recipe.resolved.toml (rank 0, atomically)."
    if is_main_process():
        with atomic_path(run / RECIPE_NAME) as tmp:
            tmp.write_text(dumps_toml(recipe))


def _budget_or_epochs(recipe: dict, minutes: float | None) -> dict:
    """A new run's length: `fit.n_epoch`, or `fit.minutes`, never both (a recipe's `data.epoch_batches` still sets
    how often it validates; without it the budget sizes the epochs too). `minutes` from the command line or the
    Python call replaces the recipe's n_epoch, and says so; a recipe (or --set) that gives both is refused."""
    fit = recipe["fit"]
    if minutes is not None:
        test, allowed = FIT_LIMITS["minutes"]
        if not test(minutes):
            raise RecipeError(f"--minutes must be {allowed}, not {minutes}")
        if fit["n_epoch"] is not None:
            log.info(f"--minutes {minutes:g} replaces the recipe's fit.n_epoch = {fit['n_epoch']}")
        fit["minutes"], fit["n_epoch"] = minutes, None
    if fit["minutes"] is None and fit["n_epoch"] is None:
        raise RecipeError("the recipe says how long to train in neither fit.n_epoch nor fit.minutes (--minutes N)")
    if fit["minutes"] is not None and fit["n_epoch"] is not None:
        raise RecipeError(f"fit.minutes = {fit['minutes']:g} and fit.n_epoch = {fit['n_epoch']} contradict: the "
                          f"budget sizes the number of epochs itself; give one of them")
    return recipe


def _check_views(recipe: dict) -> dict:
    "Stored features of the body (stage one's learner.feature_views) need the body frozen throughout."
    views, freeze = recipe["learner"].get("feature_views"), recipe["fit"]["freeze_pct"] or 0
    if views and freeze < 1:
        raise RecipeError(f"learner.feature_views = {views} stores the frozen body's features, but fit.freeze_pct = "
                          f"{freeze:g} thaws the body: set fit.freeze_pct = 1, or learner.feature_views = 0")
    return recipe


def prepare_run(out, recipe, overrides, schema: dict, resume: bool, overwrite: bool,
                minutes: float | None = None) -> dict:
    """Load and validate the recipe (a run being resumed uses its own resolved recipe, plus any overrides) and
    make the run folder; a finished or started run is never overwritten unless `overwrite`."""
    run = Path(out)
    if resume:
        if not (run / RECIPE_NAME).is_file():
            raise ColorganError(f"nothing to resume in {run}: it has no {RECIPE_NAME}")
        if minutes is not None:
            raise ColorganError(f"{run}'s budget was planned when it started; --resume continues that plan without "
                                f"--minutes (raise fit.n_epoch with --set to train longer)")
        resolved = _check_views(_resumed_recipe(run, schema, overrides))
        _check_log(run, resolved)
        if is_main_process():
            clear_stale_temporaries(run)
        return resolved
    resolved = _check_views(_budget_or_epochs(load_recipe(recipe, schema, overrides), minutes))
    _check_log(run, resolved)
    if (run / ARTIFACT_NAME).exists() or (run / LAST).exists():
        if not overwrite:
            raise ColorganError(f"{run} already holds a run: continue it with --resume, or choose another --out "
                                f"(or pass --overwrite to start it again)")
        if is_main_process():
            clear_run(run)
    if is_main_process():
        run.mkdir(parents=True, exist_ok=True)
        clear_stale_temporaries(run)
        write_recipe(run, resolved)
    return resolved


def _check_log(run: Path, recipe: dict) -> None:
    "A TensorBoard log asked for: its package and its folder, before anything of the run is written."
    if recipe["log"]["tensorboard"]:
        require_extra("tensorboard", "tensorboard")
        check_writable(run / "tensorboard", "the TensorBoard folder")


def _resumed_recipe(run: Path, schema: dict, overrides) -> dict:
    """The run's own resolved recipe plus `overrides` (written back once the learner is built); a change that makes
    the continued run differ from one run straight through (epochs: the one-cycle schedule; the seed: the split and
    augmentation) is warned about."""
    before, after = load_recipe(run / RECIPE_NAME, schema), load_recipe(run / RECIPE_NAME, schema, overrides)
    for section, key, effect in (("fit", "n_epoch", "the learning-rate schedule is stretched from here on"),
                                 ("data", "seed", "the train/valid split and the augmentation change")):
        if before[section][key] != after[section][key]:
            log.warning(f"resuming with {section}.{key} = {after[section][key]} (was {before[section][key]}): {effect}")
    return after


RUN_FILES = (ARTIFACT_NAME, CRITIC_NAME, RECIPE_NAME, "history.csv", str(LAST), str(BEST), "checkpoints/start.json",
             "checkpoints/budget.json")
RUN_PATTERNS = ("samples/epoch_[0-9][0-9][0-9].png", *(f"{d}.*{TEMP_SUFFIX}" for d in ("", "checkpoints/", "samples/")))


def run_files(run: Path) -> list[Path]:
    "The files a run writes that are in `run` now (temporaries of an interrupted write included)."
    named = [run / name for name in RUN_FILES if (run / name).is_file()]
    return named + [p for pattern in RUN_PATTERNS for p in sorted(run.glob(pattern)) if p.is_file()]


def clear_run(run: Path) -> None:
    """Remove the files a run wrote, and nothing else: whatever else the folder holds, in checkpoints/ and samples/
    too, is the user's. Folders left empty go."""
    for path in run_files(run):
        path.unlink()
    for folder in (run / "checkpoints", run / "samples"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def clear_stale_temporaries(run: Path) -> None:
    "Half-written files of a run killed in the middle of a write (hundreds of MB each); nothing reads them."
    stale = [p for pattern in RUN_PATTERNS[1:] for p in run.glob(pattern) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info(f"removed {len(stale)} half-written file(s) of an interrupted run in {run}")


def run_fit(learn: Learner, run: Path, recipe: dict, meta: dict, resume: bool, cbs=(), rule=None,
            best: float = float("inf"), started: float | None = None) -> Learner:
    """The stage's fit with the run's callbacks, `best.pth` chosen by `rule` (lowest validation loss unless told);
    sized to `fit.minutes` when the recipe gives a budget; on --resume, from the last finished epoch with its
    history replayed. `started`: when the run began (a `budget.clock()` reading), for the budget's account."""
    learn.path = Path(run)  # the run folder: where RunCheckpoint writes
    cbs = [*cbs, *_budget(learn, run, recipe, resume, budget.clock() if started is None else started)]
    fit = {k: v for k, v in recipe["fit"].items() if k != "minutes"}
    n_epoch, start = fit.pop("n_epoch"), 0
    checkpoint, nan_guard = RunCheckpoint(meta, best=best, rule=rule), StopOnNaN()
    cbs = [*cbs, nan_guard, *([CSVLogger("history.csv")] if is_main_process() else []), checkpoint]
    if resume:
        start, replay = checkpoint.restore(learn, cbs)
        cbs.append(replay)
        log.info(f"resuming {run} after epoch {start} of {n_epoch}")
    if start >= n_epoch:
        log.info(f"{run} already finished its {n_epoch} epochs; raise fit.n_epoch to train longer")
        return learn
    bar = wants_bar()  # to a file or a pipe: a line an epoch, not every redraw of the bar
    with distributed(learn), (nullcontext() if bar else learn.no_bar()):
        fit_pretrain(learn, n_epoch, start_epoch=start, cbs=[*cbs, *([] if bar else [EpochLines()])],
                     **{k: v for k, v in fit.items() if v is not None})
    if nan_guard.diverged:
        raise ColorganError(nan_guard.diverged)
    return learn


BUDGET = Path("checkpoints/budget.json")


def _run_json(path: Path, keys: set) -> dict:
    "A JSON file of the run's (a budget, stage two's start), whole and with `keys`, or an error saying the way out."
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict) or not keys <= value.keys():
            raise ValueError(f"it lacks {sorted(keys - set(value) if isinstance(value, dict) else keys)}")
        return value
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ColorganError(f"{path} is damaged ({type(e).__name__}: {e}): this run cannot be resumed; start it "
                            f"again with --overwrite") from None


def _budget(learn: Learner, run: Path, recipe: dict, resume: bool, started: float) -> list:
    """A run with `fit.minutes`: planned now (the plan, its epochs and their length with the measurements, in
    checkpoints/budget.json; the resolved recipe keeps the budget, so given back as --recipe it plans again for
    its machine), or, resumed, its recorded plan; the clock callback for either."""
    minutes = recipe["fit"]["minutes"]
    if minutes is None:
        return []
    if resume and (run / BUDGET).is_file():
        fields = Plan.__dataclass_fields__.values()
        needed = {f.name for f in fields if f.default is dataclasses.MISSING}  # older plans lack the later fields
        plan = Plan(**{k: v for k, v in _run_json(run / BUDGET, needed).items() if k in Plan.__dataclass_fields__})
        recipe["fit"]["n_epoch"] = plan.n_epoch  # this run's schedule: the plan's, not the recipe's to say
        learn.dls.train.epoch_batches = plan.epoch_batches
        return [BudgetClock(plan, resumed=True)]
    plan = fit_to_budget(learn, minutes, started, recipe["fit"].get("freeze_pct") or 0.0)
    recipe["fit"]["n_epoch"] = plan.n_epoch  # for this fit; the resolved recipe keeps the budget, which re-plans
    if is_main_process():
        with atomic_path(run / BUDGET) as tmp:
            tmp.write_text(json.dumps(asdict(plan)))
    return [BudgetClock(plan)]


def _start(run: Path, data, recipe, overrides, schema: dict, resume: bool, overwrite: bool, reads=None,
           minutes: float | None = None):
    "What both stages do first: check --out, join the process group, resolve the recipe, seed, load the photos."
    check_out(run, data, reads)
    init_distributed()
    recipe = prepare_run(run, recipe, overrides, schema, resume, overwrite, minutes)
    set_seed(recipe["data"]["seed"])
    with main_process_first():
        dls = photo_dls(data, **recipe["data"])
    return recipe, dls


def _record_policy(learn: Learner, run: Path, recipe: dict) -> None:
    """The device policy as decided, never 'auto', into the recipe, the artefact's metadata and the run folder. The
    device is recorded as its type ('cuda', not rank 0's 'cuda:0'), so each rank of a resumed run takes its own
    GPU again; only an index the user named on one process is kept."""
    policy = learn.policy.as_dict()
    if "loss" in recipe["learner"]:  # stage one's: what "auto" chose for this generator
        policy["loss"] = "classes" if isinstance(learn.loss_func, ColourClassLoss) else "l1"
    device, named = torch.device(policy.pop("device")), recipe["data"]["device"]
    keep = named is not None and torch.device(named).index is not None and not is_distributed()
    recipe["data"]["device"] = str(device) if keep else device.type
    recipe["learner"].update(policy)
    write_recipe(run, recipe)


def _finish(learn: Learner, run: Path, meta: dict, critic=None, critic_build: dict | None = None) -> Learner:
    "Rank 0 writes the artefact (and the critic beside it); the other ranks return once it is there."
    if is_main_process():
        save_generator(learn.model, run / ARTIFACT_NAME, meta)
        if critic is not None:
            save_critic(critic, run / CRITIC_NAME, critic_build)
        log.info(f"wrote {run / ARTIFACT_NAME}" + (f" and {run / CRITIC_NAME}" if critic is not None else ""))
    barrier()
    return learn


ONE_TINT = 0.05  # a tint_gain below this: the generator paints about one tint whatever it sees (docs/gan.md)


def _warn_if_one_tint(record: dict, who: str) -> None:
    "Say so when a generator colours the validation photos little better than one tint for all of them."
    gain = record.get("tint_gain")
    if gain is not None and gain < ONE_TINT:
        log.warning(f"{who} colours the validation photos only {gain:.1%} better than one tint for all of them "
                    f"(tint_gain, under {ONE_TINT:.0%}): it has not learned which colour goes where, and stage two "
                    f"turns that tint into patches of the wrong colour (docs/gan.md). Train stage one longer or on "
                    f"more photos like the ones to colorize; from scratch, start it from ImageNet weights "
                    f"(model.arch = \"tf_efficientnet_lite0\" with model.pretrained = true needs no hub: "
                    f"recipes/cpu.toml; --weights PATH for other archs)")


def pretrain(data: str | os.PathLike, out: str | os.PathLike, recipe=None, overrides=(), resume: bool = False,
             overwrite: bool = False, minutes: float | None = None) -> Learner:
    """Stage one: train the generator on L1 with `fit_one_cycle` as the recipe says, writing the run folder
    (generator.pth, recipe.resolved.toml, history.csv, samples/, checkpoints/). `minutes` sizes the schedule to a
    wall-clock budget instead of the recipe's fit.n_epoch (colorgan.budget). Returns the Learner."""
    run, started = Path(out), budget.clock()
    recipe, dls = _start(run, data, recipe, overrides, PRETRAIN_SCHEMA, resume, overwrite, minutes=minutes)
    learn = pretrain_learner(dls, path=run, **recipe["learner"], **recipe["model"])
    _record_policy(learn, run, recipe)
    meta = generator_meta(recipe["model"], dls.train.size, "pretrain", recipe)
    run_fit(learn, run, recipe, meta, resume, cbs=tensorboard_callback(**recipe["log"]), started=started)
    if getattr(learn.recorder, "final_record", None) is not None:  # a finished run resumed has none
        _warn_if_one_tint(epoch_record(learn.recorder), "stage one")
    return _finish(learn, run, meta)


def gan_finetune(data: str | os.PathLike, generator: str | os.PathLike, out: str | os.PathLike, recipe=None,
                 overrides=(), resume: bool = False, overwrite: bool = False, minutes: float | None = None) -> Learner:
    """Stage two: fine-tune a stage-one generator (a run folder or artefact) adversarially against a conditional
    PatchGAN, as the recipe says. Writes the same kind of run folder as `pretrain`, with critic.pth beside the
    generator artefact, and returns the Learner (its model is the generator). `minutes` as in `pretrain`."""
    run, generator, started = Path(out), resolve_artifact(generator), budget.clock()  # a wrong path fails first
    net, source = load_generator(generator)  # read before --overwrite may clear anything
    recipe, dls = _start(run, data, recipe, overrides, GAN_SCHEMA, resume, overwrite, reads=generator,
                         minutes=minutes)
    critic = _critic_for(generator, recipe["critic"])
    learn = gan_learner(dls, net.train(), critic, path=run, **recipe["learner"], **recipe["gan"])
    _record_policy(learn, run, recipe)
    meta = generator_meta(source["build"], dls.train.size, "gan", recipe)
    rule, best = _colour_rule(learn, run, meta, resume, **recipe["keep"])
    run_fit(learn, run, recipe, meta, resume, cbs=tensorboard_callback(**recipe["log"]), rule=rule, best=best,
            started=started)
    _keep_best(learn, run)
    return _finish(learn, run, meta, critic, recipe["critic"])


def _critic_for(generator: Path, build: dict) -> torch.nn.Module:
    """A new critic, or, when the generator comes from a stage-two run whose critic.pth was built the same way, that
    critic: fine-tuning a stage-two generator again starts from the critic that knows it, not from scratch."""
    critic, saved = build_critic(**build), generator.parent / CRITIC_NAME
    if saved.is_file():
        state = load_critic_state(saved)
        if state.get("build") == build:
            critic.load_state_dict(state["state_dict"])
            log.info(f"the critic starts from {saved}")
        else:
            log.info(f"{saved} was built otherwise ({state.get('build')}); the critic starts from scratch")
    return critic


def _colour_rule(learn: Learner, run: Path, meta: dict, resume: bool, **limits) -> tuple[ColourRule, float]:
    """Stage two's checkpoint rule, measured against the generator the stage starts from, which is itself the
    first candidate for best.pth (so the result is never worse than the start by the rule's own measure)."""
    start_file = run / "checkpoints" / "start.json"
    if resume and start_file.is_file():
        return ColourRule(_run_json(start_file, {"psnr", "false_color"}), **limits), float("inf")
    values = learn.validate()  # the Recorder names its columns as it runs
    start = dict(zip(learn.recorder.metric_names[2:-1], values))
    rule = ColourRule(start, **limits)
    score, why = rule.judge(start)
    log.info(f"stage two starts from: {why}")
    _warn_if_one_tint(start, "the generator stage two starts from")
    if is_main_process():
        with atomic_path(start_file) as tmp:
            tmp.write_text(json.dumps(start))
        save_generator(learn.model, run / BEST, meta)  # the fallback, even when the start is not eligible itself
    return rule, float("inf") if score is None else score


def _keep_best(learn: Learner, run: Path) -> None:
    "Stage two's result is the generator its rule kept, not merely the last one."
    barrier()  # rank 0 wrote best.pth
    state = torch.load(run / BEST, map_location="cpu", weights_only=True)["state_dict"]
    _unwrap(learn.model).load_state_dict(state)
