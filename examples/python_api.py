"""Build the stage-one Learner in Python and use it like any fastai Learner: lr_find, fit_one_cycle, show_results.

    python examples/python_api.py [PHOTOS] [--size 64] [--epochs 2]

Without PHOTOS it uses scikit-image's sample photos. Pictures are saved as PNGs beside the run, not shown.
"""
import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import colorgan  # noqa: E402
from colorgan.data import photo_dls  # noqa: E402
from colorgan.samples import write_sample_photos  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("photos", nargs="?")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="runs/example")
    args = p.parse_args()
    photos = args.photos or write_sample_photos(Path(tempfile.mkdtemp()) / "photos")[0].parent
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dls = photo_dls(photos, size=args.size, bs=8)
    learn = colorgan.pretrain_learner(dls, pretrained=False, path=out)
    suggestion = learn.lr_find(num_it=30, show_plot=True)  # 30 steps keep it quick on a CPU
    plt.savefig(out / "lr_find.png")
    print(f"lr_find suggests {suggestion.valley:.2e}")
    learn.fit_one_cycle(args.epochs, suggestion.valley)
    learn.show_results(max_n=4)
    plt.savefig(out / "show_results.png")
    learn.export("stage_one.pkl")  # fastai's own export of the whole Learner (pickled; for fastai users)
    print(f"wrote {out}/lr_find.png, {out}/show_results.png and {out}/stage_one.pkl")


if __name__ == "__main__":
    main()
