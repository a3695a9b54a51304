"""Fine-tuning (torch extra): early stopping, training on real digit images, export, resume,
the baseline option, the CLI, and what happens without torch."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest
import tomllib
from click.testing import CliRunner
from imagefiles import write_bad_files, write_digit_tree, write_photo
from scipy.special import log_softmax

from tvclean.clean_cmd import run_config
from tvclean.main import cli
from tvcore.config import Config, FinetuneConfig
from tvcore.errors import TvcleanError
from tvcore.io.dataset import discover
from tvcore.io.images import IMAGENET_MEAN, TFLITE_MEAN, Preprocess, load_image
from tvcore.io.modelzoo import resolve_model
from tvcore.nets.augment import load_augmented, random_box
from tvcore.stages import finetune as finetune_module
from tvcore.stages.finetune import (
    EarlyStopping,
    finetune,
    replay_early_stopping,
    training_preprocess,
)

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="needs the torch extra")
TORCH_HINT = "this needs the torch extra: pip install 'tvclean[torch]'"


# --- early stopping (Keras' semantics, as the original) -----------------------------------

@pytest.mark.parametrize("accuracies, patience, stop_at, best", [
    ([0.5, 0.6, 0.603], 1, 3, 3),  # the best epoch, but not better by more than min_delta
    ([0.5, 0.49], 1, 2, 1),
    ([0.5, 0.5, 0.52, 0.52, 0.52], 2, 5, 3),  # patience 2; first of equal accuracies is best
    ([0.5, 0.504, 0.508, 0.509, 0.6], 2, None, 5),  # 0.508 improves on 0.5 (the last improving)
    ([0.7, 0.8, 0.9], 1, None, 3),
])
def test_early_stopping_on_validation_accuracy(accuracies, patience, stop_at, best):
    stopping = EarlyStopping(min_delta=0.005, patience=patience)
    decisions = [stopping.update(a) for a in accuracies]
    assert decisions == [epoch == stop_at for epoch in range(1, len(accuracies) + 1)]
    assert stopping.best_epoch == best
    assert replay_early_stopping(accuracies, 0.005, patience) == (stop_at is not None, best)


@pytest.mark.parametrize("options, message", [
    ({"input_size": 100}, r"finetune\.input_size \(--input-size\): must be 0 .* of 32, got 100"),
    ({"momentum": 0.0}, r"finetune\.nesterov \(--nesterov\): needs momentum > 0"),
    ({"momentum": 1.0}, r"finetune\.momentum \(--momentum\): must be in \[0, 1\), got 1\.0"),
    ({"model": "vgg16"}, r"finetune\.model \(--model\): must be one of efficientnet-lite0, "
                         r"resnet50"),
    ({"lr": 0.0}, r"finetune\.lr \(--lr\): must be a finite number > 0"),
    ({"patience": 0}, r"finetune\.patience \(--patience\): must be > 0"),
])
def test_bad_settings_are_named(options, message):
    with pytest.raises(TvcleanError, match=message):
        Config.from_dict({"finetune": options})


def test_training_preprocessing_is_the_models_at_the_chosen_size():
    assert training_preprocess(FinetuneConfig()) == Preprocess(224, 256, TFLITE_MEAN, (128.0,) * 3)
    small = training_preprocess(FinetuneConfig(input_size=64))
    assert (small.size, small.resize, small.mean) == (64, 73, TFLITE_MEAN)  # 224/256 crop kept
    resnet = training_preprocess(FinetuneConfig(model="resnet50", input_size=96))
    assert (resnet.size, resnet.resize, resnet.mean) == (96, 99, IMAGENET_MEAN)


def test_clean_finetune_with_model_fine_tunes_that_model():
    config = run_config(None, {"finetune__enabled": True, "extract__model": "resnet50",
                               "estimate__threads": 1}, None)
    assert config.finetune.model == "resnet50" and config.finetune.threads == 1
    assert config.extract.model == "efficientnet-lite0"  # extraction uses the fine-tuned file
    plain = run_config(None, {"extract__model": "resnet50"}, None)
    assert plain.extract.model == "resnet50" and not plain.finetune.enabled


# --- training-time decoding ----------------------------------------------------------------

def test_random_crops_are_inside_mild_and_seeded():
    boxes = [random_box(np.random.default_rng(seed), 32, 32) for seed in range(400)]
    left, top, right, bottom = np.array(boxes).T
    assert np.all((left >= 0) & (top >= 0) & (right <= 32) & (bottom <= 32))
    area, ratio = (right - left) * (bottom - top) / 32 ** 2, (right - left) / (bottom - top)
    assert area.min() >= 0.5 - 1e-9 and area.max() <= 1 + 1e-9
    assert ratio.min() >= 3 / 4 - 1e-9 and ratio.max() <= 4 / 3 + 1e-9
    assert area.max() - area.min() > 0.4 and ratio.max() - ratio.min() > 0.4  # really random
    same_seed = [random_box(np.random.default_rng(7), 640, 427) for _ in range(2)]
    assert same_seed[0] == same_seed[1]


def test_augmented_images_are_normalised_like_extraction_and_seeded(tmp_path):
    path = write_photo(tmp_path / "flower.jpg", quality=90)
    prep = Preprocess(64, 73, TFLITE_MEAN, (128.0,) * 3)
    first = load_augmented(path, prep, np.random.default_rng(1))
    assert first.shape == (3, 64, 64) and first.dtype == np.float32
    np.testing.assert_array_equal(first, load_augmented(path, prep, np.random.default_rng(1)))
    others = [load_augmented(path, prep, np.random.default_rng(seed)) for seed in range(2, 6)]
    assert all(np.abs(other - first).mean() > 0.01 for other in others)
    # Same colours as the centre crop of `extract`: per-channel means agree roughly.
    centre = load_image(path, prep)
    np.testing.assert_allclose(first.mean(axis=(1, 2)), centre.mean(axis=(1, 2)), atol=0.25)
    for name, error in write_bad_files(tmp_path / "bad").items():
        assert error in load_augmented(tmp_path / "bad" / name, prep, np.random.default_rng(0),
                                       max_pixels=100_000_000)


# --- without the torch extra --------------------------------------------------------------

def test_without_torch_the_commands_say_how_to_install_it(tmp_path, monkeypatch):
    write_digit_tree(tmp_path / "train", per_class=2)
    write_digit_tree(tmp_path / "val", per_class=1, offset=5)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if not installed
    data = [str(tmp_path / "train"), str(tmp_path / "val"), "-o", str(tmp_path / "run")]
    for args in (["finetune", *data], ["clean", *data, "--finetune"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert TORCH_HINT in result.output
        assert isinstance(result.exception, SystemExit)  # a click error, not a traceback
    assert not (tmp_path / "run" / "features").exists()


@needs_torch
def test_without_the_efficientnet_package_finetune_says_how_to_install_it(tmp_path, monkeypatch):
    write_digit_tree(tmp_path / "train", per_class=2)
    write_digit_tree(tmp_path / "val", per_class=1, offset=5)
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    config = Config(finetune=FinetuneConfig(pretrained=False))
    with pytest.raises(TvcleanError, match=r"needs the torch extra \(efficientnet_lite_pytorch "
                                           r"is missing\): pip install 'tvclean\[torch\]'"):
        finetune(tmp_path / "train", tmp_path / "val", tmp_path / "run", config)


# --- training on real images ---------------------------------------------------------------

CLASSES = ("digit0", "digit1", "digit7")


def small_config(**changes) -> Config:
    """EfficientNet-Lite0 at 64px, 2 epochs of 6 batches: seconds on one core."""
    settings = dict(input_size=64, epochs=2, batch_size=16, lr=0.01, threads=1)
    settings.update(changes)
    return Config(finetune=FinetuneConfig(**settings))


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digit_tree(root / "train", classes=(0, 1, 7), per_class=32)
    write_digit_tree(root / "val", classes=(0, 1, 7), per_class=10, offset=32)
    return root


@pytest.fixture(scope="module")
def tuned(digits_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("tuned") / "run"
    return finetune(digits_data / "train", digits_data / "val", run, small_config(),
                    progress=False)


@needs_torch
def test_finetune_learns_the_labels_and_exports_the_best_epoch(tuned, digits_data):
    import onnxruntime as ort

    assert [h["epoch"] for h in tuned.history] == [1, 2]
    assert [h["images"] for h in tuned.history] == [96, 96]
    # Two short epochs fit the (augmented) training labels visibly better; validation
    # accuracy on 30 images after 12 steps is too noisy to assert on.
    assert tuned.history[1]["train_loss"] < 0.8 * tuned.history[0]["train_loss"]
    assert tuned.history[1]["train_accuracy"] >= 0.6  # three classes: chance is 1/3
    accuracies = [h["val_accuracy"] for h in tuned.history]
    assert tuned.best_epoch == 1 + int(np.argmax(accuracies))
    assert tuned.max_abs_diff["features"] <= 1e-4 and tuned.max_abs_diff["logits"] <= 1e-4
    spec = resolve_model(str(tuned.model_path))
    assert spec.preprocess == training_preprocess(small_config().finetune)
    assert (spec.dim, spec.sha256) == (1280, tuned.sha256)
    assert spec.name == "efficientnet-lite0-finetuned"
    meta = json.loads(tuned.model_path.with_suffix(".json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["logits"] == 3
    assert meta["best_epoch"] == tuned.best_epoch
    # The exported logits, on images decoded as `extract` does, reproduce the best epoch's
    # recorded validation loss: the file holds that epoch, with that preprocessing.
    val = discover(digits_data / "train", digits_data / "val").val
    images = np.stack([load_image(path, spec.preprocess) for path in val.paths])
    logits = ort.InferenceSession(str(spec.path)).run(["logits"], {"images": images})[0]
    log_probabilities = log_softmax(logits.astype(np.float64), axis=1)
    loss = -np.mean(log_probabilities[np.arange(len(val.labels)), val.labels])
    assert loss == pytest.approx(tuned.history[tuned.best_epoch - 1]["val_loss"], rel=1e-4)
    assert not (tuned.run / "finetune" / "checkpoint.pt").exists()  # only needed to resume


@needs_torch
def test_best_checkpoint_is_a_plain_state_dict_of_the_exported_model(tuned):
    import onnxruntime as ort
    import torch

    from tvcore.nets.export import build_backbone

    state = torch.load(tuned.run / "finetune" / "best.pt", weights_only=True)
    assert state["epoch"] == tuned.best_epoch
    net = build_backbone("efficientnet-lite0", pretrained=False)
    net.set_classifier(torch.nn.Linear(1280, 3))
    net.load_state_dict(state["model"])
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        expected = net.eval().forward_features(torch.from_numpy(images)).numpy()
    got = ort.InferenceSession(str(tuned.model_path)).run(["features"], {"images": images})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@needs_torch
def test_extract_uses_the_fine_tuned_model_and_a_rerun_is_up_to_date(tuned, digits_data):
    recorded = tomllib.loads((tuned.run / "config.toml").read_text())
    assert recorded["extract"]["model"] == str(tuned.model_path)
    assert recorded["finetune"]["input_size"] == 64
    data = [str(digits_data / "train"), str(digits_data / "val"), "-o", str(tuned.run)]
    result = CliRunner().invoke(cli, ["extract", *data])
    assert result.exit_code == 0, result.output
    assert "extracted 1280-d features with efficientnet-lite0-finetuned" in result.output
    features = json.loads((tuned.run / "features" / "meta.json").read_text())
    assert features["model"]["sha256"] == tuned.sha256
    again = CliRunner().invoke(cli, ["finetune", *data, "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["up_to_date"] and summary["sha256"] == tuned.sha256
    assert summary["history"] == tuned.history


class StepCounter:
    """Counts training steps (batch seeds in `steps`); step number `interrupt_at` raises
    KeyboardInterrupt, as Ctrl-C would."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        from tvcore.nets import training as finetune_torch

        self.steps: list[int] = []
        self.interrupt_at = interrupt_at
        original = finetune_torch.Trainer.step

        def step(trainer, *args):
            self.steps.append(args[-1])
            if len(self.steps) == self.interrupt_at:
                raise KeyboardInterrupt
            return original(trainer, *args)

        monkeypatch.setattr(finetune_torch.Trainer, "step", step)

    def restart(self) -> None:
        self.steps, self.interrupt_at = [], None


@needs_torch
@pytest.mark.parametrize("checkpoint_seconds, interrupt_at, resumed_steps", [
    (1e9, 7, 6),  # first step of epoch 2: resumes from the end of epoch 1
    (0.0, 10, 3),  # epoch 2, checkpointed after every batch: resumes after its 3rd batch
])
def test_an_interrupted_run_resumes_to_the_same_model(tuned, digits_data, tmp_path, monkeypatch,
                                                      checkpoint_seconds, interrupt_at,
                                                      resumed_steps):
    import torch

    monkeypatch.setattr(finetune_module, "CHECKPOINT_SECONDS", checkpoint_seconds)
    counter = StepCounter(monkeypatch, interrupt_at)
    run, data = tmp_path / "run", (digits_data / "train", digits_data / "val")
    with pytest.raises(KeyboardInterrupt):
        finetune(*data, run, small_config(), progress=False)
    saved = torch.load(run / "finetune" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["batch"]) == (1, 6 - resumed_steps)  # 6 batches per epoch
    counter.restart()
    resumed = finetune(*data, run, small_config(), progress=False)
    assert len(counter.steps) == resumed_steps
    without_time = [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert without_time == [{k: v for k, v in h.items() if k != "seconds"} for h in tuned.history]
    best = torch.load(run / "finetune" / "best.pt", weights_only=True)["model"]
    reference = torch.load(tuned.run / "finetune" / "best.pt", weights_only=True)["model"]
    assert best.keys() == reference.keys()
    assert all(torch.equal(best[k], reference[k]) for k in best)


@needs_torch
def test_a_changed_setting_starts_over_instead_of_resuming(digits_data, tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_module, "CHECKPOINT_SECONDS", 0.0)
    counter = StepCounter(monkeypatch, interrupt_at=3)
    data = (digits_data / "train", digits_data / "val")
    with pytest.raises(KeyboardInterrupt):
        finetune(*data, tmp_path / "run", small_config(input_size=32), progress=False)
    counter.restart()
    result = finetune(*data, tmp_path / "run", small_config(input_size=32, lr=0.02, epochs=1),
                      progress=False)
    assert len(counter.steps) == 6 and len(result.history) == 1  # the whole epoch, not the 4 left


# --- the baseline option -------------------------------------------------------------------

@needs_torch
def test_baseline_is_used_instead_of_training(tuned, digits_data, tmp_path, monkeypatch):
    counter = StepCounter(monkeypatch)
    data = [str(digits_data / "train"), str(digits_data / "val")]
    result = CliRunner().invoke(cli, ["finetune", *data, "-o", str(tmp_path / "run"),
                                      "--baseline", str(tuned.model_path)])
    assert result.exit_code == 0, result.output
    assert f"using the baseline {tuned.model_path} (sha256 {tuned.sha256[:12]})" in result.output
    assert counter.steps == []  # nothing was trained
    recorded = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert recorded["extract"]["model"] == str(tuned.model_path)
    cleaned = CliRunner().invoke(cli, ["clean", *data, "-o", str(tmp_path / "clean"),
                                       "--baseline", str(tuned.model_path), "--no-report",
                                       "--episodes", "4", "--output", "none", "--threads", "1"])
    assert cleaned.exit_code == 0, cleaned.output
    features = json.loads((tmp_path / "clean" / "features" / "meta.json").read_text())
    assert features["model"]["sha256"] == tuned.sha256 and features["dim"] == 1280
    assert (tmp_path / "clean" / "training_values.csv").exists()


@needs_torch
def test_a_missing_or_altered_baseline_is_refused(tuned, digits_data, tmp_path):
    data = (digits_data / "train", digits_data / "val")
    config = Config(finetune=FinetuneConfig(baseline=str(tmp_path / "nothing.onnx")))
    with pytest.raises(TvcleanError, match=r"model file not found: .*nothing\.onnx"):
        finetune(*data, tmp_path / "run", config)
    copy = tmp_path / "copy.onnx"
    shutil.copy(tuned.model_path, copy)
    shutil.copy(tuned.model_path.with_suffix(".json"), copy.with_suffix(".json"))
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    config.finetune.baseline = str(copy)
    with pytest.raises(TvcleanError, match=r"copy\.onnx: sha256 .* does not match"):
        finetune(*data, tmp_path / "run", config)


# --- ResNet50, and the one-shot command ----------------------------------------------------

@needs_torch
def test_resnet50_fine_tunes_and_exports(tmp_path):
    write_digit_tree(tmp_path / "train", classes=(0, 1), per_class=8)
    write_digit_tree(tmp_path / "val", classes=(0, 1), per_class=2, offset=8)
    config = Config(finetune=FinetuneConfig(model="resnet50", pretrained=False, input_size=32,
                                            epochs=1, batch_size=8, threads=1))
    result = finetune(tmp_path / "train", tmp_path / "val", tmp_path / "run", config,
                      progress=False)
    assert result.max_abs_diff["features"] <= 1e-4 and result.max_abs_diff["logits"] <= 1e-4
    spec = resolve_model(str(result.model_path))
    assert (spec.dim, spec.preprocess.size, spec.preprocess.resize) == (2048, 32, 33)
    assert spec.preprocess.mean == IMAGENET_MEAN
    assert spec.licence == "untrained start (random weights)"


@needs_torch
def test_resnet50_imagenet_weights_need_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TVCLEAN_CACHE", str(tmp_path / "cache"))
    write_digit_tree(tmp_path / "train", classes=(0, 1), per_class=2)
    write_digit_tree(tmp_path / "val", classes=(0, 1), per_class=1, offset=2)
    result = CliRunner().invoke(cli, ["finetune", str(tmp_path / "train"), str(tmp_path / "val"),
                                      "-o", str(tmp_path / "run"), "--model", "resnet50"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "network access is disabled" in result.output
    assert "download.pytorch.org/models/resnet50-11ad3fa6.pth" in result.output


@needs_torch
def test_clean_finetune_runs_every_stage_and_skips_a_broken_image(tmp_path):
    write_digit_tree(tmp_path / "train", classes=(0, 1, 7), per_class=12)
    write_digit_tree(tmp_path / "val", classes=(0, 1, 7), per_class=4, offset=12)
    (tmp_path / "train" / "digit1" / "broken.png").write_bytes(b"not a png")
    settings = tmp_path / "settings.toml"
    # min_delta 1: no epoch can improve on the first, so patience 1 stops after epoch 2.
    settings.write_text("[finetune]\ninput_size = 32\nepochs = 5\nmin_delta = 1.0\n"
                        "batch_size = 16\nthreads = 1\n[estimate]\nepisodes = 4\n"
                        "[filter]\noutput = \"none\"\n[report]\nenabled = false\n")
    result = CliRunner().invoke(cli, ["clean", str(tmp_path / "train"), str(tmp_path / "val"),
                                      "-o", str(tmp_path / "run"), "--finetune",
                                      "--config", str(settings)])
    assert result.exit_code == 0, result.output
    assert ("fine-tuned efficientnet-lite0 at 32px on 3 classes: 2 epochs, stopped early"
            in result.output)
    assert "1 image could not be decoded and was skipped" in result.output
    tuned = json.loads((tmp_path / "run" / "finetune" / "meta.json").read_text())
    assert [h["images"] for h in tuned["history"]] == [36, 36]
    assert list(tuned["failed"]) == [str(tmp_path / "train" / "digit1" / "broken.png")]
    features = json.loads((tmp_path / "run" / "features" / "meta.json").read_text())
    assert features["model"]["sha256"] == tuned["sha256"]
    recorded = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert recorded["finetune"]["enabled"] is True
    assert recorded["extract"]["model"] == tuned["model_path"]
    assert len((tmp_path / "run" / "training_values.csv").read_text().splitlines()) == 1 + 37
