import copy
import csv
import json
import math

import pytest
import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed

from colorgan.artifacts import load_generator
from colorgan.data import photo_dls
from colorgan.gan import GAN_LOG, ConditionalGAN, gan_learner
from colorgan.models import build_critic, build_generator
from colorgan.train import gan_finetune, pretrain
from conftest import TINY_MODEL, interrupted, tiny_recipe


@pytest.fixture(scope="module")
def stage_one(photo_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("stage1") / "run"
    pretrain(photo_dir, run, recipe=tiny_recipe(model=TINY_MODEL))
    return run


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)]


@pytest.fixture
def learn(photo_dir):
    set_seed(0)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    return gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8))


def test_one_epoch_changes_both_nets_and_keeps_the_critic_apart(learn):
    gan = learn.conditional_gan
    g0, c0 = _snapshot(learn.model), _snapshot(gan.critic)
    learn.fit(1, 1e-3)
    assert _changed(g0, learn.model) and _changed(c0, gan.critic)
    learner_params = {id(p) for p in learn.opt.all_params().itemgot(0)}
    assert not learner_params & {id(p) for p in gan.critic.parameters()}
    assert all(p.requires_grad for p in gan.critic.parameters())
    assert all(p.requires_grad for p in learn.model.parameters())
    for name in GAN_LOG:
        assert math.isfinite(gan.epoch_mean(name)), name


@pytest.mark.parametrize("critic_every", [1, 3])
def test_requires_grad_is_restored_after_each_step(learn, critic_every):
    "The critic is frozen while the generator's loss flows back (it gets no gradient), and thawed after."
    gan, seen = learn.conditional_gan, []
    gan.critic_every = critic_every
    after_backward = ConditionalGAN.after_backward

    def checked(self):
        seen.append(all(not p.requires_grad and p.grad is None for p in self.critic.parameters()))
        after_backward(self)
        seen.append(all(p.requires_grad for p in self.critic.parameters()))
    gan.after_backward = checked.__get__(gan)
    learn.fit(1, 1e-3)
    assert len(seen) == 2 * 2 and all(seen)
    assert all(p.requires_grad for p in gan.critic.parameters())


def test_warmup_trains_the_critic_alone(learn):
    gan = learn.conditional_gan
    gan.warmup = 100  # longer than the epoch
    g0, c0 = _snapshot(learn.model), _snapshot(gan.critic)
    learn.fit(1, 1e-3)
    assert _changed(c0, gan.critic)
    assert not [k for k in _changed(g0, learn.model) if "running" not in k and "num_batches" not in k]


def test_frozen_encoder_stays_put(photo_dir):
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        freeze_encoder=True)
    conv = learn.model[0][0].weight.detach().clone()
    learn.fit(1, 1e-3)
    assert torch.equal(conv, learn.model[0][0].weight) and not learn.model[0][0].weight.requires_grad


@pytest.mark.parametrize("adv_loss", ["lsgan", "hinge"])
def test_other_adversarial_losses_train(photo_dir, adv_loss, monkeypatch):
    import colorgan.gan
    kinds, real = [], colorgan.gan.critic_loss
    monkeypatch.setattr(colorgan.gan, "critic_loss", lambda kind, *a: kinds.append(kind) or real(kind, *a))
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        adv_loss=adv_loss, label_smoothing=0.1, critic_steps=2)
    learn.fit(1, 1e-3)
    assert all(math.isfinite(learn.conditional_gan.epoch_mean(n)) for n in GAN_LOG)
    assert kinds and set(kinds) == {adv_loss}  # the loss asked for, not a fallback to vanilla


def test_adversarial_losses_on_known_logits():
    from colorgan.losses import critic_loss, generator_loss
    x = torch.tensor([[2.0, -1.0]])
    sp = torch.nn.functional.softplus
    assert critic_loss("vanilla", x, True) == pytest.approx(float(sp(-x).mean()))
    assert critic_loss("vanilla", x, False) == pytest.approx(float(sp(x).mean()))
    assert critic_loss("vanilla", x, True, smoothing=0.1) == pytest.approx(float((0.9 * sp(-x) + 0.1 * sp(x)).mean()))
    assert critic_loss("lsgan", x, True) == pytest.approx(((2 - 1) ** 2 + (-1 - 1) ** 2) / 2)
    assert critic_loss("lsgan", x, False) == pytest.approx((2 ** 2 + 1) / 2)
    assert critic_loss("hinge", x, True) == pytest.approx((0 + 2) / 2)
    assert critic_loss("hinge", x, False) == pytest.approx((3 + 0) / 2)
    assert generator_loss("vanilla", x) == pytest.approx(float(sp(-x).mean()))
    assert generator_loss("lsgan", x) == pytest.approx(((2 - 1) ** 2 + (-1 - 1) ** 2) / 2)
    assert generator_loss("hinge", x) == pytest.approx(-0.5)


def test_gan_finetune_logs_losses_and_writes_a_loadable_artefact(photo_dir, stage_one, tmp_path, monkeypatch,
                                                                  caplog):
    import logging
    run = tmp_path / "gan"
    with caplog.at_level(logging.INFO, logger="colorgan"):
        gan_finetune(photo_dir, stage_one, run, recipe=tiny_recipe(critic={"n_filters": 8}))
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    for name in [*GAN_LOG, "valid_loss", "psnr", "colorfulness", "tint_gain"]:
        assert math.isfinite(float(rows[0][name])), name
    start = json.loads((run / "checkpoints" / "start.json").read_text())["tint_gain"]
    assert start < 0.05 and "the generator stage two starts from colours the validation photos only" in caplog.text
    net, meta = load_generator(run)  # the same loader, the same format as stage one
    _, meta1 = load_generator(stage_one)
    assert meta["stage"] == "gan" and meta.keys() == meta1.keys() and meta["build"] == meta1["build"]
    assert (run / "critic.pth").is_file()
    import colorgan.train
    seen = []
    real = colorgan.train.gan_learner
    monkeypatch.setattr(colorgan.train, "gan_learner", lambda dls, gen, critic, **kw: seen.append(
        {k: v.clone() for k, v in critic.state_dict().items()}) or real(dls, gen, critic, **kw))
    gan_finetune(photo_dir, run, tmp_path / "again", recipe=tiny_recipe(critic={"n_filters": 8}))  # GAN in, GAN out
    saved = torch.load(run / "critic.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(seen[0][k], v) for k, v in saved.items())  # the critic that knows this generator


def test_resume_restores_critic_and_optimizers(photo_dir, stage_one, tmp_path, monkeypatch):
    run, recipe = tmp_path / "gan", tiny_recipe(critic={"n_filters": 8}, fit={"n_epoch": 2})
    interrupted(gan_finetune, photo_dir, stage_one, run, recipe=recipe)
    saved = torch.load(run / "checkpoints/last.pth", weights_only=True)

    seen = {}
    before_fit = ConditionalGAN.before_fit

    def spy(self):
        before_fit(self)
        seen["critic"] = _snapshot(self.critic)
        seen["critic_opt"] = copy.deepcopy(self.critic_opt.state_dict())  # live tensors: Adam updates in place
        seen["opt"] = copy.deepcopy(self.learn.opt.state_dict())
    monkeypatch.setattr(ConditionalGAN, "before_fit", spy)
    gan_finetune(photo_dir, stage_one, run, resume=True)
    assert all(torch.equal(seen["critic"][k], v) for k, v in saved["critic"].items())
    exp_avg = [s["exp_avg"] for s in seen["critic_opt"]["state"].values()]
    assert exp_avg and all(torch.equal(a, s["exp_avg"]) for a, s in zip(exp_avg, saved["critic_opt"]["state"].values()))
    assert torch.equal(seen["opt"]["state"][0]["exp_avg"], saved["opt"]["state"][0]["exp_avg"])
    assert saved["gan_batches"] > 0
    assert torch.load(run / "checkpoints/last.pth", weights_only=True)["epoch"] == 2
    assert "ema_raw" in saved and "ema" not in saved  # the average is the saved model: the generator twice, not 3x


def test_works_with_fastai_callbacks(learn, tmp_path):
    "fit_one_cycle drives the generator; CSVLogger and SaveModelCallback see the GAN's columns and model."
    from fastai.callback.progress import CSVLogger
    from fastai.callback.tracker import SaveModelCallback
    learn.path = tmp_path
    learn.fit_one_cycle(2, 1e-3, cbs=[CSVLogger("log.csv"), SaveModelCallback(monitor="valid_loss", fname="best")])
    with open(tmp_path / "log.csv") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["epoch", "train_loss", "valid_loss"] and set(GAN_LOG) <= set(header)
    assert (tmp_path / "models" / "best.pth").is_file()
    lrs = learn.recorder.hps["lr"]
    assert max(lrs) > 5 * min(lrs)  # the one-cycle schedule moved the generator's learning rate


def _critic_state(gan):
    return (_snapshot(gan.critic), copy.deepcopy(gan.critic_opt.state_dict()), gan.n_batches)


def test_lr_find_leaves_the_critic_as_it_found_it(learn):
    "lr_find drives the whole GAN step, then puts back the critic's weights, its optimizer and the warm-up count."
    gan = learn.conditional_gan
    gan.warmup = 1
    learn.fit(1, 1e-3)  # a critic with optimizer state and a counter past its warm-up
    weights, opt_state, batches = _critic_state(gan)
    g0 = _snapshot(learn.model)
    learn.lr_find(start_lr=1e-5, end_lr=1e-2, num_it=6, show_plot=False, suggest_funcs=())
    after_weights, after_opt, after_batches = _critic_state(gan)
    assert not _changed(weights, gan.critic) and after_batches == batches
    flat = lambda state: [t for s in state["state"].values() for t in s.values() if torch.is_tensor(t)]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(flat(opt_state), flat(after_opt)))
    assert not _changed(g0, learn.model)  # fastai's LRFinder restores the generator itself
    assert len(learn.recorder.losses) >= 2  # it did measure the loss


def test_ema_weights_are_validated_and_kept(photo_dir):
    "Validation sees the averaged generator, and after the fit the model holds it."
    from colorgan.callbacks import GeneratorEMA
    set_seed(0)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        ema_decay=0.5)
    ema, seen = learn.generator_ema, {}
    swap_in = GeneratorEMA._swap_in

    def spy(self):
        seen["raw"] = [t.clone() for t in self._tensors()]
        swap_in(self)
        seen["validated"] = [t.clone() for t in self._tensors()]
        seen["shadow"] = [t.clone() for t in self.shadow]
    ema._swap_in = spy.__get__(ema)
    learn.fit(1, 1e-2)
    floats = [i for i, t in enumerate(seen["raw"]) if t.is_floating_point()]
    assert all(torch.equal(seen["validated"][i], seen["shadow"][i]) for i in floats)
    assert any(not torch.equal(seen["validated"][i], seen["raw"][i]) for i in floats)  # averaged, not the raw
    final = list(learn.model.state_dict().values())
    assert all(torch.equal(final[i], seen["shadow"][i]) for i in floats)


class _SeenByValidation(Callback):
    "The generator's weights at each validation (after GeneratorEMA, order 64, has swapped in what it swaps)."
    order = 66

    def __init__(self): self.seen, self.stepped = [], None
    def after_step(self): self.stepped = _snapshot(self.model)
    def before_validate(self): self.seen.append(_snapshot(self.model))


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_validation_sees_the_raw_weights_only_without_ema(photo_dir, ema_decay):
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        ema_decay=ema_decay)
    assert hasattr(learn, "generator_ema") == bool(ema_decay)
    probe = _SeenByValidation()
    learn.fit(1, 1e-3, cbs=[probe])
    raw, validated = probe.stepped, probe.seen[-1]
    same = all(torch.equal(raw[k], validated[k]) for k in raw if raw[k].is_floating_point())
    assert same == (ema_decay is None)  # with EMA, validation sees the average, not the last step's weights


def test_two_fits_train_on_as_one(photo_dir):
    "fit(1); fit(1) equals fit(2): the EMA hands the raw weights back to the next fit, not the average."
    results = []
    for epochs in ([1, 1], [2]):
        set_seed(0)
        dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
        learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32),
                            build_critic(n_filters=8), ema_decay=0.9)
        for n in epochs:
            learn.fit(n, 1e-3)
        results.append(_snapshot(learn.model))
    assert all(torch.allclose(results[0][k].float(), results[1][k].float(), atol=1e-6) for k in results[0])


def test_stage_two_schedule_is_on_the_learner(learn):
    "Every fastai fit method trains stage two with its momentum: fit_one_cycle from Python as the CLI does."
    from colorgan.gan import GAN_LR, GAN_MOMS
    assert learn.moms == GAN_MOMS and learn.lr == GAN_LR
    learn.fit_one_cycle(1)
    assert [h["mom"] for h in learn.opt.hypers] == [0.5, 0.5]
    assert learn.recorder.hps["lr"][0] == pytest.approx(GAN_LR / 25)  # one-cycle starts at lr_max / div


def test_exported_stage_two_is_small_and_predicts_on_cpu(photo_dir, tmp_path, astronaut):
    from fastai.learner import load_learner
    from colorgan.learner import pretrain_learner
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    one = pretrain_learner(dls, pretrained=False, width=0.25)
    one.export(tmp_path / "one.pkl")
    gan = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                      precision="bf16")
    gan.fit(1, 1e-3)
    gan.export(tmp_path / "gan.pkl")
    ratio = (tmp_path / "gan.pkl").stat().st_size / (tmp_path / "one.pkl").stat().st_size
    assert ratio < 1.5, ratio  # no critic optimizer, no EMA copies of the generator
    again = load_learner(tmp_path / "gan.pkl", cpu=True)
    assert not hasattr(again, "mixed_precision")  # fastai stripped it by name
    critic = again.conditional_gan.critic
    c0 = _snapshot(critic)
    again.conditional_gan.critic = _Exploding()  # predict must not touch the critic
    rgb, ab, _ = again.predict(astronaut)
    assert rgb.shape == (3, 32, 32) and torch.isfinite(ab).all()
    again.conditional_gan.critic = critic
    assert all(torch.equal(c0[k], v) for k, v in critic.state_dict().items())


class _Exploding(torch.nn.Module):
    def forward(self, x): raise AssertionError("the critic was used")
    def to(self, *args, **kwargs): raise AssertionError("the critic was moved")


def test_save_generator_from_python_goes_to_colorize(photo_dir, tmp_path, astronaut):
    from colorgan.artifacts import save_generator
    from colorgan.cli import main
    from click.testing import CliRunner
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32, out_stride=2),
                        build_critic(n_filters=8))
    save_generator(learn.model, tmp_path / "g.pth")
    net, meta = load_generator(tmp_path / "g.pth")
    assert meta["build"]["out_stride"] == 2 and meta["size"] == 32
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in net.state_dict().items())
    astronaut.save(tmp_path / "in.png")
    r = CliRunner().invoke(main, ["colorize", str(tmp_path / "g.pth"), str(tmp_path / "in.png"), "--out",
                                  str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_stage_two_writes_the_generator_its_rule_kept(photo_dir, stage_one, tmp_path):
    "generator.pth is best.pth (the EMA generator the rule kept), and the start is the first candidate."
    run = tmp_path / "gan"
    gan_finetune(photo_dir, stage_one, run, recipe=tiny_recipe(critic={"n_filters": 8}, fit={"n_epoch": 2}))
    best = torch.load(run / "checkpoints/best.pth", weights_only=True)["state_dict"]
    final = torch.load(run / "generator.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert (run / "checkpoints/start.json").is_file()
    recipe = (run / "recipe.resolved.toml").read_text()
    for line in ("[keep]", "max_psnr_drop = 0.5", "ema_decay = 0.99"):
        assert line in recipe, line


def test_critic_steps_and_critic_every_count_as_documented(photo_dir, monkeypatch):
    "7 batches, warmup 2 (one critic step each), then every 2nd batch 3 critic steps: 2 + 3 * 3 = 11."
    from colorgan.gan import ConditionalGAN
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=7)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        warmup=2, critic_every=2, critic_steps=3)
    steps, real = [], ConditionalGAN._critic_step
    monkeypatch.setattr(ConditionalGAN, "_critic_step", lambda self: steps.append(self.n_batches) or real(self))
    learn.fit(1, 1e-4)
    assert steps == [0, 1, 2, 2, 2, 4, 4, 4, 6, 6, 6]


def test_stage_two_validates_the_plain_l1_of_its_generator(learn):
    "valid_loss is the generator's L1 on the validation photos: no adversarial term, no critic, no EMA drift."
    l1, n = 0.0, 0
    learn.model.eval()
    with torch.no_grad():
        for l, ab in learn.dls.valid:
            l1 += torch.nn.functional.l1_loss(learn.model(l), ab, reduction="sum").item() / ab[0].numel()
            n += len(l)
    assert learn.validate()[0] == pytest.approx(l1 / n, rel=1e-4)


def test_gan_learner_shows_every_option_and_its_loss_columns_are_value_metrics(learn):
    import inspect

    from fastai.metrics import ValueMetric
    params = inspect.signature(gan_learner).parameters
    assert {"adv_loss", "lambda_l1", "critic_lr", "warmup", "label_smoothing"} <= params.keys()  # help() shows them
    columns = [m for m in learn.metrics if isinstance(m, ValueMetric)]
    assert [m.name for m in columns] == list(GAN_LOG)
    learn.fit(1, 1e-4)
    assert all(math.isfinite(m.value) for m in columns)


def test_warm_up_batches_hold_the_schedule_and_stay_out_of_the_training_loss(photo_dir):
    "The critic alone for 3 batches: the generator's first step gets the schedule's first learning rate."
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=6, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        warmup=3)
    learn.fit_one_cycle(2)
    lrs = learn.recorder.hps["lr"]
    assert len(lrs) == 12 and lrs[0] == lrs[1] == lrs[2] == lrs[3]  # 3 warm-up batches, then the first step
    assert lrs[4] > lrs[3]  # and on from there
    assert len(learn.recorder.losses) == 12 - 3  # the smoothed training loss counts the generator's batches only
    plain = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8))
    plain.fit_one_cycle(2)
    assert lrs[6:] == pytest.approx(plain.recorder.hps["lr"][6:])  # the second epoch follows the schedule as planned


def test_the_critic_follows_the_data_not_a_gpu_policy(photo_dir):
    "A stage-two Learner whose policy says GPU (bf16 CUDA), handed CPU data: the critic trains on the CPU, in fp32."
    from colorgan.device import DevicePolicy
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=1, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8))
    learn.policy = DevicePolicy("cuda:0", "bf16", False, False, False)
    gan = learn.conditional_gan
    gan._setup()
    assert next(gan.critic.parameters()).device.type == "cpu"
    assert gan.device_type == "cpu" and gan.amp_dtype is None


def test_a_fit_that_dies_after_the_generators_loss_leaves_the_critic_trainable(photo_dir):
    """An exception between the generator's loss (critic frozen) and its backward: the critic is trainable again
    when the next fit starts. It shows where that fit's first step is the critic's: a warm-up batch, after the
    state of a checkpoint written during warm-up is loaded back into the same Learner (before: 'element 0 of
    tensors does not require grad')."""
    import copy

    from fastai.callback.core import Callback

    from colorgan.data import photo_dls
    from colorgan.gan import ConditionalGAN, gan_learner
    from colorgan.models import build_critic, build_generator
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, epoch_batches=2, decode_workers=1)
    learn = gan_learner(dls, build_generator(pretrained=False, width=0.25, img_size=32), build_critic(n_filters=8),
                        ema_decay=None, warmup=1)
    gan = learn.conditional_gan
    early = copy.deepcopy(gan.checkpoint_state())  # no batch yet: the warm-up still to come

    class Die(Callback):
        order = ConditionalGAN.order + 1
        def after_loss(self): raise RuntimeError("out of memory, say")
    with pytest.raises(RuntimeError, match="out of memory"):
        learn.fit(1, 1e-3, cbs=[Die()])  # batch 1 warms the critic up, batch 2 dies with the critic frozen
    gan.load_checkpoint_state(early)
    before = [p.detach().clone() for p in gan.critic.parameters()]
    learn.fit(1, 1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.critic.parameters()))
    assert all(p.requires_grad for p in gan.critic.parameters())
