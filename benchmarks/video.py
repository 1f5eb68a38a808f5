"""Films: frames/s of `Colorizer.colorize_video` at 480p and 1080p, and flicker with and without smoothing.

    python benchmarks/video.py runs/final/stage2            # any run folder or generator.pth
    python benchmarks/video.py MODEL --frames 48 --temporal 0.6

The test film is made here from scikit-image's photos: a slow pan across one photo (a still scene whose content
moves), a cut, then a second photo held still; H.264 at crf 10, 24 fps. Flicker is `colorgan.video.flicker`: the
mean frame-to-frame change of a and b (CIELAB units) over the pixels whose lightness changed by less than 1, measured
on the decoded output. Decoding and encoding the same frames with PyAV alone, no colorizer, is the floor beside it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_film(path: Path, width: int, height: int, frames: int) -> Path:
    import av
    import skimage.data
    from PIL import Image
    first = Image.fromarray(skimage.data.astronaut()).resize((int(width * 1.25), int(height * 1.25)))
    second = np.asarray(Image.fromarray(skimage.data.coffee()).resize((width, height)))
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=24)
    video.width, video.height, video.pix_fmt, video.options = width, height, "yuv420p", {"crf": "10"}
    for i in range(frames):
        if i < frames // 2:  # a slow pan: 1 px a frame
            img = np.asarray(first.crop((i, i // 2, i + width, i // 2 + height)))
        else:
            img = second
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    out.close()
    return path


def decoded_lab(path: Path) -> list:
    import av
    import torch
    from colorgan.color import rgb_to_lab
    f = av.open(str(path))
    frames = [rgb_to_lab(torch.from_numpy(fr.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].float() / 255)[0]
              for fr in f.decode(video=0)]
    f.close()
    return frames


def codec_floor(path: Path, out: Path) -> float:
    "Seconds to decode every frame and encode it again with no colorizer between (PyAV and FFmpeg alone)."
    import av
    start = time.perf_counter()
    src, dst = av.open(str(path)), av.open(str(out), "w")
    v = src.streams.video[0]
    enc = dst.add_stream("libx264", rate=24)
    enc.width, enc.height, enc.pix_fmt, enc.options = v.codec_context.width, v.codec_context.height, "yuv420p", {
        "crf": "18"}
    for i, frame in enumerate(src.decode(video=0)):
        again = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
        again.pts = i
        dst.mux(enc.encode(again))
    dst.mux(enc.encode(None))
    dst.close()
    src.close()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a run folder or generator.pth")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--temporal", type=float, default=0.6)
    p.add_argument("--engine", default="auto")
    args = p.parse_args(argv)
    from colorgan.inference import Colorizer
    from colorgan.video import flicker
    colorizer = Colorizer.from_artifact(args.model, device="cpu", engine=args.engine)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (w, h) in (("480p", (854, 480)), ("1080p", (1920, 1080))):
            film = make_film(tmp / f"{name}.mp4", w, h, args.frames)
            floor = codec_floor(film, tmp / f"{name}-floor.mp4")
            for strength in (0.0, args.temporal):
                out = tmp / f"{name}-{strength}.mp4"
                done = colorizer.colorize_video(film, out, temporal=strength, progress=False)
                rows.append((name, strength, done["frames"] / done["seconds"], args.frames / floor,
                             flicker(decoded_lab(out))))
    print(f"engine {colorizer.engine}, render size {colorizer.render_size}, {args.frames} frames a film")
    print("| film | temporal | frames/s | decode + encode alone, frames/s | flicker (ab units) |")
    print("|---|---:|---:|---:|---:|")
    for name, strength, fps, floor, flick in rows:
        print(f"| {name} | {strength:g} | {fps:.2f} | {floor:.1f} | {flick:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
