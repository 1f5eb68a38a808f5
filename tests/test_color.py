import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from skimage.color import lab2rgb, rgb2lab

from colorgan import color, photos

CORNERS = np.array([[[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)]], dtype=np.float64)  # (1,8,3)
rgb_arrays = arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(3)),
                    elements=st.floats(0, 1, allow_nan=False, width=32))


def to_t(x):
    return torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]


def to_np(t):
    return t[0].permute(1, 2, 0).double().numpy()


@settings(max_examples=200, deadline=None)
@given(rgb_arrays)
def test_rgb_to_lab_matches_skimage(rgb):
    assert np.abs(to_np(color.rgb_to_lab(to_t(rgb))) - rgb2lab(rgb)).max() < 1e-3


@settings(max_examples=200, deadline=None)
@given(rgb_arrays)
def test_lab_to_rgb_matches_skimage(rgb):
    lab = rgb2lab(rgb)
    assert np.abs(to_np(color.lab_to_rgb(to_t(lab))) - lab2rgb(lab)).max() < 1e-3


def test_gamut_corners_and_round_trip():
    lab = color.rgb_to_lab(to_t(CORNERS))
    assert np.abs(to_np(lab) - rgb2lab(CORNERS)).max() < 1e-3
    assert np.abs(to_np(color.lab_to_rgb(lab)) - CORNERS).max() < 1e-3


def test_batched_round_trip_on_random_images():
    rgb = torch.rand(4, 3, 17, 23)
    assert (color.lab_to_rgb(color.rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3


lab_arrays = arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(3)),
                    elements=st.floats(-128, 128, allow_nan=False, width=32))


def _hue(lab):
    return torch.atan2(lab[:, 2], lab[:, 1])


@settings(max_examples=300, deadline=None)
@given(lab_arrays)
def test_out_of_gamut_colours_keep_lightness_and_hue_and_lose_only_the_chroma_they_must(raw):
    lab = to_t(raw)
    lab[:, 0] = (lab[:, 0] + 128) / 2.56  # L in [0, 100]; a and b anywhere in [-128, 128]
    rgb = color.lab_to_rgb(lab)
    assert rgb.min() >= 0 and rgb.max() <= 1
    back = color.rgb_to_lab(rgb)
    assert (back[:, 0] - lab[:, 0]).abs().max() < 0.1
    rgb8 = torch.round(rgb * 255) / 255
    assert (color.rgb_to_lab(rgb8)[:, 0] - lab[:, 0]).abs().max() < 1.0
    chroma = back[:, 1:].norm(dim=1)
    turn = (_hue(back) - _hue(lab) + np.pi) % (2 * np.pi) - np.pi
    assert (turn.abs() * (chroma > 5)).max() < 0.05  # radians
    fitted = color.fit_gamut(lab)
    assert (fitted[:, 1:].norm(dim=1) <= lab[:, 1:].norm(dim=1) + 1e-4).all()
    moved = (fitted - lab).abs().amax(1) > 1e-3
    hue = lab[:, 1:] / lab[:, 1:].norm(dim=1, keepdim=True).clamp(min=1e-6)
    a_bit_more = torch.cat([fitted[:, :1], fitted[:, 1:] + 0.5 * hue], 1)  # half a CIELAB unit more chroma
    assert color._outside(color.lab_to_linear(a_bit_more))[:, 0][moved].all()  # on the gamut's surface


def test_colours_inside_srgb_are_unchanged_and_clipping_would_have_moved_lightness():
    lab = color.rgb_to_lab(torch.rand(2, 3, 16, 16))
    assert torch.equal(color.gamut_scale(lab), torch.ones_like(lab[:, :1]))
    assert (color.fit_gamut(lab) - lab).abs().max() < 1e-4
    bright_red = torch.tensor([95.0, 120.0, 120.0]).view(1, 3, 1, 1)
    clipped = color.linear_to_srgb(color.lab_to_linear(bright_red).clamp(0, 1))
    assert (color.rgb_to_lab(clipped)[0, 0] - 95).abs() > 30  # what per-channel clipping did
    assert (color.rgb_to_lab(color.lab_to_rgb(bright_red))[0, 0] - 95).abs() < 0.1


@pytest.mark.parametrize("bad", [torch.rand(3, 4, 4), torch.rand(1, 2, 4, 4),
                                 torch.zeros(1, 3, 2, 2, dtype=torch.uint8)])
def test_colour_functions_name_a_wrong_shape_or_dtype(bad):
    for fn in (color.rgb_to_lab, color.lab_to_rgb):
        with pytest.raises(ValueError, match=r"shape \(N,3,H,W\)"):
            fn(bad)


def test_scalings_ranges_and_inverses():
    lab = color.rgb_to_lab(to_t(CORNERS))
    l, ab = color.lab_to_model(lab)
    assert l.min() >= -1 - 1e-6 and l.max() <= 1 + 1e-6
    assert ab.abs().max() < 1.0  # every sRGB colour fits the generator's bounded output
    assert torch.allclose(color.denorm_l(l), lab[:, :1], atol=1e-4)
    assert torch.allclose(color.denorm_ab(ab), lab[:, 1:], atol=1e-4)
    assert torch.allclose(color.model_to_rgb(l, ab), to_t(CORNERS), atol=1e-3)


def test_gradients_flow_and_are_finite():
    rgb = torch.rand(2, 3, 8, 8, requires_grad=True)
    color.lab_to_rgb(color.rgb_to_lab(rgb) * 1.0).sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    ab = torch.zeros(1, 2, 4, 4, requires_grad=True)
    color.model_to_rgb(torch.zeros(1, 1, 4, 4), ab).sum().backward()
    assert torch.isfinite(ab.grad).all()


def _l_of(img):
    return photos.pil_to_l(img)[0, 0].numpy()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "RGBA", "RGB"])
def test_pil_to_l_handles_modes(mode, astronaut):
    img = astronaut.convert(mode)
    l = _l_of(img)
    assert l.shape == (64, 80) and 0 <= l.min() and l.max() <= 100
    expected = rgb2lab(np.asarray(img.convert("RGB")) / 255.0)[..., 0]
    assert np.abs(l - expected).max() < 1e-2


def test_pil_to_l_of_16_bit_gray_keeps_precision():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    l = _l_of(img)
    expected = rgb2lab(np.repeat((ramp / 65535.0)[..., None], 3, axis=2))[..., 0]
    assert np.abs(l - expected).max() < 1e-2
    assert len(np.unique(np.round(l, 3))) > 1000  # more distinct levels than 8 bits could carry


def test_pil_to_l_applies_exif_orientation(astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    astronaut.save(buf, format="JPEG", exif=exif)
    assert _l_of(Image.open(io.BytesIO(buf.getvalue()))).shape == (80, 64)


def test_is_grayscale(astronaut):
    assert photos.is_grayscale(astronaut.convert("L"))
    assert photos.is_grayscale(astronaut.convert("L").convert("RGB"))
    assert not photos.is_grayscale(astronaut)


def test_8bit_output_is_the_nearest_level_and_gray_levels_come_back():
    "The lookup encoder (no power) gives round(255 * sRGB) as float64 does, but at a hair from a level's edge."
    from colorgan.color import _to_8bit, lab_to_rgb8, lightness_of_gray8, linear_to_srgb
    x = torch.rand(1, 3, 300, 300, generator=torch.Generator().manual_seed(0)) ** 3
    x[0, :, 0, :4] = torch.tensor([0.0, 1.0, 1e-9, 0.5])[None]
    exact = linear_to_srgb(x.double()) * 255 + 0.5
    frac = exact - exact.floor()
    edge = (frac < 1e-4) | (frac > 1 - 1e-4)
    got = _to_8bit(x).permute(0, 3, 1, 2).double()
    assert ((got == exact.floor()) | edge).all()
    levels = np.arange(256, dtype=np.uint8)[None]
    lab = torch.cat([lightness_of_gray8(levels), torch.zeros(1, 2, 1, 256)], 1)
    assert (lab_to_rgb8(lab)[0, 0].numpy() == levels[0][:, None]).all()
