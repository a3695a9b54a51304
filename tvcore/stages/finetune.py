"""The `finetune` stage: train the CNN on the weak training labels, export it for `extract`.

The original Training-ValueNet first fine-tunes an ImageNet CNN plus a softmax
head on the whole weakly-labeled training set (SGD lr 1e-3, momentum 0.9,
Nesterov, weight decay 1e-4, batch 32, early stopping on validation accuracy
with min_delta 0.005 and patience 1), or loads a previously trained baseline.
This stage does that with torch (the `tvclean[torch]` extra): training images
get mild random crops and flips, validation images exactly extract's
preprocessing; the epoch with the best validation accuracy is exported to
ONNX with the same preprocessing, and the run's [extract] model is set to it.

    RUN/finetune/
        model.onnx, model.json  the best epoch's network: images -> features (N, D), logits
        best.pt                 its state dict (torch.save; read back with weights_only=True)
        checkpoint.pt           resumable state: weights, optimizer, position, history;
                                removed once the model is exported
        meta.json               per-epoch history, best epoch, failed images, fingerprint

Checkpoints are written at the end of every epoch and every
CHECKPOINT_SECONDS within one. Shuffling, crops and drop-connect are seeded
by (seed, epoch, batch), so a resumed run ends with the same weights as an
uninterrupted one (same threads, CPU).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomicfile import atomic_write_json, read_json
from ..config import Config, FinetuneConfig
from ..cores import available_cores
from ..errors import TvcleanError
from ..io.dataset import Dataset, SplitFiles, discover
from ..io.images import Preprocess, load_image
from ..io.inference import FeatureExtractor
from ..io.modelzoo import KNOWN_MODELS, model_from_file, sha256_file, write_metadata
from ..nets import export
from ..nets.augment import load_augmented
from ..progress import Progress
from ..rundir import RunDir
from .extract import check_inputs_apart

if TYPE_CHECKING:
    from ..nets.torchnets import Backbone
    from ..nets.training import Trainer

MODEL_FILE = "model.onnx"
CHECKPOINT_SECONDS = 60.0  # at most this much training is redone after a kill
PREFETCH_BATCHES = 2  # batches decoding while the current one trains


@dataclass
class FinetuneResult:
    """What `finetune` produced: the ONNX model that `extract` now uses.

    history: one dict per epoch (train_loss, train_accuracy on the weak
    labels, val_loss, val_accuracy, seconds, images). best_epoch: 1-based.
    failed: {path: error} of images that could not be decoded (skipped).
    trained: False when a baseline was given instead.
    """

    run: Path
    model_path: Path
    sha256: str
    trained: bool
    base_model: str
    input_size: int
    classes: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of this call
    up_to_date: bool = False  # an earlier run had already finished

    @property
    def best_val_accuracy(self) -> float | None:
        if self.best_epoch is None:
            return None
        return self.history[self.best_epoch - 1]["val_accuracy"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(run=str(self.run), model_path=str(self.model_path),
                    best_val_accuracy=self.best_val_accuracy)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], **changes: Any) -> FinetuneResult:
        names = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in names}
        values.update(run=Path(values["run"]), model_path=Path(values["model_path"]), **changes)
        return cls(**values)


class EarlyStopping:
    """Stop when validation accuracy has not risen by more than min_delta for `patience` epochs.

    Keras' EarlyStopping (the original's): an epoch improves if its accuracy
    exceeds the last improving one by more than min_delta. The best epoch is
    the one with the highest accuracy (the first of equals), as Keras'
    save-best-only checkpoint keeps.
    """

    def __init__(self, min_delta: float, patience: int):
        self.min_delta = min_delta
        self.patience = patience
        self.reference = -math.inf  # accuracy of the last improving epoch
        self.wait = 0
        self.best = -math.inf
        self.best_epoch: int | None = None  # 1-based
        self.epochs = 0

    def update(self, accuracy: float) -> bool:
        """Record one epoch's validation accuracy; True: stop training now."""
        self.epochs += 1
        if accuracy > self.best:
            self.best, self.best_epoch = accuracy, self.epochs
        if accuracy - self.min_delta > self.reference:
            self.reference, self.wait = accuracy, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


def replay_early_stopping(accuracies: list[float], min_delta: float,
                          patience: int) -> tuple[bool, int | None]:
    """(stop after the last epoch?, best epoch, 1-based) for a run's validation accuracies."""
    stopping, stop = EarlyStopping(min_delta, patience), False
    for accuracy in accuracies:
        stop = stopping.update(accuracy)
    return stop, stopping.best_epoch


def training_preprocess(config: FinetuneConfig) -> Preprocess:
    """The model's preprocessing at config.input_size (0: its own), keeping its crop ratio."""
    own = KNOWN_MODELS[config.model].preprocess
    size = config.input_size or own.size
    return Preprocess(size=size, resize=round(size * own.resize / own.size),
                      mean=own.mean, std=own.std)


def finetune(train: str | Path, val: str | Path | None, run: str | Path | RunDir,
             config: Config | Mapping[str, Mapping[str, Any]] | None = None,
             progress: bool | None = None) -> FinetuneResult:
    """Fine-tune config.finetune.model on TRAIN's labels, export the best epoch into RUN.

    train, val: class-folder roots or CSV manifests (as `extract`). With
    config.finetune.baseline set, that ONNX model is checked and used instead
    (no training). Either way RUN/config.toml's [extract] model becomes the
    resulting ONNX file. Re-running resumes an interrupted run and skips a
    finished one. Needs the torch extra unless a baseline is given. config: a
    Config, or {section: {option: value}} overrides of the run's config.toml.
    """
    run = RunDir.of(run)
    dataset = discover(train, val)
    check_inputs_apart(run, dataset)
    with run.writing("finetune"):
        config = run.resolve(config)
        if config.finetune.baseline:
            return use_baseline(config.finetune.baseline, run, config)
        export.require_torch()
        return _finetune(dataset, run, config, progress)


def _finetune(dataset: Dataset, run: RunDir, config: Config,
              progress: bool | None) -> FinetuneResult:
    started = time.perf_counter()
    prep = training_preprocess(config.finetune)
    fingerprint = _fingerprint(dataset, config, prep)
    folder = run.finetune
    result = _finished(folder, fingerprint)
    if result is None:
        result = _train_and_export(dataset, run, config, prep, fingerprint, progress)
    else:
        run.log("finetune: the fine-tuned model is up to date, nothing to do")
    result.seconds = time.perf_counter() - started
    _record_model(run, config, result.model_path)
    run.record_stage("finetune", result.seconds)
    return result


def use_baseline(path: str | Path, run: RunDir, config: Config) -> FinetuneResult:
    """Check a previously trained ONNX model and make it the run's extraction model."""
    spec = model_from_file(Path(path).expanduser())
    with FeatureExtractor(spec, batch_size=1, threads=1, decode_workers=1, device="cpu") as extractor:
        dim = extractor.dim  # opening it checks the model contract
    result = FinetuneResult(run=run.root, model_path=spec.path, sha256=spec.sha256, trained=False,
                            base_model=spec.name, input_size=spec.preprocess.size)
    atomic_write_json(run.finetune / "meta.json",
                      {"fingerprint": None, "baseline": str(spec.path), "dim": dim,
                       **result.to_dict()})
    run.log(f"finetune: baseline {spec.path} ({spec.sha256[:12]}, {dim}-d), no training")
    _record_model(run, config, spec.path)
    return result


def _record_model(run: RunDir, config: Config, model_path: Path) -> None:
    """RUN/config.toml: this [finetune], and [extract] with the fine-tuned model."""
    recorded = copy.deepcopy(config)
    recorded.extract.model = str(model_path)
    run.save_config(recorded, ["finetune", "extract"])


def _fingerprint(dataset: Dataset, config: Config, prep: Preprocess) -> str:
    """Identifies the inputs and settings of a training run (its checkpoints must match)."""
    settings = asdict(config.finetune)
    # No effect on the weights (threads, device: a run may resume elsewhere, to rounding).
    for name in ("enabled", "baseline", "threads", "device"):
        settings.pop(name)
    content = {"classes": dataset.classes, "prep": prep.to_dict(), "settings": settings,
               "max_pixels": config.extract.max_pixels,
               "splits": [(s.paths, s.labels.tolist()) for s in dataset.splits]}
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _finished(folder: Path, fingerprint: str) -> FinetuneResult | None:
    """The earlier result if the same run already exported its model intact."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    model = Path(meta.get("model_path", ""))
    if meta.get("fingerprint") != fingerprint or not model.is_file():
        return None
    if sha256_file(model) != meta.get("sha256"):
        return None
    return FinetuneResult.from_dict(meta, up_to_date=True)


def _train_and_export(dataset: Dataset, run: RunDir, config: Config, prep: Preprocess,
                      fingerprint: str, progress: bool | None) -> FinetuneResult:
    settings = config.finetune
    backbone = _backbone(settings)
    from ..nets import training as ft

    folder = run.finetune
    folder.mkdir(parents=True, exist_ok=True)
    with ft.torch_threads(settings.threads, available_cores()):
        trainer = ft.Trainer(backbone, len(dataset.classes), settings)
        run.log(f"finetune: {settings.model} on {len(dataset.train)} train and "
                f"{len(dataset.val)} val images, {len(dataset.classes)} classes, {prep.size}px, "
                f"on {trainer.device}")
        training = _Training(trainer, dataset, prep, config, folder, progress)
        training.resume(fingerprint)
        training.run()
        trainer.model.load_state_dict(ft.load_state(folder / "best.pt")["model"])
        result = _export(trainer.cpu_model(), folder, dataset, settings, prep, training.state)
    atomic_write_json(folder / "meta.json", {"fingerprint": fingerprint, **result.to_dict()})
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    best = result.best_epoch
    run.log(f"finetune: {len(result.history)} epochs, best epoch {best} (val accuracy "
            f"{result.best_val_accuracy:.4f}), exported {result.model_path}")
    return result


def _backbone(settings: FinetuneConfig) -> Backbone:
    try:
        return export.build_backbone(settings.model, pretrained=settings.pretrained,
                                     weights=settings.weights or None)
    except ImportError as exc:
        raise TvcleanError(f"fine-tuning {settings.model} needs the torch extra ({exc.name} is "
                           f"missing): {export.TORCH_EXTRA}") from None


def _export(model: Backbone, folder: Path, dataset: Dataset, settings: FinetuneConfig, prep: Preprocess,
            state: dict) -> FinetuneResult:
    """Write RUN/finetune/model.onnx (+ .json) from the best epoch and check it against torch."""
    import torch

    path = export.export_onnx(model, folder / MODEL_FILE, prep.size)
    diff = export.onnx_agreement(model, path, prep.size)
    known = KNOWN_MODELS[settings.model]
    _, best = replay_early_stopping([h["val_accuracy"] for h in state["history"]],
                                    settings.min_delta, settings.patience)
    if best is None:
        raise TvcleanError("fine-tuning finished without a single validated epoch")
    meta = write_metadata(
        path, f"{settings.model}-finetuned", prep, known.dim,
        source=f"{settings.model} fine-tuned by tvclean finetune on {dataset.train.source}",
        licence=known.licence if settings.pretrained else "untrained start (random weights)",
        logits=len(dataset.classes), classes=dataset.classes, base_model=settings.model,
        pretrained=settings.pretrained, best_epoch=best,
        val_accuracy=state["history"][best - 1]["val_accuracy"], max_abs_diff=diff,
        exported_with={"torch": torch.__version__.split("+")[0], "opset": export.OPSET})
    return FinetuneResult(
        run=folder.parent, model_path=path.resolve(), sha256=meta["sha256"], trained=True,
        base_model=settings.model, input_size=prep.size, classes=dataset.classes,
        history=state["history"], best_epoch=best, stopped_early=state["stopped"],
        max_abs_diff=diff, failed=state["failed"])


def _fresh_state(fingerprint: str) -> dict:
    """The resumable position of a training run (saved in checkpoint.pt beside the weights)."""
    return {"fingerprint": fingerprint, "epoch": 0, "batch": 0, "loss": 0.0, "correct": 0,
            "seen": 0, "elapsed": 0.0, "history": [], "failed": {}, "stopped": False}


class _Training:
    """The epoch loop: seeded shuffles and crops, prefetched decoding, checkpoints."""

    def __init__(self, trainer: Trainer, dataset: Dataset, prep: Preprocess, config: Config,
                 folder: Path, progress: bool | None) -> None:
        from ..nets import training as finetune_torch

        self.ft = finetune_torch
        self.trainer = trainer
        self.dataset = dataset
        self.prep = prep
        self.settings = config.finetune
        self.max_pixels = config.extract.max_pixels
        self.folder = folder
        self.progress = progress
        self.state: dict = {}

    def resume(self, fingerprint: str) -> None:
        """Continue from checkpoint.pt if it belongs to this run, else start afresh."""
        path = self.folder / "checkpoint.pt"
        self.state = _fresh_state(fingerprint)
        if path.exists():
            saved = self.ft.load_state(path)
            if saved.get("fingerprint") == fingerprint:
                self.trainer.load(saved)
                self.state = {k: v for k, v in saved.items() if k not in ("model", "optimizer")}
                return
        for stale in ("checkpoint.pt", "best.pt"):
            (self.folder / stale).unlink(missing_ok=True)

    def run(self) -> None:
        while self.state["epoch"] < self.settings.epochs and not self.state["stopped"]:
            self._train_epoch(self.state["epoch"])
            self._end_epoch()

    def _train_epoch(self, epoch: int) -> None:
        split, size, seed = self.dataset.train, self.settings.batch_size, self.settings.seed
        order = np.random.default_rng([seed, epoch]).permutation(len(split))
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        state, mark, saved = self.state, time.perf_counter(), time.perf_counter()
        label = f"finetune epoch {epoch + 1}/{self.settings.epochs}"
        with Progress(len(order), label, enabled=self.progress) as bar:
            bar.update(min(state["batch"] * size, len(order)))
            for rows, decoded in self._decoded(batches[state["batch"]:], self._train_loader(epoch)):
                images, labels = self._usable(split, rows, decoded)
                if len(labels):
                    loss, correct = self.trainer.step(
                        images, labels, self.ft.batch_seed(seed, epoch, state["batch"]))
                    state["loss"] += loss
                    state["correct"] += correct
                    state["seen"] += len(labels)
                state["batch"] += 1
                bar.update(len(rows))
                now = time.perf_counter()
                state["elapsed"] += now - mark
                mark = now
                if now - saved >= CHECKPOINT_SECONDS and state["batch"] < len(batches):
                    self._checkpoint()
                    saved = time.perf_counter()

    def _end_epoch(self) -> None:
        state = self.state
        if state["seen"] == 0:
            raise TvcleanError(f"no training image could be decoded ({len(state['failed'])} "
                               f"failed); see {self.folder.parent / 'log.txt'}")
        started = time.perf_counter()
        val_loss, val_correct, val_seen = self._validate()
        state["history"].append({
            "epoch": state["epoch"] + 1, "train_loss": state["loss"] / state["seen"],
            "train_accuracy": state["correct"] / state["seen"], "val_loss": val_loss / val_seen,
            "val_accuracy": val_correct / val_seen, "images": state["seen"],
            "seconds": state["elapsed"] + time.perf_counter() - started})
        stop, best = replay_early_stopping([h["val_accuracy"] for h in state["history"]],
                                           self.settings.min_delta, self.settings.patience)
        if best == state["epoch"] + 1:
            self.ft.save_state(self.folder / "best.pt",
                               {"model": self.trainer.model.state_dict(), "epoch": best,
                                "val_accuracy": state["history"][-1]["val_accuracy"]})
        state.update(epoch=state["epoch"] + 1, batch=0, loss=0.0, correct=0, seen=0,
                     elapsed=0.0, stopped=stop)
        self._checkpoint()

    def _validate(self) -> tuple[float, int, int]:
        """(summed loss, correct, images scored) over the validation split."""
        split, size = self.dataset.val, self.settings.batch_size
        batches = [np.arange(i, min(i + size, len(split))) for i in range(0, len(split), size)]
        loss, correct, seen = 0.0, 0, 0
        load = self._plain_loader(split)
        with Progress(len(split), "finetune validation", enabled=self.progress) as bar:
            for rows, decoded in self._decoded(batches, load):
                images, labels = self._usable(split, rows, decoded)
                if len(labels):
                    batch_loss, batch_correct = self.trainer.score(images, labels)
                    loss, correct = loss + batch_loss, correct + batch_correct
                    seen += len(labels)
                bar.update(len(rows))
        if seen == 0:
            raise TvcleanError(f"no validation image could be decoded ({split.source})")
        return loss, correct, seen

    def _train_loader(self, epoch: int) -> Callable[[int], np.ndarray | str]:
        split, prep, limit = self.dataset.train, self.prep, self.max_pixels
        if not self.settings.augment:
            return self._plain_loader(split)
        seed = self.settings.seed
        return lambda row: load_augmented(split.paths[row], prep,
                                          np.random.default_rng([seed, epoch, row]), limit)

    def _plain_loader(self, split: SplitFiles) -> Callable[[int], np.ndarray | str]:
        prep, limit = self.prep, self.max_pixels
        return lambda row: load_image(split.paths[row], prep, limit)

    def _decoded(self, batches: list[np.ndarray], load: Callable[[int], np.ndarray | str]
                 ) -> Iterator[tuple[np.ndarray, list]]:
        """(rows, decoded images or errors) per batch, decoding PREFETCH_BATCHES ahead."""
        with ThreadPoolExecutor(available_cores(), thread_name_prefix="tvclean-decode") as pool:
            def submit(rows: np.ndarray) -> tuple[np.ndarray, list[Future[np.ndarray | str]]]:
                return rows, [pool.submit(load, int(row)) for row in rows]

            pending = deque(submit(rows) for rows in islice(batches, PREFETCH_BATCHES + 1))
            following = iter(batches[PREFETCH_BATCHES + 1:])
            try:
                while pending:
                    rows, futures = pending.popleft()
                    upcoming = next(following, None)
                    if upcoming is not None:
                        pending.append(submit(upcoming))
                    yield rows, [future.result() for future in futures]
            finally:
                for _, futures in pending:
                    for future in futures:
                        future.cancel()

    def _usable(self, split: SplitFiles, rows: np.ndarray, decoded: list
                ) -> tuple[np.ndarray, np.ndarray]:
        """Stack the decoded images of a batch; record the ones that failed."""
        good = [i for i, image in enumerate(decoded) if not isinstance(image, str)]
        for i, image in enumerate(decoded):
            if isinstance(image, str):
                self.state["failed"].setdefault(split.paths[rows[i]], image)
        if not good:
            return np.zeros((0,), np.float32), np.zeros(0, np.int64)
        return np.stack([decoded[i] for i in good]), split.labels[rows[good]].astype(np.int64)

    def _checkpoint(self) -> None:
        self.ft.save_state(self.folder / "checkpoint.pt", {**self.trainer.state(), **self.state})
