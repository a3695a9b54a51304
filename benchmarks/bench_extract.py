"""`extract` end to end vs bare onnxruntime inference on pre-decoded tensors (EfficientNet-Lite0,
fp32 and int8).

    python -m benchmarks extract [--photos N] [--fashion N] [--repeat R] [--precision fp32,int8]
                                 [--sweep]

Data sets, written to a temporary folder:
  photos   N JPEGs of 500x375 (quality 90): random crops and flips of
           scikit-learn's two sample photos, in 2 class folders.
  fashion  N Fashion-MNIST 28x28 grey PNGs in 10 class folders
           (/usr/share/datasets/fashion-mnist; scikit-learn digits if absent).
For each set and configuration: end-to-end `tvcore.extract` into a fresh run
(discovery, model load, decoding, inference, artifacts; wall time) and bare
inference of the same model on the same images decoded beforehand, in the same
process, two ways: "plain ORT" is one caller running one session with all the
threads (the better of spinning on/off), "ORT streams" is extract's own scheme
(concurrent single-threaded calls) without the decoding. Each configuration
runs in both precisions (--precision): the int8 rows use the embedded
efficientnet-lite0-int8 for both the bare and the end-to-end figures, and the
last column compares every end-to-end rate with the fp32 "plain ORT" rate of
the same round, the one reference all rows share. Runs alternate and the best
of R repeats is kept, so a busy machine hurts all sides alike; ratios are
medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tvcore.config import Config, ExtractConfig
from tvcore.cores import available_cores
from tvcore.device import batch_size_for
from tvcore.io.dataset import discover
from tvcore.io.images import load_image
from tvcore.io.inference import FeatureExtractor
from tvcore.io.modelzoo import resolve_model
from tvcore.stages.extract import extract

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
FASHION_LABELS = Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")
VAL_SHARE = 0.1


def write_photo_set(root: Path, n: int, seed: int = 0) -> Path:
    """n JPEGs of 500x375 cut from the two sample photos (class = source photo)."""
    from sklearn.datasets import load_sample_image
    rng = np.random.default_rng(seed)
    photos = {"china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg")}
    for i in range(n):
        name = ("china", "flower")[i % 2]
        image = photos[name]
        height, width = image.shape[:2]
        crop_h, crop_w = rng.integers(280, height + 1), rng.integers(380, width + 1)
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        picture = Image.fromarray(image[top:top + crop_h, left:left + crop_w])
        picture = picture.resize((500, 375), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        _save(picture, root, i, n, name, "jpg", quality=90)
    return root


def write_fashion_set(root: Path, n: int) -> Path:
    """n 28x28 grey PNGs from Fashion-MNIST (or 8x8 digits scaled up if it is absent)."""
    images, labels = _fashion(n)
    for i, (image, label) in enumerate(zip(images, labels)):
        _save(Image.fromarray(image), root, i, n, f"class{label}", "png")
    return root


def _fashion(n: int) -> tuple[np.ndarray, np.ndarray]:
    if FASHION.exists():
        with gzip.open(FASHION) as fh:
            images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_LABELS) as fh:
            labels = np.frombuffer(fh.read(), np.uint8, offset=8)
        return images[:n], labels[:n]
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images[:n] * 255 / 16).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(im).resize((28, 28))) for im in images]), digits.target[:n]


def _save(picture: Image.Image, root: Path, i: int, n: int, label: str, ext: str, **args) -> None:
    split = "val" if i >= n * (1 - VAL_SHARE) else "train"
    folder = root / split / label
    folder.mkdir(parents=True, exist_ok=True)
    picture.save(folder / f"{i:05d}.{ext}", **args)


@dataclass
class Rate:
    """Images per second of wall time, and CPU milliseconds (all threads) per image."""

    per_second: float
    cpu_ms: float


def timed(work, images: int) -> Rate:
    """Run work() once and measure its wall and process CPU time."""
    cpu, wall = _cpu_seconds(), time.perf_counter()
    work()
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return Rate(images / wall, cpu * 1000 / images)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_plain(tensors: list[np.ndarray], batch_size: int, threads: int,
               model: str = "efficientnet-lite0") -> Rate:
    """Plain onnxruntime on pre-decoded tensors: one caller, `threads` intra-op threads,
    the faster of spinning on and off."""
    import onnxruntime as ort
    model = resolve_model(model)
    batches = _batches(tensors, batch_size)
    rates = []
    for spinning in ("1", "0"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
        session.run(["features"], {"images": batches[0]})  # warm-up
        rates.append(timed(lambda s=session: [s.run(["features"], {"images": b}) for b in batches],
                           len(tensors)))
    return max(rates, key=lambda r: r.per_second)


def bare_streams(tensors: list[np.ndarray], config: ExtractConfig) -> Rate:
    """Extract's own inference scheme (concurrent streams) on pre-decoded tensors."""
    with FeatureExtractor(resolve_model(config.model, config.precision), config.batch_size,
                          config.threads, 1, device=config.device) as extractor:
        batches = _batches(tensors, extractor.batch_size)
        extractor.features(batches[0])  # warm-up
        return timed(lambda: list(extractor.runners.map(extractor.features_in_this_thread, batches)),
                     len(tensors))


def _batches(tensors: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    return [np.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def end_to_end(root: Path, work: Path, config: ExtractConfig, images: int) -> Rate:
    """A whole `extract` call into a fresh run directory (start-up included)."""
    run = Path(tempfile.mkdtemp(dir=work))
    return timed(lambda: extract(root, None, run, Config(extract=config), progress=False), images)


def measure(name: str, root: Path, work: Path, configs: list[ExtractConfig], repeat: int) -> list:
    """One row per config: decode CPU ms/image, then plain, streams and extract Rates.

    Rates are each the fastest of `repeat` rounds (a busy machine only slows
    things down); ratios are the median over rounds of extract / bare within
    a round, and of extract / the fp32 plain-ORT reference of the round, so
    load from other processes mostly cancels out.
    """
    data = discover(root)
    prep = resolve_model("efficientnet-lite0").preprocess
    tensors: list[np.ndarray] = []
    decode = timed(lambda: tensors.extend(load_image(p, prep)
                                          for p in data.train.paths + data.val.paths),
                   len(data.train) + len(data.val))
    rounds: list[list] = [[] for _ in configs]
    references = []
    for _ in range(repeat):
        first = configs[0]
        references.append(bare_plain(tensors, batch_size_for(first.batch_size, "cpu"),
                                     first.threads or available_cores()))
        for config, done in zip(configs, rounds):
            model = resolve_model(config.model, config.precision)
            batch = batch_size_for(config.batch_size, "cpu")
            done.append((bare_plain(tensors, batch, config.threads or available_cores(),
                                    str(model.path)),
                         bare_streams(tensors, config),
                         end_to_end(root, work, config, len(tensors))))
    rows = []
    for config, done in zip(configs, rounds):
        best = [max((r[i] for r in done), key=lambda rate: rate.per_second) for i in range(3)]
        ratios = [float(np.median([r[2].per_second / r[i].per_second for r in done]))
                  for i in range(2)]
        ratios.append(float(np.median([r[2].per_second / ref.per_second
                                       for r, ref in zip(done, references)])))
        rows.append((name, len(tensors), decode.cpu_ms, config, *best, *ratios))
    return rows


def sweep_configs(precisions: list[str]) -> list[ExtractConfig]:
    return [ExtractConfig(precision=p, batch_size=b, threads=t, decode_workers=w)
            for p in precisions for b in (8, 32) for t in (1, 2) for w in (1, 2)]


def print_table(rows: list) -> None:
    print("img/s: wall-clock throughput; cpu: CPU ms per image over all threads; "
          "ratios: extract / bare (median of rounds); /fp32 ref: extract / fp32 plain ORT")
    print(f"{'data':<8} {'images':>6} {'decode':>6} {'prec':>4} {'batch':>5} {'threads':>7} "
          f"{'decoders':>8} {'plain ORT':>15} {'ORT streams':>15} {'extract':>15} {'/plain':>6} "
          f"{'/streams':>8} {'/fp32 ref':>9}")
    print(f"{'':<8} {'':>6} {'cpu':>6} {'':>4} {'':>5} {'':>7} {'':>8}"
          + f" {'img/s':>8} {'cpu':>6}" * 3)
    for name, n, decode_ms, c, plain, streams, e2e, vs_plain, vs_streams, vs_ref in rows:
        rates = "".join(f" {r.per_second:>8.1f} {r.cpu_ms:>6.2f}" for r in (plain, streams, e2e))
        print(f"{name:<8} {n:>6} {decode_ms:>6.2f} {c.precision:>4} "
              f"{c.batch_size or 'auto':>5} {c.threads or 'all':>7} "
              f"{c.decode_workers or 'auto':>8}{rates} {vs_plain:>6.0%} {vs_streams:>8.0%} "
              f"{vs_ref:>9.2f}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks extract", description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=600, help="number of 500x375 JPEGs")
    parser.add_argument("--fashion", type=int, default=600, help="number of 28x28 PNGs")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of measurements")
    parser.add_argument("--precision", default="fp32,int8",
                        help="comma-separated precisions to run every configuration in")
    parser.add_argument("--sweep", action="store_true", help="also try batch sizes and thread splits")
    args = parser.parse_args(argv)
    precisions = args.precision.split(",")
    configs = ([ExtractConfig(precision=p) for p in precisions]
               + (sweep_configs(precisions) if args.sweep else []))
    print(f"EfficientNet-Lite0, {available_cores()} cores; default config: {ExtractConfig()}")
    with tempfile.TemporaryDirectory(prefix="tvclean-bench-") as tmp:
        work = Path(tmp)
        rows = []
        if args.photos:
            rows += measure("photos", write_photo_set(work / "photos", args.photos), work,
                            configs, args.repeat)
        if args.fashion:
            rows += measure("fashion", write_fashion_set(work / "fashion", args.fashion), work,
                            configs, args.repeat)
    print_table(rows)
