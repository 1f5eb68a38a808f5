"Films: tiny videos made here with PyAV (a cut, an audio track), colorized by tiny generators on CPU."
import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from PIL import Image

from colorgan.cli import main
from colorgan.color import rgb_to_lab
from colorgan.inference import Colorizer
from colorgan.video import CUT, TemporalAB, flicker

av = pytest.importorskip("av")
SIZE, FPS, N, CUT_AT = (96, 64), 12, 24, 12


def make_film(path, scenes=("astronaut", "coffee"), n=N, cut_at=CUT_AT, audio=True):
    "n frames at FPS: the first scene until `cut_at`, then the second; a 440 Hz tone under it all."
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=FPS)
    video.width, video.height, video.pix_fmt, video.options = *SIZE, "yuv420p", {"crf": "10"}
    frames = [np.asarray(Image.fromarray(getattr(skimage.data, s)()).convert("RGB").resize(SIZE)) for s in scenes]
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(frames[0] if i < cut_at else frames[-1], format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    out.close()
    if audio:
        _add_tone(path, n)
    return path


def _add_tone(path, n):
    "Remux the film with a tone as its audio track (written after the video: one pass each)."
    src = av.open(str(path))
    tmp = path.with_name("with-audio" + path.suffix)
    out = av.open(str(tmp), "w")
    video = out.add_stream_from_template(src.streams.video[0])
    sound = out.add_stream("aac", rate=8000)
    for packet in src.demux(src.streams.video[0]):
        if packet.dts is not None:
            packet.stream = video
            out.mux(packet)
    samples = 8000 * n // FPS
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 8000)).astype(np.float32)[None]
    for start in range(0, samples, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:start + 1024]), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = 8000, start
        out.mux(sound.encode(frame))
    out.mux(sound.encode(None))
    out.close()
    src.close()
    tmp.replace(path)


def decoded(path):
    "(frames as uint8 RGB arrays, the video stream's (width, height, rate), the audio streams' (codec, rate))."
    f = av.open(str(path))
    v = f.streams.video[0]
    info = (v.codec_context.width, v.codec_context.height, v.average_rate)
    audio = [(a.codec_context.name, a.rate) for a in f.streams.audio]
    frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    f.close()
    return frames, info, audio


def lab(frame) -> torch.Tensor:
    return rgb_to_lab(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255)[0]


class Noisy(torch.nn.Module):
    "A generator whose colour jumps at random every call: what colorizing each frame alone looks like at worst."
    def forward(self, x):
        n, _, h, w = x.shape
        return torch.rand(n, 2, 1, 1).expand(n, 2, h, w) * 0.6 - 0.3


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    return make_film(tmp_path_factory.mktemp("film") / "film.mp4")


def test_a_film_keeps_its_frames_size_rate_sound_and_lightness(artefact, film, tmp_path):
    out = tmp_path / "colour.mp4"
    done = Colorizer.from_artifact(artefact, device="cpu", engine="torch").colorize_video(film, out, progress=False)
    src, src_info, src_audio = decoded(film)
    got, info, audio = decoded(out)
    assert done["frames"] == len(got) == len(src) == N and done["cuts"] == 2  # the first frame and the cut
    assert info == src_info and info[2] == FPS and audio == src_audio == [("aac", 8000)]
    for a, b in zip(src, got):
        assert (lab(a)[0] - lab(b)[0]).abs().mean() < 1.5  # each frame's own lightness, through two encodings


def test_smoothing_lowers_flicker_on_a_still_scene_and_a_cut_is_not_smeared(tmp_path):
    still = make_film(tmp_path / "still.mp4", scenes=("astronaut",), audio=False)
    results = {}
    for strength in (0.0, 0.8):
        torch.manual_seed(0)
        out = tmp_path / f"s{strength}.mp4"
        Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(still, out, temporal=strength,
                                                                          progress=False)
        results[strength] = flicker([lab(f) for f in decoded(out)[0]])
    assert results[0.8] < results[0.0] / 2, results
    smooth = TemporalAB(0.8)
    a, b = torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), CUT + 20.0)
    first, new = smooth(a, torch.ones(1, 2, 2, 2))
    assert new and torch.equal(first, torch.ones(1, 2, 2, 2))
    blended, new = smooth(a, torch.zeros(1, 2, 2, 2))
    assert not new and torch.allclose(blended, torch.full((1, 2, 2, 2), 0.8))
    after_cut, new = smooth(b, torch.zeros(1, 2, 2, 2))
    assert new and torch.equal(after_cut, torch.zeros(1, 2, 2, 2))  # nothing of the scene before crosses the cut


def test_the_command_colorizes_films_beside_photos_and_names_a_broken_one(artefact, film, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(film.read_bytes()[:200])
    photo = tmp_path / "a.png"
    Image.fromarray(skimage.data.astronaut()).resize((40, 30)).save(photo)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["colorize", str(artefact), str(film), str(broken), str(photo), "--out", str(out),
                                  "--engine", "torch", "--temporal", "0.5"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "broken.mp4" in r.output and "cannot" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "film.mp4"]  # nothing half-written for the broken one
    assert len(decoded(out / "film.mp4")[0]) == N
    again = CliRunner().invoke(main, ["colorize", str(artefact), str(film), "--out", str(out)])
    assert again.exit_code == 0 and "1 kept" in again.output  # an existing output is kept without --overwrite


def test_a_film_is_written_whole_or_not_at_all(artefact, film, tmp_path, monkeypatch):
    import colorgan.video
    real = colorgan.video._encode
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise av.error.FFmpegError(-1, "the encoder broke")
        return real(*args)
    monkeypatch.setattr(colorgan.video, "_encode", failing)
    with pytest.raises(Exception, match="cannot colorize"):
        Colorizer.from_artifact(artefact, device="cpu", engine="torch").colorize_video(film, tmp_path / "o.mp4",
                                                                                       bs=4, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_gray_film_comes_out_in_colour(artefact, tmp_path):
    from colorgan.metrics import colorfulness
    gray = make_film(tmp_path / "gray.mp4", scenes=("camera",), n=6, cut_at=6, audio=False)  # skimage's gray photo
    out = tmp_path / "colour.mkv"
    Colorizer.from_artifact(artefact, device="cpu", engine="torch").colorize_video(gray, out, progress=False)
    src, got = decoded(gray)[0], decoded(out)[0]
    assert len(got) == 6 and got[0].shape == src[0].shape
    assert colorfulness(torch.from_numpy(got[0]).permute(2, 0, 1)[None] / 255.0) > 1  # colour where there was none
    assert (lab(src[0])[0] - lab(got[0])[0]).abs().mean() < 1.5
