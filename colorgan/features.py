"""Stage one on a frozen body, without running the body at every step: its features of a few stored views (crops
and flips) of every training photo are computed once, and each step trains the decoder on one view of each photo.

A frozen body (`fit.freeze_pct = 1`) makes its features a function of the photo and its crop alone, as long as
the body runs in eval mode (BatchNorm on its stored statistics, as at inference). On a CPU the body's forward pass
is a quarter to half of a frozen step (docs/gan.md, round eight), so the same minutes buy more decoder steps, or
the body can see the photos larger for the same cost. The price: `n_views` fixed crops of each photo instead of a
new one at every epoch, and their features in memory (`FeatureViews.nbytes`, checked against the memory free).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler
from fastai.vision.models.unet import UnetBlock

from .data import crop_thetas
from .distributed import is_distributed
from .utils import ColorganError, log

__all__ = ["FeatureViews", "FrozenFeatures", "compute_views", "skip_hooks"]

MEMORY_SHARE = 0.5  # the features may take at most this share of the memory free when they are computed


class FeatureViews:
    """`thetas` (N, V, 2, 3): V crops of each of a dataset's N photos (`crop_thetas`); `features`: the body's outputs
    at each skip connection and its last, each (N, V, C, H, W) on the CPU. `draw` picks one view of each photo asked
    for, at random, as a LabDataLoader batch carries it: (crops, *features)."""
    def __init__(self, thetas: torch.Tensor, features: list[torch.Tensor], key: tuple = ()):
        self.thetas, self.features, self.key = thetas, features, key

    n_views = property(lambda self: self.thetas.shape[1])
    nbytes = property(lambda self: sum(f.nbytes for f in self.features))

    def draw(self, positions: np.ndarray) -> tuple[torch.Tensor, ...]:
        pos = torch.as_tensor(positions, dtype=torch.long)
        view = torch.randint(self.n_views, (len(pos),))
        return (self.thetas[pos, view], *[f[pos, view] for f in self.features])


def skip_hooks(unet: torch.nn.Module) -> list:
    "The hooks on the body that the decoder's UnetBlocks read, in the order they read them."
    return [layer.hook for layer in unet.layers if isinstance(layer, UnetBlock)]


def _meminfo_available() -> int | None:
    "What the kernel calls available (MemAvailable: free memory and the page cache it can drop), or None."
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def _cgroup_room() -> int | None:
    "What this process's cgroup (v2) may still take, a container's memory.max less memory.current, or None."
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def _address_space_room() -> int | None:
    "What `ulimit -v` (RLIMIT_AS) leaves this process beyond what it has mapped, or None without a limit."
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        return soft - size
    except (ImportError, OSError, StopIteration, ValueError):
        return None


def _free_bytes() -> int:
    """The memory this process can still take: the least of what the machine has available, its cgroup's room
    (a container's limit) and its address-space limit; unbounded where none can be read (Windows)."""
    rooms = [r for r in (_meminfo_available(), _cgroup_room(), _address_space_room()) if r is not None]
    return max(0, min(rooms)) if rooms else 1 << 62


def _check_room(per_view: int, n: int, n_views: int) -> None:
    need, free = per_view * n * n_views, _free_bytes()
    if need > MEMORY_SHARE * free:
        raise ColorganError(f"the body's features of {n_views} view(s) of {n} photos need {need / 2**30:.1f} GiB, more "
                            f"than half the {free / 2**30:.1f} GiB of memory this process can still take (what the "
                            f"machine has available, or its container's or ulimit's limit): fewer views "
                            f"(learner.feature_views), a smaller data.size, or 0 views to run the body at every step")


def _key(body: torch.nn.Module, dataset, n_views: int) -> tuple:
    "What the stored features depend on: the photos, the views asked for, and the body's weights and statistics."
    state = torch.stack([t.detach().double().sum().cpu() for t in body.state_dict().values() if t.is_floating_point()])
    return id(dataset), len(dataset), n_views, state.sum().item(), state.abs().sum().item()


@torch.no_grad()
def compute_views(unet: torch.nn.Module, dl, n_views: int, amp_dtype: torch.dtype | None = None) -> FeatureViews:
    """The body's features of `n_views` random crops of each photo of `dl`'s dataset (its LabDataLoader's crop
    settings; one view, the whole photo, when it does not augment), the body in eval mode, under autocast to
    `amp_dtype` when given (the Learner's precision)."""
    body, hooks, n = unet[0], skip_hooks(unet), len(dl.dataset)
    key = _key(body, dl.dataset, n_views)  # the views asked for, which FrozenFeatures compares against
    if dl.augment:
        thetas = torch.stack([crop_thetas(n, dl.min_scale) for _ in range(n_views)], 1)
    else:
        n_views, thetas = 1, torch.eye(2, 3).expand(n, 1, 2, 3).contiguous()
    device, was_training, features = next(unet.parameters()).device, body.training, None
    autocast = torch.autocast(device.type, amp_dtype) if amp_dtype else contextlib.nullcontext()
    body.eval()
    try:
        for v in range(n_views):
            for start in range(0, n, dl.bs):
                pos = np.arange(start, min(start + dl.bs, n))
                rgb = torch.from_numpy(np.ascontiguousarray(dl.dataset[pos])).to(device)
                l, _ = dl.to_lab((rgb, thetas[pos, v]))
                with autocast:
                    last = body(l)
                outs = [h.stored for h in hooks] + [last]
                if features is None:
                    _check_room(sum(o[0].nbytes for o in outs), n, n_views)
                    features = [torch.empty((n, n_views, *o.shape[1:]), dtype=o.dtype) for o in outs]
                for f, o in zip(features, outs):
                    f[pos, v] = o.cpu()
    finally:
        body.train(was_training)
    return FeatureViews(thetas, features, key)


def _compiled(model: torch.nn.Module) -> bool:
    "Whether torch.compile wraps `model`: in place (`Module.compile`, colorgan's `compile_model`) or around it."
    return getattr(model, "_compiled_call_impl", None) is not None or hasattr(model, "_orig_mod")


class FrozenFeatures(Callback):
    """Train the decoder on the body's features of `n_views` stored views of each training photo, computed at the
    first training phase of a fit (and again only when the photos or the body's weights change) instead of at
    every step; `validate`, `get_preds` and `predict` never compute them. The body is frozen (every parameter) and
    not run on training batches for the fit; validation runs the whole generator.
    Off, with a warning, under several processes or torch.compile. A body thawed during the fit (FreezeBody with
    a `pct` below 1) is an error: its stored features would be stale."""
    order = ParamScheduler.order + 2  # after FreezeBody, which may thaw the body in its before_batch

    def __init__(self, n_views: int = 2):
        if n_views < 1:
            raise ColorganError(f"FrozenFeatures needs at least one view of each photo, not {n_views}")
        self.n_views, self.views, self.pending, self.active, self.checked = n_views, None, None, False, False

    def __getstate__(self) -> dict:  # an exported Learner carries no features
        return {**self.__dict__, "views": None, "pending": None}

    def before_fit(self):
        "Nothing yet: fastai's validate, get_preds and predict open a fit too, and never train (`before_train`)."
        if self.active:  # a fit that died with an exception left the body swapped and frozen
            self.after_fit()
        self.checked = False

    def before_train(self):
        "The first training phase of a fit: the body frozen, its features computed (or reused), its forward swapped."
        if self.checked:
            return
        self.checked, self.active = True, self._can_run()
        if not self.active:
            return
        unet = self.learn.model
        self.body, self.hooks = unet[0], skip_hooks(unet)
        self.trainable = [p.requires_grad for p in self.body.parameters()]
        self.body.requires_grad_(False)
        if self.views is None or self.views.key != _key(self.body, self.dls.train.dataset, self.n_views):
            self.views = self._compute()
        self.dls.train.views = self.views
        self.body.forward = self._forward  # an instance attribute: nn.Module.__call__ finds it first

    def _compute(self) -> FeatureViews:
        policy = getattr(self.learn, "policy", None)
        views = compute_views(self.learn.model, self.dls.train, self.n_views, policy and policy.amp_dtype)
        log.info(f"the frozen body's features of {self.n_views} view(s) of {len(self.dls.train.dataset)} training "
                 f"photos: {views.nbytes / 2**20:.0f} MiB, computed once")
        return views

    def _can_run(self) -> bool:
        why = ("several processes train" if is_distributed() else
               "the model is compiled" if _compiled(self.learn.model) else
               "the training loader is not colorgan's" if not hasattr(self.dls.train, "views") else None)
        if why:
            log.warning(f"FrozenFeatures is off for this fit: {why}; the body runs at every step")
        return why is None

    def before_batch(self):
        if not (self.active and self.training and len(self.learn.yb) > 1):
            return
        if any(p.requires_grad for p in self.body.parameters()):
            raise ColorganError("the body was thawed during a fit whose features are stored (FrozenFeatures): keep "
                                "it frozen throughout (fit.freeze_pct = 1) or set learner.feature_views = 0")
        self.pending, self.learn.yb = self.learn.yb[1:], self.learn.yb[:1]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        "The body's forward: a training batch's stored features, or, for any other batch, the body itself."
        if self.pending is None:
            return type(self.body).forward(self.body, x)
        features, self.pending = self.pending, None
        for hook, f in zip(self.hooks, features):
            hook.stored = f
        return features[-1]

    def after_fit(self):
        if not self.active:
            return
        del self.body.forward
        self.dls.train.views, self.pending, self.active = None, None, False
        for p, t in zip(self.body.parameters(), self.trainable):
            p.requires_grad_(t)
