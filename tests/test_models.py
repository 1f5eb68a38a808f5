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


def test_local_weights_file_loads_and_folds_its_rgb_stem_onto_l(tmp_path):
    "The stem's RGB kernels, each divided by the body's std for that colour, summed and halved (`one_channel_stem`)."
    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    g = build_generator(weights=str(path), pretrained=False, img_size=32)
    conv = g[0][0]
    assert conv.weight.shape[1] == 1
    std = torch.tensor(src.pretrained_cfg["std"]).view(1, 3, 1, 1)
    assert torch.allclose(conv.weight, (src.conv1.weight / std).sum(1, keepdim=True) / 2, atol=1e-6)
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


def _skip_strides(net, size=64) -> list[int]:
    "The resolution reduction at each of the U-Net's skip connections, deepest first."
    from fastai.vision.models.unet import UnetBlock
    with torch.no_grad():
        net(torch.randn(1, 1, size, size))
    return [size // m.hook.stored.shape[-1] for m in net.layers if isinstance(m, UnetBlock)]


@pytest.mark.parametrize("arch, strides", [("resnet18", [16, 8, 4, 2]), ("resnet34", [16, 8, 4, 2]),
                                           ("tf_efficientnet_lite0", [16, 8, 4, 2]),
                                           ("regnetx_002", [16, 8, 4, 2]), ("convnext_atto", [16, 8, 4])])
def test_every_timm_cnn_is_cut_at_its_stages(arch, strides):
    net = build_generator(arch, pretrained=False, img_size=64).eval()
    assert _skip_strides(net) == strides  # one skip wherever the body halves the resolution
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 and first.weight.shape[1] == 1
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 96)).shape == (1, 2, 64, 96)


def test_efficientnet_keeps_its_blocks_apart_and_drops_the_head():
    body = build_generator("tf_efficientnet_lite0", pretrained=False, img_size=64)[0]
    blocks = timm.create_model("tf_efficientnet_lite0", pretrained=False).blocks
    assert len(body) == 2 + len(blocks)  # conv_stem, bn1, then each stage: not `blocks` as one child
    assert not any(m.__class__.__name__ == "Linear" for m in body.modules())
    assert body[-1][-1].conv_pwl.out_channels == 320  # the last stage's output; conv_head (1280) is gone


def test_resnet_state_dict_layout_is_unchanged():
    "The stage cut gives a resnet the same children as fastai's create_body: older artefacts still load."
    from fastai.vision.learner import create_body
    ours = build_generator("resnet18", pretrained=False, width=0.25, img_size=32)[0]
    theirs = create_body(timm.create_model("resnet18", pretrained=False, channels=(16, 32, 64, 128)), n_in=1,
                         pretrained=False)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_packaged_imagenet_weights_load_with_no_network():
    from colorgan.models import packaged_weights
    path = packaged_weights("tf_efficientnet_lite0")
    assert path is not None and path.is_file()  # a dependency of colorgan: pip brings it
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    g = build_generator("tf_efficientnet_lite0", pretrained=True, img_size=64)
    body = g[0]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.allclose(body[0].weight, raw["_conv_stem.weight"].sum(1, keepdim=True))
    assert type(body[0]) is type(ref.conv_stem)  # the stem keeps timm's TF "same" padding
    last = body[-1][-1]
    assert torch.equal(last.conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    bn = body[-1][-1].bn3
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # ImageNet statistics, not 0/1
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_every_packaged_key_is_mapped_onto_timm():
    from colorgan.models import lukemelas_to_timm, packaged_weights
    raw = torch.load(packaged_weights("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lukemelas_to_timm(raw, model)
    own = model.state_dict()
    assert mapped.keys() == own.keys()
    assert all(mapped[k].shape == own[k].shape for k in own)


def test_weights_file_in_lukemelas_layout_loads(tmp_path):
    "--weights takes an EfficientNet-PyTorch state dict too (e.g. the lite1/lite2 packages' files)."
    from colorgan.models import packaged_weights
    raw = torch.load(packaged_weights("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    path = tmp_path / "lite0.pth"
    torch.save(raw, path)
    g = build_generator("tf_efficientnet_lite0", pretrained=False, weights=str(path), img_size=64)
    assert torch.equal(g[0][2][0].conv_dw.weight, raw["_blocks.0._depthwise_conv.weight"])


@pytest.mark.parametrize("out_stride, blocks", [(1, 4), (2, 4), (4, 3), (8, 2)])
def test_out_stride_ends_the_decoder_early(out_stride, blocks):
    from fastai.layers import MergeLayer
    from fastai.vision.models.unet import UnetBlock
    net = build_generator("tf_efficientnet_lite0", pretrained=False, img_size=64, out_stride=out_stride).eval()
    assert sum(isinstance(m, UnetBlock) for m in net.layers) == blocks
    assert any(isinstance(m, MergeLayer) for m in net.layers) == (out_stride == 1)  # no full-size stage
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 96))
    assert out.shape == (2, 2, 64, 96) and out.abs().max() <= 1
    if out_stride > 1:  # ab is predicted at 1/out_stride and resized bilinearly: smooth across each cell
        with torch.no_grad():
            small = torch.nn.Sequential(*list(net.layers)[:-1])(torch.randn(1, 1, 64, 64))
        assert small.shape[-1] == 64 // out_stride


def test_out_stride_is_checked():
    with pytest.raises(ColorganError, match="out_stride"):
        build_generator(pretrained=False, width=0.25, img_size=32, out_stride=3)


def test_non_cnn_is_refused():
    from colorgan.models import stage_body
    with pytest.raises(ColorganError, match="feature stages"):
        stage_body(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))


def test_class_head_reads_out_ab_and_trains_on_cross_entropy(photo_dir):
    "head='classes': logits over the ab cells, their annealed mean as ab; stage one's loss is Zhang's cross-entropy."
    from colorgan.data import photo_dls
    from colorgan.learner import pretrain_learner
    from colorgan.losses import ColourClassLoss, ab_bins, ab_cell_centres
    from colorgan.models import class_head
    net = build_generator(pretrained=False, width=0.25, img_size=32, out_stride=4, head="classes").eval()
    head = class_head(net)
    loss = ColourClassLoss(head)
    with torch.no_grad(), loss.hooked():
        ab = net(torch.randn(2, 1, 32, 48))
        logits = loss.hook.stored
    assert ab.shape == (2, 2, 32, 48) and logits.shape == (2, ab_cell_centres().shape[0], 8, 12)
    assert loss.hook is None and not head._forward_hooks  # the hook lives only while `hooked()` is open
    assert ab.abs().max() < 0.05  # starts near uniform over the cells: gray
    assert "centres" not in " ".join(net.state_dict())  # a constant, not a weight
    centres = ab_cell_centres()
    assert torch.equal(ab_bins(centres.T[None, :, :, None]).flatten(), torch.arange(len(centres)))
    with torch.no_grad():  # a head sure of one cell reads out that cell's centre
        sure = torch.full((1, len(centres), 1, 1), -30.0)
        sure[0, 100] = 30.0
        assert torch.allclose(head(sure).flatten(), centres[100], atol=1e-5)
    dls = photo_dls(photo_dir, size=32, bs=4, valid_pct=0.25, augment=False, decode_workers=1)
    learn = pretrain_learner(dls, model=build_generator(pretrained=False, width=0.25, img_size=32, out_stride=4,
                                                        head="classes"))
    assert isinstance(learn.loss_func, ColourClassLoss)
    before = learn.validate()[0]
    learn.fit(2, 1e-2)
    assert learn.validate()[0] < before  # the cross-entropy falls
    assert learn.loss_func.hook is None and not class_head(learn.model)._forward_hooks  # nothing kept after a fit


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_lite0"])
def test_the_one_channel_stem_sees_a_gray_photo_as_its_imagenet_weights_did(arch):
    """ImageNet weights folded onto L: the stem (conv, then its BatchNorm in eval mode) gives on `norm_l(L)` what the
    RGB stem gave on the same gray photo normalised by the body's own mean and std (timm's pretrained_cfg), away
    from the zero padding at the border. ResNet's std (about 0.226) is not Lite0's (0.5)."""
    import copy

    import timm

    from colorgan.color import norm_l
    from colorgan.models import one_channel_stem
    torch.manual_seed(0)
    rgb_model = timm.create_model(arch, pretrained=False).eval()
    conv, bn = (rgb_model.conv1, rgb_model.bn1) if arch == "resnet18" else (rgb_model.conv_stem, rgb_model.bn1)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    gray = torch.rand(1, 1, 40, 40)  # [0, 1]
    mean = torch.tensor(rgb_model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(rgb_model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = bn(conv((gray.expand(1, 3, 40, 40) - mean) / std))
    l_model = copy.deepcopy(rgb_model)
    one_channel_stem(l_model, pretrained=True)
    conv1, bn1 = (l_model.conv1, l_model.bn1) if arch == "resnet18" else (l_model.conv_stem, l_model.bn1)
    with torch.no_grad():
        got = bn1(conv1(norm_l(gray * 100)))
    assert conv1.weight.shape[1] == 1 and got.shape == want.shape
    assert torch.allclose(got[..., 2:-2, 2:-2], want[..., 2:-2, 2:-2], atol=1e-4)
