import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from colorgan import color
from colorgan.data import photo_dls, random_resized_crop
from colorgan.photos import find_photos
from colorgan.utils import ColorganError


def _save(img, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


@pytest.fixture
def mixed_dir(tmp_path, photo_dir):
    "Good photos beside every bad kind: corrupt, truncated, not an image, CMYK, 16-bit, palette, alpha, EXIF, tiny, gray."
    d = tmp_path / "mixed"
    for i, p in enumerate(sorted(photo_dir.glob("*.jpg"))[:6]):
        _save(Image.open(p), d / "sub" / f"good{i}.JPG")  # nested folder, upper-case extension
    src = Image.open(sorted(photo_dir.glob("*.jpg"))[0]).convert("RGB")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    buf = io.BytesIO()
    src.save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "notes.png").write_text("this is text, not a picture")
    _save(src.convert("CMYK"), d / "cmyk.jpg")
    _save(src.convert("P"), d / "palette.png")
    _save(src.convert("RGBA"), d / "alpha.png")
    _save(src.resize((12, 9)), d / "tiny.webp")
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(src, d / "rotated.jpeg", exif=exif)
    _save(Image.fromarray((np.arange(60 * 50).reshape(60, 50) * 20).astype(np.uint16)), d / "gray16.png")
    _save(src.convert("L"), d / "gray.tif")
    _save(src.convert("L").convert("RGB"), d / "gray_as_rgb.bmp")
    (d / "readme.txt").write_text("ignored: not an image extension")
    return d


def test_dataloaders_from_a_folder_with_every_bad_kind(mixed_dir, caplog):
    with caplog.at_level(logging.INFO, logger="colorgan"):
        dls = photo_dls(mixed_dir, size=32, bs=4, valid_pct=0.25, decode_workers=2)
    text = caplog.text
    assert "skipped 3 unreadable file(s)" in text
    assert "left out 3 gray photo(s)" in text
    n_good = len(dls.train.dataset) + len(dls.valid.dataset)
    assert n_good == 6 + 5  # good photos plus CMYK, palette, alpha, tiny, rotated
    assert isinstance(dls.train.dataset.pixels, np.memmap)  # skipping bad rows did not load the cache into memory
    l, ab = dls.one_batch()
    assert l.shape == (4, 1, 32, 32) and ab.shape == (4, 2, 32, 32)
    assert l.dtype == ab.dtype == torch.float32
    assert -1 <= l.min() and l.max() <= 1 and ab.abs().max() <= 1
    assert ab.abs().mean() > 0.01  # there is colour to learn


def test_keep_gray_keeps_gray_photos(mixed_dir):
    dls = photo_dls(mixed_dir, size=32, bs=4, valid_pct=0.25, keep_gray=True, decode_workers=1)
    assert len(dls.train.dataset) + len(dls.valid.dataset) == 14


def test_train_valid_subfolders_give_the_split(tmp_path, photo_dir):
    files = sorted(photo_dir.glob("*.jpg"))
    for i, p in enumerate(files[:9]):
        _save(Image.open(p), tmp_path / ("valid" if i < 3 else "train") / p.name)
    dls = photo_dls(tmp_path, size=32, bs=2, decode_workers=1)
    assert (len(dls.train.dataset), len(dls.valid.dataset)) == (6, 3)


def test_random_split_is_seeded(photo_dir):
    a = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, seed=3, decode_workers=1)
    b = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, seed=3, decode_workers=1)
    assert np.array_equal(np.asarray(a.valid.dataset), np.asarray(b.valid.dataset))
    assert len(a.valid.dataset) == 3
    others = [np.asarray(photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, seed=s, decode_workers=1).valid.dataset)
              for s in (4, 5, 6)]
    assert any(not np.array_equal(o, np.asarray(a.valid.dataset)) for o in others)  # the seed is what decides


def test_cache_is_rebuilt_when_the_folder_changes(tmp_path, photo_dir, caplog):
    for p in sorted(photo_dir.glob("*.jpg"))[:4]:
        _save(Image.open(p), tmp_path / p.name)
    with caplog.at_level(logging.INFO, logger="colorgan"):
        photo_dls(tmp_path, size=32, bs=2, decode_workers=1)
        caplog.clear()
        photo_dls(tmp_path, size=32, bs=2, decode_workers=1)
        assert "decoding" not in caplog.text  # second run decodes nothing
        _save(Image.open(sorted(photo_dir.glob("*.jpg"))[5]), tmp_path / "new.jpg")
        photo_dls(tmp_path, size=32, bs=2, decode_workers=1)
        assert "decoding" in caplog.text


def test_one_cache_per_folder_and_size_whatever_the_split(tmp_path, photo_dir, caplog, monkeypatch):
    "A new seed or valid_pct, and evaluate on the same folder, decode nothing; a changed folder replaces its cache."
    from colorgan.evaluate import evaluate
    cache = tmp_path / "cache"
    monkeypatch.setenv("COLORGAN_CACHE", str(cache))
    photo_dls(photo_dir, size=32, bs=2, decode_workers=1)
    with caplog.at_level(logging.INFO, logger="colorgan"):
        caplog.clear()
        for seed, pct in [(1, 0.25), (2, 0.5), (3, 0.1)]:
            photo_dls(photo_dir, size=32, bs=2, valid_pct=pct, seed=seed, decode_workers=1)
        evaluate(None, photo_dir, tmp_path / "e", baseline="gray", size=32)
        assert "decoding" not in caplog.text
    assert len(list(cache.glob("*.npy"))) == 1
    photo_dls(photo_dir, size=48, bs=2, decode_workers=1)
    assert len(list(cache.glob("*.npy"))) == 2  # another size is another cache, and the first one stays


def test_cached_photos_come_back_in_the_order_asked(photo_dir):
    from colorgan.data import CachedPhotos
    pixels = np.arange(6)[:, None, None, None] * np.ones((6, 2, 2, 3), dtype=np.uint8)
    rows = CachedPhotos(pixels, np.array([5, 1, 3, 0]))
    assert [int(r[0, 0, 0]) for r in rows[np.array([2, 0, 3, 1])]] == [3, 5, 0, 1]
    assert int(rows[1][0, 0, 0]) == 1


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir(), lambda p: (p.mkdir(), (p / "a.txt").write_text("x"))])
def test_missing_or_empty_folder_is_a_clear_error(tmp_path, make):
    folder = tmp_path / "photos"
    make(folder)
    with pytest.raises(ColorganError, match="photos"):
        photo_dls(folder, size=32)


def test_find_photos_is_recursive_and_case_blind(tmp_path):
    for name in ["a.JPG", "b/c.Png", "b/d/e.tiff", "f.WebP", "g.gif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_photos(tmp_path)] == ["a.JPG", "c.Png", "e.tiff", "f.WebP"]


def test_augmentation_is_identical_for_l_and_ab():
    """Two flat colours of different lightness, through the training loader's own augmenting step: after crop and
    flip every pixel's L still tells its ab (a crop or flip applied to one of them alone would break this)."""
    from colorgan.data import CachedPhotos, LabDataLoader
    rgb = torch.zeros(8, 3, 32, 32)
    rgb[:, 0, :, :16] = 0.9   # light red on the left
    rgb[:, 2, :, 16:] = 0.5   # dark blue on the right
    pure_l, pure_ab = color.lab_to_model(color.rgb_to_lab(rgb))
    uint8 = (rgb.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    pure_l, pure_ab = color.lab_to_model(color.rgb_to_lab(torch.from_numpy(uint8).permute(0, 3, 1, 2) / 255))
    dl = LabDataLoader(CachedPhotos(uint8), bs=8, augment=True, min_scale=0.2, device="cpu")
    torch.manual_seed(0)
    l, ab = dl.one_batch()
    assert not torch.equal(l, pure_l)  # the loader did augment
    for side in (slice(0, 16), slice(16, 32)):
        ref_l, ref_ab = pure_l[0, :, 0, side][:, 0], pure_ab[0, :, 0, side][:, 0]
        same = (l[:, 0] - ref_l).abs() < 1e-3
        assert same.sum() > 100
        assert ((ab.permute(1, 0, 2, 3)[:, same] - ref_ab[:, None]).abs() < 1e-3).all()
    assert not torch.equal(l[0], l[1])  # each sample got its own crop


def test_show_batch_draws_gray_and_colour(photo_dir):
    import matplotlib
    matplotlib.use("Agg")
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, decode_workers=1)
    axs = dls.show_batch(max_n=2)
    assert len(axs) == 4 and axs[0].get_title() == "gray" and axs[1].get_title() == "colour"
    gray, colour = (np.asarray(ax.images[0].get_array(), dtype=np.float32) for ax in axs[:2])
    assert np.abs(gray[..., 0] - gray[..., 2]).max() < 0.02  # the L input, drawn gray
    assert np.abs(colour[..., 0] - colour[..., 2]).max() > 0.05  # the same photo in its colours


def test_flip_mirrors_and_augmentation_varies(photo_dir):
    from colorgan.data import random_resized_crop
    rgb = torch.rand(2, 3, 16, 24)
    whole = dict(min_scale=1.0, ratio=(1.0, 1.0))  # the crop is the whole photo: only the flip is left
    assert torch.allclose(random_resized_crop(rgb, flip_p=1.0, **whole), rgb.flip(-1), atol=1e-5)
    assert torch.allclose(random_resized_crop(rgb, flip_p=0.0, **whole), rgb, atol=1e-5)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, decode_workers=1)
    b = dls.train.create_batch([0, 1, 2, 3])
    (l1, _), (l2, _) = dls.train.after_batch(b), dls.train.after_batch(b)
    assert not torch.allclose(l1, l2)  # the same photos come out cropped and flipped otherwise each time
    (v1, _), (v2, _) = dls.valid.after_batch(b), dls.valid.after_batch(b)
    assert torch.equal(v1, v2)  # validation is not augmented


def test_show_batch_and_show_results_honour_ctxs_and_show(photo_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, decode_workers=1)
    _, mine = plt.subplots(2, 3)
    l, ab = dls.valid.one_batch()
    drawn = dls.valid.show_results((l, ab), ab * 0.5, max_n=2, ctxs=mine.flatten())
    assert list(drawn) == list(mine.flatten()) and mine[0, 1].get_title() == "predicted" and mine[1, 2].images
    items = dls.show_batch(max_n=3, show=False)
    assert len(items) == 3 and all(len(t) == 2 and t[0].shape == (3, 32, 32) for t in items)
    assert len(dls.valid.show_results((l, ab), ab, max_n=2, show=False)[0]) == 3  # gray, predicted, real


def test_too_few_photos_is_a_clear_error(tmp_path, photo_dir):
    for p in sorted(photo_dir.glob("*.jpg"))[:2]:
        _save(Image.open(p), tmp_path / p.name)
    with pytest.raises(ColorganError, match="1 usable training photo"):
        photo_dls(tmp_path, size=32, decode_workers=1)


def test_the_batch_transform_decodes_back_to_the_photo(photo_dir):
    from colorgan.data import ToLab
    uint8 = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB").resize((24, 16)))
                                       for p in sorted(photo_dir.glob("*.jpg"))[:3]]))
    to_lab = ToLab()
    l, ab = to_lab(uint8)
    gray, colour = to_lab.decode((l, ab))
    assert (colour * 255 - uint8.permute(0, 3, 1, 2).float()).abs().max() < 1.0  # the photo, 8-bit rounding aside
    assert (gray - gray.mean(1, keepdim=True)).abs().max() < 1e-4  # gray: R = G = B (float error aside)
    assert len(ToLab(with_target=False)(uint8)) == 1


def test_unshuffled_loader_gives_every_photo_in_order_despite_epoch_batches(photo_dir):
    "get_preds(ds_idx=0) after a budgeted run: every training photo once, in order, not a shuffled slice."
    dls = photo_dls(photo_dir, size=32, bs=2, valid_pct=0.25, augment=False, epoch_batches=1, decode_workers=1)
    assert len(dls.train) == 1  # training: one batch an epoch, as the budget planned
    plain = dls.train.new(shuffle=False, drop_last=False)
    assert len(plain) == -(-len(dls.train.dataset) // 2)
    assert list(plain.get_idxs()) == list(range(len(dls.train.dataset)))


def test_a_killed_cache_build_leaves_nothing_behind(photo_dir, tmp_path):
    "kill -9 while the cache is written leaves a full-size temporary; the next build removes it, not a live one's."
    import fcntl
    from colorgan.photos import find_photos, load_photos
    cache = tmp_path / "cache"
    files = find_photos(photo_dir)
    load_photos(files, 16, cache_dir=cache, decode_workers=1)
    npy = next(cache.glob("*.npy"))
    orphan, live = cache / f".{npy.name}.k9x2ab.colorgan.tmp", cache / f".{npy.name}.live01.colorgan.tmp"
    orphan.write_bytes(b"\0" * 4096)
    live.write_bytes(b"\0" * 4096)
    mine = cache / ".notes.tmp"
    mine.write_text("not colorgan's")
    npy.unlink()  # the next run decodes again
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process is still writing this one
        load_photos(files, 16, cache_dir=cache, decode_workers=1)
    assert not orphan.exists() and live.exists() and mine.exists()


def test_a_photo_replaced_by_another_of_the_same_size_and_time_is_seen(tmp_path):
    "BMP keeps its length whatever it shows; the time put back as a FAT card's 2-second clock would: re-decoded."
    import os

    import numpy as np

    from colorgan.photos import find_photos, load_photos
    folder = tmp_path / "bmps"
    folder.mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.bmp")
    files = find_photos(folder)
    first = np.array(load_photos(files, 32, cache_dir=tmp_path / "cache").pixels[0])
    st = (folder / "0.bmp").stat()
    Image.new("RGB", (40, 40), "yellow").save(folder / "0.bmp")
    os.utime(folder / "0.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (folder / "0.bmp").stat().st_size == st.st_size
    again = np.array(load_photos(files, 32, cache_dir=tmp_path / "cache").pixels[0])
    assert not np.array_equal(first, again) and tuple(again[16, 16]) == (255, 255, 0)
