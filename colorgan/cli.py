"""The `colorgan` command: a thin click layer. Each command parses, calls one library function, prints, exits."""
from __future__ import annotations

import json
import sys

import click

from . import __version__
from .utils import ColorganError, enable_logging


class _Group(click.Group):
    "Turns a ColorganError (bad input: a path, a recipe, a checkpoint) into a one-line message and exit code 1."
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ColorganError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="colorgan")
def main():
    "Learn to colorize black-and-white photographs (stage one: pretrain; stage two: gan-finetune), then colorize."
    enable_logging()


class _Finite(click.FloatRange):
    "click's FloatRange, which lets nan through (every comparison with nan is false), refusing nan too."
    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if value != value:
            self.fail(f"{value} is not a number", param, ctx)
        return value


FINITE_MINUTES = _Finite(min=0.1, max=7 * 24 * 60)  # a week at most: beyond, the plan's index lists grow without use


def _recipe_options(f):
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one recipe value, e.g. --set fit.n_epoch=5 (repeatable).")(f)
    f = click.option("--recipe", type=click.Path(dir_okay=False), help="A TOML recipe (see recipes/).")(f)
    f = click.option("--out", required=True, type=click.Path(file_okay=False), help="The run folder to write.")(f)
    f = click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last epoch.")(f)
    f = click.option("--overwrite", is_flag=True, help="Start again in an --out that already holds a run.")(f)
    f = click.option("--minutes", type=FINITE_MINUTES, help="Train for this long, wall clock: the whole "
                     "schedule is sized to it (it replaces the recipe's fit.n_epoch).")(f)
    f = click.option("--tensorboard", is_flag=True, help="Log losses, metrics, the schedule and sample grids for "
                     "TensorBoard under OUT/tensorboard (log.tensorboard=true; pip install 'colorgan[tensorboard]').")(f)
    return f


def _log(tensorboard: bool) -> list[str]:
    return ["log.tensorboard=true"] if tensorboard else []


@main.command()
@click.argument("data", type=click.Path())
@_recipe_options
@click.option("--no-pretrained", is_flag=True, help="Start the body from random weights (no ImageNet download).")
@click.option("--weights", type=click.Path(dir_okay=False), help="A local timm weights file for the body.")
def pretrain(data, out, recipe, overrides, resume, overwrite, tensorboard, minutes, no_pretrained, weights):
    "Stage one: train the generator on L1 with fit_one_cycle on the photos in DATA."
    from .train import pretrain as run
    overrides = list(overrides) + (["model.pretrained=false"] if no_pretrained else []) + _log(tensorboard) + \
        ([f"model.weights={json.dumps(weights)}"] if weights else [])
    run(data, out, recipe=recipe, overrides=overrides, resume=resume, overwrite=overwrite, minutes=minutes)
    click.echo(f"done: {out}")


@main.command("gan-finetune")
@click.argument("data", type=click.Path())
@click.option("--generator", required=True, type=click.Path(), help="Stage one's run folder or generator.pth.")
@_recipe_options
def gan_finetune(data, generator, out, recipe, overrides, resume, overwrite, tensorboard, minutes):
    "Stage two: fine-tune a generator against a conditional PatchGAN on the photos in DATA."
    from .train import gan_finetune as run
    run(data, generator, out, recipe=recipe, overrides=list(overrides) + _log(tensorboard), resume=resume,
        overwrite=overwrite, minutes=minutes)
    click.echo(f"done: {out}")


def given(**options) -> dict:
    "The options the user gave: each default lives once, in the library function's signature (None: not given)."
    return {k: v for k, v in options.items() if v is not None}


RENDER_SIZE = click.option("--render-size", type=click.IntRange(32, 4096),
                           help="Network input size, 32 to 4096 (default: the model's training size).")
ENGINE = click.option("--engine", type=click.Choice(["auto", "torch", "onnxruntime"]),
                      help="What runs the network (default auto: onnxruntime on a CPU when it is installed, faster "
                           "with the same colours; torch otherwise).")


@main.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the colorized photos.")
@RENDER_SIZE
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@click.option("--compare", is_flag=True, help="Also write NAME_compare (gray | colour) beside each output.")
@click.option("--saturation", type=click.FloatRange(0, 4),
              help="Scale the predicted colour (default 1: as trained; above 1 more vivid, 0 the photo's own gray).")
@click.option("--bs", type=click.IntRange(min=1), help="Photos (or film frames) per network call (default 8).")
@click.option("--temporal", type=_Finite(0, 0.99), help="Films: how strongly a frame's colour follows the frames "
              "before it in the same scene (default 0.6; 0: every frame alone). Needs the video extra.")
@click.option("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one).")
@ENGINE
def colorize(model, inputs, out, render_size, overwrite, compare, saturation, bs, temporal, device, engine):
    """Colorize photos and films at full resolution. MODEL is a run folder or generator.pth; INPUTS are files,
    folders (recursive) and globs; outputs mirror the inputs under --out; a film (mp4, mov, mkv, webm, avi) keeps
    its size, frame rate and sound. Exit code 1 if any input failed."""
    from .colorize import colorize_paths
    from .inference import Colorizer
    colorizer = Colorizer.from_artifact(model, render_size, device, **given(saturation=saturation, engine=engine))
    result = colorize_paths(colorizer, inputs, out, overwrite, compare, **given(bs=bs, temporal=temporal))
    for src, why in result.failed:
        click.echo(f"failed: {src}: {why}", err=True)
    click.echo(f"{len(result.written)} colorized, {len(result.skipped)} kept, {len(result.failed)} failed -> {out}")
    sys.exit(1 if result.failed else 0)


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="[MODEL] DATA")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for metrics and samples.")
@click.option("--baseline", type=click.Choice(["gray"]), help="Also score the L channel alone (no colour).")
@RENDER_SIZE
@click.option("--overwrite", is_flag=True, help="Replace metrics.json, per_image.csv and samples.png in --out.")
@click.option("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one).")
@ENGINE
def evaluate(paths, out, baseline, render_size, overwrite, device, engine):
    """Take the colour out of the colour photos in DATA, colorize them with MODEL, and compare with the originals
    (PSNR, SSIM, CIEDE2000, colourfulness, delta-CF) under a fixed, stated protocol. Without MODEL, --baseline gray
    scores the gray floor alone."""
    from .evaluate import evaluate as run, format_table
    if len(paths) > 2:
        raise click.UsageError(f"evaluate takes [MODEL] DATA, not {len(paths)} paths")
    model, data = (None, *paths) if len(paths) == 1 else paths
    click.echo(format_table(run(model, data, out, baseline, render_size=render_size, device=device,
                                overwrite=overwrite, **given(engine=engine))))


@main.command()
@click.argument("model", type=click.Path())
@click.option("--onnx", "onnx_path", required=True, help="The .onnx file to write.")
@click.option("--opset", type=click.IntRange(13, 20),
              help="ONNX opset, 13 to 20 (default 17; what torch's exporter writes for this network).")
@click.option("--overwrite", is_flag=True, help="Replace an existing .onnx file.")
def export(model, onnx_path, opset, overwrite):
    "Export MODEL to ONNX (input L in [0,100], output ab; dynamic size, multiples of 32), checked against torch."
    from .export import export_onnx
    diffs = export_onnx(model, onnx_path, **given(opset=opset, overwrite=overwrite or None))
    checked = "; ".join(f"{'x'.join(map(str, s))}: max |diff| {d:.2e}" for s, d in diffs) if diffs else "not checked"
    click.echo(f"wrote {onnx_path} ({checked})")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--host", help="Address to listen on (default 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default 8000).")
@RENDER_SIZE
@click.option("--max-mb", type=_Finite(0.1, 1024), help="Largest request accepted, in MB (default 20).")
@click.option("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one).")
@ENGINE
def serve(model, host, port, render_size, max_mb, device, engine):
    "Serve a web page and an HTTP API (POST /colorize, /render, /check; GET /health) that colorize photos."
    from .serve import serve as run
    max_bytes = None if max_mb is None else int(max_mb * 2 ** 20)
    run(model, render_size=render_size, device=device, **given(host=host, port=port, max_bytes=max_bytes,
                                                               engine=engine))


@main.command()
@click.option("--device", help="Show the policy for this device (default: the GPU when there is one).")
def env(device):
    "Print versions, the devices torch sees and the device policy a run would pick: paste it into bug reports."
    from .device import environment
    info = environment(device)
    for name, value in info["versions"].items():
        click.echo(f"{name:<12} {value}")
    for d in info["devices"]:
        click.echo(f"{d['device']:<12} " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "device"))
    click.echo("policy       " + ", ".join(f"{k} {v}" for k, v in info["policy"].items()))


@main.command("sample-photos")
@click.argument("folder", type=click.Path(file_okay=False))
def sample_photos(folder):
    "Write the colour photos that ship with scikit-image to FOLDER, for a first training run."
    from .samples import write_sample_photos
    click.echo(f"{len(write_sample_photos(folder))} photos in {folder}")


if __name__ == "__main__":
    sys.exit(main())
