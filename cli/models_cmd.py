"""`tvclean models list|export|fetch|quantize`: the feature-extractor models."""

from __future__ import annotations

import click

from tvcore.io.modelzoo import cache_dir, fetch_model, list_models

from .common import echo_json, info, user_errors


@click.group("models")
def models_group() -> None:
    """List, export, fetch and quantize feature-extractor models.

    Exported and fetched models live in the cache ($TVCLEAN_CACHE, default
    ~/.cache/tvclean) and are used with `tvclean extract --model NAME`.
    """


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@user_errors
def list_command(as_json: bool) -> None:
    """List the known and cached models and whether each is available."""
    rows = list_models()
    if as_json:
        echo_json(rows)
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['status']:<13}  {r['dim'] or '?':>5}-d  "
                   f"{r['input_size']}px  {r['precision']}  {r['description']}")
    info(f"cache: {cache_dir()}")


@models_group.command("export")
@click.argument("name", type=click.Choice(["efficientnet-lite0", "resnet50"]))
@click.option("-o", "--output", "out", type=click.Path(),
              help="Output .onnx file or folder.  [default: the cache]")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Local copy of the pretrained weights (checked by sha256); without it "
                   "ResNet50's are downloaded from download.pytorch.org.")
@click.option("--untrained", is_flag=True,
              help="Export random weights (for tests), named NAME-untrained.")
@user_errors
def export_command(name: str, out: str | None, weights: str | None, untrained: bool) -> None:
    """Export NAME to ONNX from its pretrained torch weights (needs tvclean[torch]).

    The export is checked against torch (max |difference| printed) and gets a
    JSON of metadata with its sha256 next to it.
    """
    from tvcore.nets.export import export_model
    result = export_model(name, out=out, pretrained=not untrained, weights=weights)
    diff = ", ".join(f"{k} {v:.2e}" for k, v in result.max_abs_diff.items())
    click.echo(f"exported {result.path}\nsha256 {result.sha256}\nmax |onnx - torch|: {diff}")


@models_group.command("fetch")
@click.argument("name")
@click.option("--url", help="Where the ONNX file is published (http, https or file).")
@click.option("--sha256", "sha256", help="Expected sha256 of the file (64 hex digits).")
@user_errors
def fetch_command(name: str, url: str | None, sha256: str | None) -> None:
    """Download a published ONNX model into the cache as NAME, verified by sha256.

    A wrong checksum or an interrupted download is an error and leaves
    nothing in the cache.
    """
    spec = fetch_model(name, url=url, sha256=sha256)
    click.echo(f"fetched {spec.name} into {spec.path}\nsha256 {spec.sha256}")


@models_group.command("quantize")
@click.argument("model")
@click.option("--name", help="Name of the int8 model in the cache.  [default: NAME-int8 for a "
                             "known or cached model, STEM-<sha256 prefix>-int8 for a file]")
@click.option("-o", "--output", "out", type=click.Path(),
              help="Output .onnx file or folder.  [default: the cache]")
@click.option("--calibration", type=click.Path(file_okay=False),
              help="A folder of your own images (any layout) whose activations set the int8 "
                   "ranges.  [default: images that ship with tvclean: Fashion-MNIST and two "
                   "photos]")
@click.option("--calibration-images", "limit", type=click.IntRange(min=1), default=128,
              show_default=True, help="At most this many images of --calibration.")
@user_errors
def quantize_command(model: str, name: str | None, out: str | None, calibration: str | None,
                     limit: int) -> None:
    """Make an int8 version of MODEL (a known or cached model, or an .onnx file).

    Static QDQ quantization with onnxruntime (int8 weights per channel, uint8
    activations), needs the onnx package: pip install 'tvclean[quantize]'.
    `tvclean extract --model MODEL --precision int8` then uses the result. The
    agreement of its features with MODEL's (cosine similarity) is printed.
    """
    from tvcore.io.quantize import quantize
    result = quantize(model, out=out, name=name, calibration=calibration,
                      calibration_limit=limit)
    click.echo(f"quantized {result.base} into {result.path}\nsha256 {result.sha256}")
    for kind, cosine in result.agreement.items():
        click.echo(f"cosine to the fp32 features, {kind}: mean {cosine['mean']:.4f}, "
                   f"min {cosine['min']:.4f}")


COMMANDS = [models_group]
