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


def make_film(path, scenes=("astronaut", "coffee"), n=N, cut_at=CUT_AT, audio=True, options=None):
    "n frames at FPS: the first scene until `cut_at`, then the second; a 440 Hz tone under it all."
    out = av.open(str(path), "w", options=options or {})
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
    _mux_tone(out, sound, 8000 * n // FPS)
    out.close()
    src.close()
    tmp.replace(path)


def _mux_tone(out, sound, samples: int) -> None:
    "A 440 Hz tone of `samples` samples at 8 kHz into the audio stream `sound` of `out`, then its encoder flushed."
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 8000)).astype(np.float32)[None]
    for start in range(0, samples, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:start + 1024]), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = 8000, start
        out.mux(sound.encode(frame))
    out.mux(sound.encode(None))


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


def _timed_film(path, times_ms, size=SIZE, audio_lead_ms=0):
    """A film whose frames show at `times_ms` (milliseconds, any spacing: variable rate), optionally with a tone
    that starts `audio_lead_ms` before the first frame (the video starts late)."""
    from fractions import Fraction
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=FPS)
    video.width, video.height, video.pix_fmt = *size, "yuv420p" if size[0] % 2 == 0 == size[1] % 2 else "yuv444p"
    video.time_base = video.codec_context.time_base = Fraction(1, 1000)
    sound = out.add_stream("aac", rate=8000) if audio_lead_ms else None
    picture = np.asarray(Image.fromarray(skimage.data.astronaut()).resize(size))
    for t in times_ms:
        frame = av.VideoFrame.from_ndarray(np.roll(picture, t // 40, axis=1), format="rgb24")
        frame.pts, frame.time_base = t + audio_lead_ms, Fraction(1, 1000)
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    if sound is not None:
        _mux_tone(out, sound, 8000 * (times_ms[-1] + audio_lead_ms) // 1000)
    out.close()
    return path


def _frame_times(path):
    "Each video frame's presentation time (s), and the start times (s) of the video and audio streams."
    f = av.open(str(path))
    times = [float(fr.pts * fr.time_base) for fr in f.decode(video=0)]
    starts = {s.type: float(s.start_time * s.time_base) for s in f.streams if s.start_time is not None}
    f.close()
    return times, starts


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_a_variable_rate_film_keeps_each_frames_time(suffix, tmp_path):
    "Frames 40 ms apart, then 400 ms, then 40 again (a phone's film): the output shows each frame when the source did."
    times_ms = [0, 40, 80, 480, 880, 920, 960, 1360, 1400]
    src = _timed_film(tmp_path / f"vfr{suffix}", times_ms)
    out = tmp_path / f"colour{suffix}"
    Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(src, out, progress=False)
    got, _ = _frame_times(out)
    want, _ = _frame_times(src)
    assert len(got) == len(times_ms) and np.allclose(np.array(got) - got[0], np.array(want) - want[0], atol=0.002)


def test_a_film_whose_video_starts_after_its_sound_keeps_the_offset(tmp_path):
    src = _timed_film(tmp_path / "late.mkv", [i * 1000 // FPS for i in range(12)], audio_lead_ms=500)
    out = tmp_path / "colour.mkv"
    Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(src, out, progress=False)
    (_, want), (_, got) = _frame_times(src), _frame_times(out)
    assert want["video"] - want["audio"] == pytest.approx(0.5, abs=0.03)
    assert got["video"] - got["audio"] == pytest.approx(want["video"] - want["audio"], abs=0.01)


def test_an_odd_sized_film_is_padded_to_4_2_0(tmp_path):
    "95x63: yuv444p is unplayable in browsers and QuickTime; the output is 96x64 yuv420p, the last row repeated."
    src = _timed_film(tmp_path / "odd.mp4", [i * 1000 // FPS for i in range(4)], size=(95, 63))
    out = tmp_path / "colour.mp4"
    Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(src, out, progress=False)
    f = av.open(str(out))
    v = f.streams.video[0]
    assert (v.codec_context.width, v.codec_context.height, v.codec_context.pix_fmt) == (96, 64, "yuv420p")
    f.close()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_film_cut_short_is_an_error_and_nothing_is_written(suffix, tmp_path):
    """An mp4 cut in half (its index first, so it still opens) or a cut mkv: the frames read against
    the frames or seconds the container promises, nothing under the output's name; the command exits 1."""
    from colorgan.utils import ColorganError
    src = tmp_path / f"whole{suffix}"
    if suffix == ".mkv":
        _timed_film(src, [i * 1000 // FPS for i in range(N)])
    else:  # the index first (faststart, as phones and the web write them): a cut file still opens
        make_film(src, audio=False, options={"movflags": "faststart"})
    cut = tmp_path / f"cut{suffix}"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 4])  # about 10 of the 24 frames decode (the first keyframe is large)
    out = tmp_path / f"colour{suffix}"
    with pytest.raises(ColorganError, match="cut short"):
        Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(cut, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".colour*"))


def test_a_film_with_no_decodable_frame_is_an_error(tmp_path):
    "A film cut before its first whole frame: an error, not a 0-byte film counted as colorized (and kept by reruns)."
    from colorgan.utils import ColorganError
    whole = _timed_film(tmp_path / "whole.mkv", [i * 1000 // FPS for i in range(N)])
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 4])
    with pytest.raises(ColorganError, match="no frame of it could be decoded"):
        Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(cut, tmp_path / "o.mkv", progress=False)
    assert not (tmp_path / "o.mkv").exists()


def test_a_phone_films_rotation_is_kept(tmp_path):
    "Stored sideways with a display matrix of -90 degrees (as phones record): the output plays upright too."
    src = tmp_path / "phone.mp4"
    out = av.open(str(src), "w")
    video = out.add_stream("libx264", rate=FPS)
    video.width, video.height, video.pix_fmt = 64, 32, "yuv420p"
    video.set_display_rotation(-90)
    picture = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 32)))
    for i in range(4):
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    out.close()
    dst = tmp_path / "colour.mp4"
    Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(src, dst, progress=False)
    with av.open(str(dst)) as f:
        first = next(f.decode(video=0))
    assert first.rotation == -90 and (first.width, first.height) == (64, 32)


def test_films_in_folders_are_found_mirrored_and_never_collide(artefact, film, tmp_path):
    """A folder given as input: its films are colorized like its photos, into their mirrored paths; two films of
    one name from two folders: the second is refused with the reason (a glob mirrors them both)."""
    import shutil
    src = tmp_path / "src"
    for folder in ("a", "b"):
        (src / folder / "trip").mkdir(parents=True)
        shutil.copy(film, src / folder / "trip" / "film.mp4")
    r = CliRunner().invoke(main, ["colorize", str(artefact), str(src / "a"), str(src / "b"), "--out",
                                  str(tmp_path / "out"), "--engine", "torch"])
    assert r.exit_code == 1 and "would replace that of" in r.output, r.output
    assert "1 colorized, 0 kept, 1 failed" in r.output  # the second is refused with its reason, not "kept"
    assert len(decoded(tmp_path / "out" / "trip" / "film.mp4")[0]) == N
    r = CliRunner().invoke(main, ["colorize", str(artefact), str(src / "*" / "trip" / "*.mp4"), "--out",
                                  str(tmp_path / "globbed"), "--engine", "torch"])
    assert r.exit_code == 0, r.output
    assert sorted(p.relative_to(tmp_path / "globbed").as_posix() for p in (tmp_path / "globbed").rglob("*.mp4")) == \
        ["a/trip/film.mp4", "b/trip/film.mp4"]


def test_the_temporary_of_a_film_killed_mid_write_is_removed_next_time(film, tmp_path):
    "A colorize killed while it wrote out/colour.mp4 left .colour.mp4.XXXX.colorgan.tmp: the next write removes it."
    stale = tmp_path / ".colour.mp4.k1ll3d00.colorgan.tmp"
    stale.write_bytes(b"half a film" * 1000)
    Colorizer(Noisy(), render_size=32, device="cpu").colorize_video(film, tmp_path / "colour.mp4", progress=False)
    assert not stale.exists() and (tmp_path / "colour.mp4").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["colour.mp4"]
