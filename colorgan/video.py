"""Film: `colorgan colorize MODEL film.mp4 --out DIR`, and `Colorizer.colorize_video` in Python.

Frames are decoded with PyAV (the `video` extra: FFmpeg comes in its wheels), colorized at the render size a batch
at a time, recombined with each frame's own full-resolution lightness, and encoded again (H.264, or VP9 for .webm)
at the source's size and frame rate, the audio packets copied unchanged. Only a batch of frames is held at once,
so memory does not grow with the film's length. The output is written beside its final name and renamed into place
once complete: a broken or unsupported file leaves nothing half-written under that name.

Flicker, colour that jumps from frame to frame, is what colorizing each frame alone gives. `temporal` smooths each
frame's predicted chroma with that of the frames before it, an exponential average, while the scene holds; a cut
(the render-size lightness changes by more than `CUT` on average) starts it again, so no colour crosses a cut.
"""
from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .photos import fcntl, remove_orphans
from .utils import ColorganError, atomic_path, log, require_extra

__all__ = ["colorize_video", "is_video", "TemporalAB", "flicker", "VIDEO_SUFFIXES", "CUT"]

VIDEO_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
CUT = 10.0  # mean |change of L| (CIELAB units) between two frames' render-size lightness that starts a new scene


def is_video(path: str | os.PathLike) -> bool:
    "Whether `path` names a film by its suffix (a still image sequence folder stays photos)."
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


class TemporalAB:
    """Chroma smoothed over time: ab_t = (1 - strength) * predicted_t + strength * ab_(t-1) while the scene holds;
    the first frame, and a frame whose lightness moved by more than `cut` on average (a cut), take their own."""
    def __init__(self, strength: float, cut: float = CUT):
        if not 0 <= strength < 1:
            raise ColorganError(f"--temporal must be in [0, 1), not {strength}")
        self.strength, self.cut, self.ab, self.l = strength, cut, None, None

    def __call__(self, l: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, bool]:
        "(render-size L, its predicted ab) -> (the ab to use, whether a new scene began here)."
        new_scene = self.l is None or self.l.shape != l.shape or (l - self.l).abs().mean().item() > self.cut
        if not new_scene and self.strength:
            ab = torch.lerp(ab, self.ab, self.strength)
        self.ab, self.l = ab, l
        return ab, new_scene


def flicker(frames_lab: list[torch.Tensor], still: float = 1.0) -> float:
    """The mean frame-to-frame change of a and b (CIELAB units) over the pixels whose lightness changed by less
    than `still`: colour that moves where nothing in the picture did. `frames_lab`: (3,H,W) CIELAB frames."""
    total, count = 0.0, 0
    for before, after in zip(frames_lab, frames_lab[1:]):
        calm = (after[0] - before[0]).abs() < still
        total += (after[1:] - before[1:]).abs().mean(0)[calm].sum().item()
        count += int(calm.sum())
    return total / count if count else float("nan")


def _open(src: Path):
    import av
    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as e:
        raise ColorganError(f"{src}: cannot read it as a film ({type(e).__name__}: {e})") from None
    if not inp.streams.video:
        inp.close()
        raise ColorganError(f"{src}: has no video stream")
    return inp


def _output(out, vin, dst: Path):
    """The encoder: H.264 (VP9 in .webm), yuv420p at the source's size rounded up to even sides (what browsers and
    QuickTime play; the odd last row or column is repeated), in the source's time base, so every frame keeps its
    own timestamp (a variable-rate film stays variable, a late video start stays late against the sound)."""
    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    stream = out.add_stream("libvpx-vp9" if dst.suffix.lower() == ".webm" else "libx264", rate=rate)
    width, height = vin.codec_context.width, vin.codec_context.height
    stream.width, stream.height = width + width % 2, height + height % 2
    stream.pix_fmt = "yuv420p"
    if vin.time_base:
        stream.time_base = stream.codec_context.time_base = vin.time_base
    stream.options = {"crf": "18"}  # close to the source: the lightness is the photo's own
    return stream, rate


def _even(rgb: np.ndarray) -> np.ndarray:
    "An (H, W, 3) frame with its last row and/or column repeated to even sides (4:2:0 needs them)."
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else rgb


def colorize_video(colorizer, src: str | os.PathLike, dst: str | os.PathLike, temporal: float = 0.6,
                   bs: int = 8, progress: bool = True) -> dict:
    """Colorize the film `src` into `dst` (see the module's doc); returns {'frames', 'seconds', 'cuts'}. `temporal`
    is the smoothing strength (0: every frame alone)."""
    require_extra("video", "av")
    import av
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise ColorganError(f"{dst} is the film being colorized: write the colour film to another path")
    if dst.suffix.lower() not in VIDEO_SUFFIXES:
        raise ColorganError(f"{dst}: a film is written as {', '.join(sorted(VIDEO_SUFFIXES))}")
    smooth, inp, start = TemporalAB(temporal), _open(src), time.perf_counter()
    vin = inp.streams.video[0]
    vin.thread_type = "AUTO"
    total, done = vin.frames or 0, {"frames": 0, "cuts": 0}
    bar = _bar(total) if progress else None
    remove_orphans(dst)  # what a colorize killed while it wrote this film left (a live writer's is locked)
    try:
        with atomic_path(dst) as tmp, open(tmp, "rb") as held:
            if fcntl is not None:
                fcntl.flock(held, fcntl.LOCK_EX)  # held while this process writes: a killed writer's is unlocked
            out = av.open(str(tmp), "w", format=VIDEO_SUFFIXES[dst.suffix.lower()])
            try:
                vout, rate = _output(out, vin, dst)
                rotation = _rotation(src)
                if rotation:  # a phone's film: stored sideways, shown upright by its display matrix; so is ours
                    vout.set_display_rotation(rotation)
                audio = {a.index: out.add_stream_from_template(a) for a in inp.streams.audio}
                pending = []
                for packet in inp.demux(vin, *inp.streams.audio):
                    if packet.stream.type == "audio":
                        if packet.dts is not None:
                            packet.stream = audio[packet.stream.index]
                            out.mux(packet)
                        continue
                    try:
                        pending += packet.decode()
                    except av.error.InvalidDataError:  # a damaged or cut packet: its frames are missing,
                        done["broken"] = done.get("broken", 0) + 1  # which `_check_whole` then reports
                        continue
                    if len(pending) >= bs:
                        _encode(colorizer, smooth, pending, out, vout, rate, done, bar, start)
                        pending = []
                _encode(colorizer, smooth, pending, out, vout, rate, done, bar, start)
                _check_whole(src, dst, inp, vin, rate, done)
                out.mux(vout.encode(None))
            finally:
                out.close()
    except av.error.FFmpegError as e:
        raise ColorganError(f"{src}: cannot colorize it as a film ({type(e).__name__}: {e}); nothing was "
                            f"written to {dst}") from None
    finally:
        inp.close()
    seconds = time.perf_counter() - start
    log.info(f"{src}: {done['frames']} frames in {seconds:.1f} s ({done['frames'] / max(seconds, 1e-9):.1f} "
             f"frames/s), {done['cuts']} scene(s)")
    return {"frames": done["frames"], "seconds": seconds, "cuts": done["cuts"]}


def _encode(colorizer, smooth: TemporalAB, frames, out, vout, rate, done: dict, bar, start: float) -> None:
    "One batch of decoded frames: the network once for all of them, then smoothing and encoding in order."
    import av
    if not frames:
        return
    lightness = [colorizer.lightness(f.to_image()) for f in frames]
    small = [colorizer.render_l(l) for l in lightness]
    predicted = torch.cat(colorizer.predict_small(small))
    for i, (l, s) in enumerate(zip(lightness, small)):
        ab, new_scene = smooth(s, predicted[i:i + 1])
        done["cuts"] += new_scene
        frame = av.VideoFrame.from_ndarray(_even(colorizer.combine(l, ab)), format="rgb24")
        frame.pts, frame.time_base = _timestamp(frames[i], done, rate, vout)
        out.mux(vout.encode(frame))
        done["frames"] += 1
    if bar is not None:
        bar.update(done["frames"])
        bar.comment = f"{done['frames'] / max(time.perf_counter() - start, 1e-9):.1f} frames/s"


def _rotation(src: Path) -> int:
    "The display rotation (degrees, counter-clockwise) of the film's first frame: how a player turns it upright."
    import av
    try:
        with av.open(str(src)) as inp:
            return int(next(inp.decode(video=0)).rotation or 0)
    except (av.error.FFmpegError, StopIteration, AttributeError):
        return 0


def _promised(inp, vin) -> tuple[int | None, float | None]:
    "(frames, end in seconds) the container says the video has: MP4's frame count, else its duration; None: unsaid."
    end = None
    if vin.duration and vin.time_base:
        end = float((vin.start_time or 0) * vin.time_base + vin.duration * vin.time_base)
    elif "DURATION" in vin.metadata:  # Matroska's per-track tag, HH:MM:SS.fraction
        h, m, sec = vin.metadata["DURATION"].split(":")
        end = int(h) * 3600 + int(m) * 60 + float(sec)
    return vin.frames or None, end


def _check_whole(src: Path, dst: Path, inp, vin, rate: Fraction, done: dict) -> None:
    """A film that ends before its container says it does (cut short, a broken copy) is an error, not a shorter
    film: the frames decoded against the frames (or the seconds) promised, a few frames of slack (a film trimmed
    without re-encoding may lose its first B-frames). Raised inside the atomic write, so nothing is left under
    `dst`."""
    frames, end = _promised(inp, vin)
    got, last = done["frames"], done.get("last_s")
    if got == 0:
        raise ColorganError(f"{src}: no frame of it could be decoded (a broken or empty film); nothing was written "
                            f"to {dst}")
    if done.get("broken") and not frames and end is None:  # nothing promised to compare with: a damaged packet
        raise ColorganError(f"{src}: {done['broken']} of its packets could not be decoded (the file is damaged or cut "
                            f"short); nothing was written to {dst}")
    if frames and got < frames - max(2, frames // 100):  # a trimmed film's first B-frames may not decode
        raise ColorganError(f"{src}: only {got} of the {frames} frames its container promises could be decoded "
                            f"(the file is cut short or damaged); nothing was written to {dst}")
    if not frames and end is not None and last is not None:
        frame_s = 1 / float(rate)
        if end - (last + frame_s) > max(0.5, 2 * frame_s, 0.1 * end):
            raise ColorganError(f"{src}: its frames end at {last + frame_s:.2f} s of the {end:.2f} s its container "
                                f"promises (the file is cut short or damaged); nothing was written to {dst}")


def _timestamp(src, done: dict, rate: Fraction, vout) -> tuple[int, Fraction]:
    """The output frame's (pts, time base): the source frame's own, kept strictly increasing; a frame without one
    (some AVI files) is placed one frame after the last at the average rate."""
    base = vout.time_base or 1 / Fraction(rate)
    last = done.get("pts")
    if src.pts is not None and src.time_base is not None:
        pts = int(round(src.pts * src.time_base / base))
        done["last_s"] = float(src.pts * src.time_base)
    else:
        pts = 0 if last is None else last + max(1, int(round(1 / (Fraction(rate) * base))))
    if last is not None and pts <= last:
        pts = last + 1
    done["pts"] = pts
    return pts, base


def _bar(total: int):
    "fastprogress's bar over the frames (it shows the time left), or None when the container does not say how many."
    if not total:
        return None
    from fastprogress.fastprogress import progress_bar
    bar = progress_bar(range(total), leave=False)
    bar.update(0)
    return bar
