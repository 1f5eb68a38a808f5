"""Colorize any photo at full resolution with a trained generator (either stage's artefact).

As DeOldify and DDColor do it: the network predicts ab at a render size (the short side at `render_size`, as in
training, the aspect ratio kept, each side a multiple of the network's stride 32), the chroma is upsampled to the
photo's size and recombined with the photo's own full-resolution L. The network's memory is bounded by the render
size, so a 6000x4000 photo runs as easily as a thumbnail, and the output keeps the input's size, orientation and
lightness.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .artifacts import load_generator, resolve_artifact
from .models import STRIDE
from .color import chroma_table, denorm_ab, lab_to_rgb8, norm_l, rgb8_and_redo
from .device import resolve_device, resolve_precision
from .photos import default_cache_dir, pil_to_l, writable_cache
from .utils import ColorganError, is_stamped, log, remove_stamped, sha256_of, write_stamp

__all__ = ["Colorizer", "render_shape", "resolve_engine", "STRIDE", "ENGINES"]



STRIP_ROWS = 64  # the recombination's strips: temporaries stay in cache (256 rows: 1.4x slower compiled, to 1.7x eager)
FUSE_AFTER_PIXELS = 500_000_000  # fused="auto": build the fused recombination once a Colorizer has done this many


def render_shape(h: int, w: int, render_size: int, max_aspect: float = 3.0) -> tuple[int, int]:
    """The network's input size for an (h, w) photo: the short side at `render_size`, as the training photos had it
    (so objects reach the network at the scale it learnt them), the long side at most `max_aspect` times that,
    aspect kept, each side a multiple of 32."""
    scale = min(render_size / min(h, w), max_aspect * render_size / max(h, w))
    return (max(STRIDE, round(h * scale / STRIDE) * STRIDE), max(STRIDE, round(w * scale / STRIDE) * STRIDE))


ENGINES = ("auto", "torch", "onnxruntime")


def resolve_engine(engine: str, device: torch.device, precision: str) -> str:
    """Which runtime runs the network. auto: onnxruntime on a CPU in fp32 when it is installed (the same colours
    as torch, within 1e-4, and 1.4x faster there than torch channels-last: docs/performance.md), torch otherwise."""
    if engine not in ENGINES:
        raise ColorganError(f"engine must be one of {', '.join(ENGINES)}, not '{engine}'")
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if engine == "auto":
        return "onnxruntime" if device.type == "cpu" and precision == "fp32" and has_ort else "torch"
    if engine == "onnxruntime" and (device.type != "cpu" or precision != "fp32"):
        raise ColorganError(f"the onnxruntime engine runs on the CPU in fp32 here, not on {device} in {precision}: "
                            f"use --engine torch")
    if engine == "onnxruntime" and not has_ort:
        raise ColorganError("the onnxruntime engine needs its package: pip install 'colorgan[onnx]'")
    return engine


def cached_onnx(artifact: Path, rebuild: bool = False) -> Path:
    """The artefact's ONNX graph in the cache folder, under the artefact's hash, exported once and checked against
    torch within 1e-3. A stamp beside it holds the graph's hash and the artefact's: a cached file that was
    truncated, emptied, changed or replaced (by a folder, another model's graph with its own stamp) no longer
    matches it and is exported again; so is one when `rebuild` (onnxruntime could not load it)."""
    from .export import export_onnx
    source = sha256_of(artifact)
    path = default_cache_dir() / "onnx" / f"generator-{source[:24]}.onnx"
    if is_stamped(path, source) and not rebuild:
        return path
    path = writable_cache(path.parent) / path.name  # a cache this process cannot write: a temporary stand-in
    remove_stamped(path)
    log.info(f"exporting {artifact} for onnxruntime, once (kept in {path.parent})")
    export_onnx(artifact, path, overwrite=True)  # named only once written and checked: a failed one leaves no file
    write_stamp(path, source)
    return path


def onnx_session(artifact: Path):
    """An onnxruntime session of an artefact's generator (L in CIELAB units in, ab out), from `cached_onnx`; a
    cached graph onnxruntime cannot load (damaged, or from an onnxruntime it no longer reads) is exported again."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
    try:
        return ort.InferenceSession(str(cached_onnx(artifact)), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  onnxruntime's own errors (INVALID_PROTOBUF, ...) have no common base
        log.warning(f"the cached ONNX graph of {artifact} could not be loaded ({type(e).__name__}); exporting it again")
    return ort.InferenceSession(str(cached_onnx(artifact, rebuild=True)), options, providers=["CPUExecutionProvider"])


class Colorizer:
    """A trained generator as a function: PIL image in, colorized full-resolution PIL image out.

    `saturation` scales the predicted chroma (1.0: the model as trained, 0: the photo's own gray) before colours
    outside sRGB are brought inside at constant lightness and hue. `precision` follows the device policy (fp32 on a
    CPU: bf16 there is faster but moves colours by about half a CIELAB unit; ask for it with precision='bf16').
    torch runs the network channels-last under `torch.inference_mode` from its first layer to its last (nothing
    it returns records an autograd graph); `from_artifact` picks onnxruntime where it is faster
    (`resolve_engine`)."""
    def __init__(self, model: torch.nn.Module, render_size: int = 256, device=None, strip_rows: int = STRIP_ROWS,
                 precision: str = "auto", saturation: float = 1.0, fused: bool | str = "auto"):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)  # the device policy's choice, as in training
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.render_size, self.strip_rows, self.saturation = render_size, strip_rows, saturation
        self.engine, self.session = "torch", None
        if fused not in (True, False, "auto"):
            raise ColorganError(f"fused must be true, false or 'auto', not {fused!r}")
        self.fused, self._combined_pixels = fused, 0

    @property
    def saturation(self) -> float:
        return self._saturation

    @saturation.setter
    def saturation(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and 0 <= value <= 4):
            raise ColorganError(f"saturation must be a number from 0 (gray) to 4, not {value!r}")
        self._saturation = float(value)

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, render_size: int | None = None, device=None,
                      saturation: float = 1.0, engine: str = "auto") -> "Colorizer":
        """From a run folder or generator.pth; the render size defaults to the model's training size; `engine`:
        auto, torch or onnxruntime (`resolve_engine`)."""
        model, meta = load_generator(path)
        colorizer = cls(model, render_size or meta["size"], device, saturation=saturation)
        if resolve_engine(engine, colorizer.device, colorizer.precision) == "onnxruntime":
            colorizer.session, colorizer.engine = onnx_session(resolve_artifact(path)), "onnxruntime"
        return colorizer

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.colorize([img])[0]

    def lightness(self, img: Image.Image) -> torch.Tensor:
        "The photo's full-resolution CIELAB L, (1,1,H,W) in [0,100], EXIF orientation applied, on the CPU."
        return pil_to_l(img)

    @torch.inference_mode()
    def render_l(self, l: torch.Tensor) -> torch.Tensor:
        "A full-res L map (1,1,H,W) -> the network's input: L at the render size (`render_shape`)."
        return F.interpolate(l, size=render_shape(*l.shape[-2:], self.render_size), mode="bilinear", antialias=True,
                             align_corners=False)

    @torch.inference_mode()
    def predict_ab(self, lightness: list[torch.Tensor]) -> list[torch.Tensor]:
        """Full-res L maps -> low-res ab maps (CIELAB units, as the model predicts them: no saturation), photos of
        the same render shape batched together. Under inference mode: the ab records no autograd graph."""
        return self.predict_small([self.render_l(l) for l in lightness])

    @torch.inference_mode()
    def predict_small(self, small: list[torch.Tensor]) -> list[torch.Tensor]:
        "Render-size L maps -> their ab, those of the same shape in one batch, under inference mode."
        out: list[torch.Tensor | None] = [None] * len(small)
        for shape in {s.shape[-2:] for s in small}:
            idx = [i for i, s in enumerate(small) if s.shape[-2:] == shape]
            ab = self._network(torch.cat([small[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = ab[j:j + 1]
        return out

    @torch.inference_mode()
    def _network(self, l: torch.Tensor) -> torch.Tensor:
        "L (N,1,h,w) in CIELAB units -> ab in CIELAB units, on the CPU, under inference mode (no autograd graph)."
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"L": l.numpy()})[0])
        batch = norm_l(l.to(self.device)).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return denorm_ab(self.model(batch).float()).cpu()

    def _autocast(self):
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    @torch.inference_mode()
    def combine(self, l: torch.Tensor, ab_small: torch.Tensor, saturation: float | None = None) -> np.ndarray:
        """Full-res L + upsampled chroma times `saturation` (default: the Colorizer's) -> uint8 RGB (H,W,3), colours
        outside sRGB brought in at constant L and hue, in strips of rows to bound memory. The bilinear upsampling
        is separable: the chroma is widened to the photo's width once, each strip blends two of its rows."""
        ab_small = ab_small * (self.saturation if saturation is None else saturation)
        h, w = l.shape[-2:]
        out = np.empty((h, w, 3), dtype=np.uint8)
        wide = F.interpolate(ab_small, size=(ab_small.shape[-2], w), mode="bilinear", align_corners=False)
        blend = _row_blend(ab_small.shape[-2], h)
        fused, redo = self._fused_strip(h * w), []  # redo: (row, column) of colours left to bisection
        outside = False  # a strip so far had a colour outside sRGB: the fused loop takes the rest unchecked
        for top in range(0, h, self.strip_rows):
            rows = slice(top, min(top + self.strip_rows, h))
            lab = _strip_lab(l[..., rows, :], wide, *(t[rows] for t in blend))
            if outside and fused is not None:
                rgb8, untrusted = fused(lab, chroma_table("cpu"))
            else:
                rgb8, untrusted = rgb8_and_redo(lab, fused=fused)
                outside = untrusted is not None
            out[rows] = rgb8[0].numpy()
            if untrusted is not None:
                redo.append(untrusted[0, 0].nonzero() + torch.tensor([top, 0]))
        if redo and len(redo := torch.cat(redo)):  # the few colours one Newton step leaves: bisection's path
            r, c = redo.unbind(1)
            ab = torch.lerp(wide[0][:, blend[0][r], c], wide[0][:, blend[1][r], c], blend[2][r, 0])
            lab = torch.cat([l[0, :, r, c], ab])[None, :, :, None]
            out[r.numpy(), c.numpy()] = lab_to_rgb8(lab)[0, :, 0].numpy()
        self._combined_pixels += h * w
        return out

    def _fused_strip(self, pixels: int):
        """`rgb8_and_redo` compiled (`colorgan.fused`), for the strips with a colour outside sRGB, when `fused` asks
        for it, else None. True: built now if this machine has not built it yet; auto, on a CPU: whenever this
        machine has built it, and built once this Colorizer has recombined `FUSE_AFTER_PIXELS` (the build costs
        12-25 s on 2 cores here, once a machine; docs/performance.md)."""
        if self.fused is False or (self.fused == "auto" and self.device.type != "cpu"):
            return None
        return _compiled_strip(self.fused is True or self._combined_pixels + pixels > FUSE_AFTER_PIXELS)

    def colorize_video(self, src: str | os.PathLike, dst: str | os.PathLike, temporal: float = 0.6, bs: int = 8,
                       progress: bool = True) -> dict:
        "A film in, the same film in colour out, flicker smoothed (`colorgan.video.colorize_video`)."
        from .video import colorize_video
        return colorize_video(self, src, dst, temporal=temporal, bs=bs, progress=progress)

    def colorize(self, images: list[Image.Image]) -> list[Image.Image]:
        "Colorize several photos; those of the same render shape share one network call."
        lightness = [self.lightness(img) for img in images]
        return [Image.fromarray(self.combine(l, ab)) for l, ab in zip(lightness, self.predict_ab(lightness))]


def _row_blend(small: int, h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `h` output rows, the two rows of a `small`-row map that bilinear upsampling (align_corners=False,
    as F.interpolate) blends, and the weight of the second, shaped (h,1) to broadcast over a strip's columns."""
    src = ((torch.arange(h, dtype=torch.float64) + 0.5) * small / h - 0.5).clamp_(min=0)
    upper = src.floor().long().clamp_(max=small - 1)
    return upper, (upper + 1).clamp_(max=small - 1), (src - upper).float()[:, None]


def _strip_lab(l: torch.Tensor, wide: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor,
               weight: torch.Tensor) -> torch.Tensor:
    "One strip of `combine` in CIELAB (1,3,rows,W): its rows of L, and of the chroma blended from `wide`'s rows."
    return torch.cat([l, torch.lerp(wide.index_select(2, upper), wide.index_select(2, lower), weight)], 1)


def _compiled_strip(build: bool):
    "`colorgan.fused.fused_loop`: the fused loop this machine has built (or builds now, when `build`), or None."
    from .fused import fused_loop
    return fused_loop(build)
