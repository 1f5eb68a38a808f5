import pytest
import timm
import torch

from colorgan.models import body_head_split, build_critic, build_generator
from colorgan.utils import ColorganError


@pytest.fixture(scope="module")
def generator():
    return build_generator(pretrained=False, width=0.25, img_size=32).eval()


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 64, 96), (1, 1, 50, 70)])
def test_generator_output_shape_and_range(generator, shape):
    with torch.no_grad():
        out = generator(torch.randn(shape))
    assert out.shape == (shape[0], 2, *shape[2:])
    assert out.min() >= -1 and out.max() <= 1


def test_decoder_options_build_and_run():
    g = build_generator(pretrained=False, width=0.25, img_size=32, self_attention=True, blur=True, spectral_norm=True)
    assert g(torch.randn(2, 1, 64, 64)).shape == (2, 2, 64, 64)
    assert any("weight_orig" in n for n, _ in g.named_parameters())  # spectral norm is in place


def test_splitter_covers_every_parameter_once(generator):
    groups = body_head_split(generator)
    assert len(groups) == 2
    encoder, decoder = ({id(p) for p in g} for g in groups)
    assert encoder == {id(p) for p in generator[0].parameters()}  # the timm body, and only it, is group 0
    assert not encoder & decoder and encoder | decoder == {id(p) for p in generator.parameters()}


def test_width_narrows_the_network_and_is_refused_where_no_weights_fit(generator):
    full = build_generator(pretrained=False, img_size=32)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(generator) < count(full) / 10
    assert generator[0][-1][-1].conv2.out_channels == 128  # the last stage: 512 * 0.25
    for kwargs, msg in [({"pretrained": True}, "no ImageNet weights"), ({"width": 0.0}, r"in \(0, 1\]"),
                        ({"arch": "efficientnet_b0"}, "resnets only")]:
        with pytest.raises(ColorganError, match=msg):
            build_generator(**{"pretrained": False, "width": 0.5, "img_size": 32, **kwargs})


def test_local_weights_file_loads_and_sums_rgb(tmp_path):
    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    g = build_generator(weights=str(path), pretrained=False, img_size=32)
    conv = g[0][0]
    assert conv.weight.shape[1] == 1
    assert torch.allclose(conv.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(g[0][4][0].conv1.weight, src.layer1[0].conv1.weight)


def test_weights_file_of_another_arch_is_refused(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(ColorganError, match="does not fit"):
        build_generator(weights=str(path), img_size=32)


def test_offline_without_weights_names_both_ways():
    with pytest.raises(ColorganError) as err:
        build_generator(pretrained=True, img_size=32)
    msg = str(err.value)
    assert "--weights" in msg and "--no-pretrained" in msg


def test_missing_weights_file_and_unknown_arch():
    with pytest.raises(ColorganError, match="does not exist"):
        build_generator(weights="/nonexistent/w.pth", img_size=32)
    with pytest.raises(ColorganError, match="no model called"):
        build_generator(arch="resnet_nope", pretrained=False, img_size=32)


@pytest.mark.parametrize("norm", ["batch", "instance", "spectral"])
def test_critic_returns_a_patch_map(norm):
    critic = build_critic(norm=norm)
    out = critic(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 1, 30, 30)  # pix2pix's 70x70 PatchGAN on 256 px
    assert critic[0].in_channels == 3
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in critic) == 3
