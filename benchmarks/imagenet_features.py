"""What the packaged EfficientNet-Lite0 ImageNet weights know (docs/gan.md, round five).

    python benchmarks/imagenet_features.py ../shared/data

1. Top-1 on the ImageNet sample photos of PHOTOS/train (`imagenet-sample-images__nXXXXXXXX_*.jpg`, the class in the
   name): timm's `tf_efficientnet_lite0` with the weights renamed by `colorgan.models.lukemelas_to_timm`, on RGB
   (`(x * 255 - 127) / 128`, 224 px), and with colorgan's one-channel stem on the photos' CIELAB L (as colorgan
   feeds it), at 224 and 128 px.
2. A linear probe: ridge regression from the frozen one-channel body's features (its outputs at the /16 and /32
   stages, resized to 16x16) to each 16x16 cell's mean ab, fitted on `--probe-photos` training photos; its L1
   against the training photos' median tint, on those photos and on PHOTOS/valid; for photos of each
   `--probe-sizes` and `--probe-archs` (Lite0: 1.5% worse than the tint on valid/ at 128 px, 3.1% better at 224
   px; docs/gan.md, round eight).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def top1(files, size: int, gray: bool) -> float:
    import numpy as np
    import timm
    import torch
    from PIL import Image
    from timm.data import ImageNetInfo

    from colorgan.color import lab_to_model, rgb_to_lab
    from colorgan.models import lukemelas_to_timm, one_channel_stem, packaged_weights
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(lukemelas_to_timm(torch.load(packaged_weights("tf_efficientnet_lite0"),
                                                       map_location="cpu", weights_only=True), model))
    if gray:
        one_channel_stem(model, pretrained=True)
    info, right = ImageNetInfo(), 0
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB").resize((size, size)), dtype=np.float32)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        x = lab_to_model(rgb_to_lab(x / 255))[0] if gray else (x - 127) / 128
        with torch.no_grad():
            guess = model(x).argmax().item()
        right += info.index_to_label_name(guess) == f.name.split("__")[1].split("_")[0]
    return right / len(files)


def _features(body, dl, n: int):
    import torch
    import torch.nn.functional as F
    xs, ys, seen = [], [], 0
    for l, ab in dl:
        if seen >= n:
            break
        seen += len(l)
        with torch.no_grad():
            h, outs = l, []
            for i, layer in enumerate(body):
                h = layer(h)
                if i in (6, 8):  # blocks.4 (/16) and blocks.6 (/32)
                    outs.append(F.interpolate(h, size=(16, 16), mode="bilinear"))
        f = torch.cat(outs, 1)
        xs.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        ys.append(F.adaptive_avg_pool2d(ab, 16).permute(0, 2, 3, 1).reshape(-1, 2))
    return torch.cat(xs), torch.cat(ys)


def probe(photos: str, n: int, size: int = 128, arch: str = "tf_efficientnet_lite0", penalty: float = 10.0) -> dict:
    import torch

    from colorgan.data import photo_dls
    from colorgan.models import _timm_model, one_channel_stem, stage_body
    torch.manual_seed(0)
    dls = photo_dls(photos, size=size, bs=64, augment=False)
    model = _timm_model(arch, True, None).eval()
    one_channel_stem(model, True)
    body = stage_body(model).eval()
    xt, yt = _features(body, dls.train.new(shuffle=True), n)
    xv, yv = _features(body, dls.valid, len(dls.valid.dataset))
    mu, sd = xt.mean(0), xt.std(0) + 1e-5
    design = lambda x: torch.cat([(x - mu) / sd, torch.ones(len(x), 1)], 1)  # noqa: E731
    a = design(xt)
    w = torch.linalg.solve(a.T @ a + penalty * torch.eye(a.shape[1]), a.T @ yt)
    tint, mean = yt.median(0).values, yt.mean(0)
    l1 = lambda y, p: (y - p).abs().mean().item()  # noqa: E731
    return {"train": 1 - l1(yt, a @ w) / l1(yt, tint), "valid": 1 - l1(yv, design(xv) @ w) / l1(yv, tint),
            "valid_mse": 1 - ((yv - design(xv) @ w) ** 2).mean().item() / ((yv - mean) ** 2).mean().item()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", help="a folder with train/ and valid/")
    p.add_argument("--photos-top1", type=int, default=200, help="ImageNet sample photos for the top-1 check")
    p.add_argument("--probe-photos", type=int, default=1200, help="training photos the probe is fitted on")
    p.add_argument("--probe-sizes", type=int, nargs="+", default=[128, 224], help="photo sizes the body sees")
    p.add_argument("--probe-archs", nargs="+", default=["tf_efficientnet_lite0"],
                   help="bodies to probe (tf_efficientnet_lite1 and lite2 need their weights' packages installed)")
    args = p.parse_args(argv)
    files = sorted(Path(args.photos, "train").glob("imagenet-sample-images__*"))[:args.photos_top1]
    print(f"| check | photos | value |\n|---|---:|---:|")
    if files:
        for label, size, gray in (("top-1, RGB, 224 px", 224, False), ("top-1, L, 224 px", 224, True),
                                  ("top-1, L, 128 px", 128, True)):
            print(f"| {label} | {len(files)} | {top1(files, size, gray):.1%} |")
    for arch in args.probe_archs:
        for size in args.probe_sizes:
            gains, name = probe(args.photos, args.probe_photos, size, arch), f"{arch.split('_')[-1]}, {size} px"
            print(f"| probe, {name}: L1 gain over the median tint, training photos | {args.probe_photos} | "
                  f"{gains['train']:.1%} |")
            print(f"| probe, {name}: L1 gain over the median tint, valid/ | | {gains['valid']:.1%} |")
            print(f"| probe, {name}: MSE gain over the mean tint, valid/ | | {gains['valid_mse']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
