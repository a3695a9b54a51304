"""`extract` end to end on real images: artifacts, bad files, predictions, resume after kill -9, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tomllib
from click.testing import CliRunner
from imagefiles import write_bad_files, write_digit_tree, write_photo

import tvcore.io.inference as inference_module
from tvclean.main import cli
from tvcore.config import Config, ExtractConfig
from tvcore.errors import TvcleanError
from tvcore.io.images import load_image
from tvcore.io.modelzoo import embedded_dir, resolve_model
from tvcore.rundir import load_features
from tvcore.stages.extract import extract

EMBEDDED = embedded_dir() / "efficientnet-lite0.onnx"
DAISY, PALACE = 985, 698
FAST = Config(extract=ExtractConfig(batch_size=4, threads=1, decode_workers=2))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Digits in class folders, a nested photo, and one file of every bad kind in digit2/bad/."""
    root = tmp_path_factory.mktemp("data")
    write_digit_tree(root / "train", per_class=5)
    write_digit_tree(root / "val", per_class=3, offset=20)
    write_photo(root / "train" / "digit1" / "photos" / "flower.jpg", quality=90)
    bad = write_bad_files(root / "train" / "digit2" / "bad")
    (root / "train" / "digit0" / "notes.txt").write_text("not an image")
    (root / "train" / "digit0" / ".hidden.png").write_bytes(b"")
    return root, bad


@pytest.fixture(scope="module")
def extracted(data, tmp_path_factory):
    root, _ = data
    run = tmp_path_factory.mktemp("run")
    return run, extract(root, None, run, FAST, progress=False)


def test_artifacts_follow_the_run_contract(data, extracted):
    root, bad = data
    run, summary = extracted
    features = load_features(run)
    assert features.class_names == ["digit0", "digit1", "digit2"] and features.dim == 1280
    train = features.train
    assert train.features.shape == (22, 1280) and train.features.dtype == np.float32
    assert isinstance(train.features, np.memmap)
    assert train.labels.tolist() == [0] * 5 + [1] * 6 + [2] * 11
    failed = {Path(p).name for p, ok in zip(train.paths, train.ok) if not ok}
    assert failed == set(bad)
    assert np.all(train.features[~train.ok] == 0)
    assert np.all(np.abs(train.features[train.ok]).sum(axis=1) > 0)
    assert features.val.features.shape == (9, 1280) and features.val.ok.all()
    rows = (run / "features" / "train_index.csv").read_text().splitlines()
    assert rows[0] == "path,abs_path,label,label_index,status,error"
    truncated = next(r for r in rows if "truncated.jpg" in r)
    absolute = root / "train" / "digit2" / "bad" / "truncated.jpg"
    assert truncated.startswith(f"digit2/bad/truncated.jpg,{absolute},digit2,2,error,")
    meta = json.loads((run / "features" / "meta.json").read_text())
    assert meta["model"]["name"] == "efficientnet-lite0"
    assert meta["model"]["sha256"] == resolve_model("efficientnet-lite0").sha256
    assert meta["train_root"] == str(root / "train") and meta["val_root"] == str(root / "val")
    assert meta["splits"]["train"] == {"images": 22, "ok": 16, "failed": 6,
                                       "skipped": {"hidden": 1, "not an image": 1}}
    assert summary.splits["train"].failed == 6 and not summary.up_to_date
    assert {Path(p).name: e for p, e in summary.splits["train"].errors}["empty.png"] == "empty file (0 bytes)"
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["extract"]["model"] == "efficientnet-lite0" and saved["extract"]["batch_size"] == 4
    assert saved["extract"]["precision"] == "fp32" and saved["extract"]["device"] == "auto"
    assert "extract: train: 16 images, 6 failed, 2 files skipped" in (run / "log.txt").read_text()
    assert not list((run / "features").glob("*.partial")) and not list((run / "features").glob("*.progress.json"))


def test_features_equal_one_image_at_a_time_inference(extracted):
    run, _ = extracted
    features = load_features(run)
    spec = resolve_model("efficientnet-lite0")
    session = ort.InferenceSession(str(EMBEDDED), providers=["CPUExecutionProvider"])
    for row in [0, 7, 10, 11]:  # digits of each class and the nested photo (row 10)
        image = load_image(features.train.paths[row], spec.preprocess)
        single = session.run(["features"], {"images": image[None]})[0][0]
        np.testing.assert_allclose(features.train.features[row], single, rtol=1e-4, atol=1e-4)


def test_every_row_equals_its_own_inference_across_reused_batch_buffers(extracted):
    """Batches of 4 decode in place into a few reused buffers; failed images in a batch
    leave zero rows and do not shift the others."""
    run, summary = extracted
    features = load_features(run)
    spec = resolve_model("efficientnet-lite0")
    session = ort.InferenceSession(str(EMBEDDED), providers=["CPUExecutionProvider"])
    failed = {path for path, _ in summary.splits["train"].errors}
    assert len(failed) >= 5 and len(features.train.paths) > 4 * (1 + inference_module.PREFETCH_BATCHES)
    for row, path in enumerate(features.train.paths):
        if path in failed:
            assert not features.train.features[row].any()
            continue
        single = session.run(["features"], {"images": load_image(path, spec.preprocess)[None]})[0][0]
        np.testing.assert_allclose(features.train.features[row], single, rtol=1e-4, atol=1e-4)


# The right preprocessing gives p(daisy) ~ 0.31 and p(palace) ~ 0.40. The floors
# catch subtler mistakes than a top-5 check does: with BGR input p(daisy) is
# 0.20, with ImageNet mean/std 0.10 and 0.30, without the centre crop 0.18.
@pytest.mark.parametrize("name, imagenet_class, floor", [("flower.jpg", DAISY, 0.25),
                                                         ("china.jpg", PALACE, 0.35)])
def test_embedded_model_recognises_the_sample_photos(tmp_path, name, imagenet_class, floor):
    path = write_photo(tmp_path / name, name, quality=90)
    image = load_image(path, resolve_model("efficientnet-lite0").preprocess)
    session = ort.InferenceSession(str(EMBEDDED), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": image[None]})[0][0].astype(np.float64)
    assert imagenet_class in np.argsort(-logits)[:5]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.argmax(probabilities) == imagenet_class and probabilities[imagenet_class] > floor


def test_rerun_skips_finished_work(data, extracted):
    root, _ = data
    run, first = extracted
    stamp = os.stat(run / "features" / "train.npy").st_mtime_ns
    again = extract(root, None, run, FAST, progress=False)
    assert again.up_to_date
    assert again.splits["train"].counts() == first.splits["train"].counts()
    assert again.splits["train"].errors == first.splits["train"].errors
    assert os.stat(run / "features" / "train.npy").st_mtime_ns == stamp


def test_other_model_into_the_same_run_is_refused(data, extracted, tmp_path):
    root, _ = data
    run, _ = extracted
    shutil.copy(EMBEDDED, tmp_path / "other.onnx")
    (tmp_path / "other.json").write_text(json.dumps({"normalisation": "imagenet"}))
    with pytest.raises(TvcleanError, match=r"holds features of another data set or model "
                                           r"\(efficientnet-lite0\); use a new run directory"):
        extract(root, None, run, Config(extract=ExtractConfig(model=str(tmp_path / "other.onnx"))), progress=False)


KILLABLE = """
import sys
import tvcore.stages.extract as f
from tvcore.config import Config, ExtractConfig
f.CHECKPOINT_SECONDS = 0.0
f.extract(sys.argv[1], None, sys.argv[2], Config(extract=ExtractConfig(batch_size=4, threads=1)), progress=False)
"""


def _rows_done(progress):
    """Rows the progress record says are stored (it lists [first, stop) ranges)."""
    return sum(stop - first for first, stop in json.loads(progress.read_text())["done"])


def test_resume_after_kill_9(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_digit_tree(root / "train", per_class=24)
    write_digit_tree(root / "val", per_class=4, offset=30)
    run = tmp_path / "run"
    progress = run / "features" / "train.progress.json"
    child = subprocess.Popen([sys.executable, "-c", KILLABLE, str(root), str(run)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if progress.exists() and _rows_done(progress) >= 8:
            break
        time.sleep(0.005)
    assert child.poll() is None, "the extraction ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = _rows_done(progress)
    assert 8 <= done < 72 and not (run / "features" / "meta.json").exists()

    decoded = []
    monkeypatch.setattr(inference_module, "load_image",
                        lambda path, *args: decoded.append(path) or load_image(path, *args))
    resumed = extract(root, None, run, FAST, progress=False)
    assert len(decoded) == (72 - done) + 12  # only the rest of train, then val
    fresh = extract(root, None, tmp_path / "fresh", FAST, progress=False)
    a, b = load_features(run), load_features(tmp_path / "fresh")
    np.testing.assert_allclose(a.train.features, b.train.features, atol=1e-5)
    np.testing.assert_allclose(a.val.features, b.val.features, atol=1e-5)
    assert a.train.paths == b.train.paths and resumed.splits["train"].ok == 72 == fresh.splits["train"].ok


def test_cli_extract_output_and_errors(data, tmp_path):
    root, _ = data
    runner = CliRunner()
    result = runner.invoke(cli, ["extract", str(root / "train"), str(root / "val"), "-o",
                                 str(tmp_path / "run"), "--batch-size", "8", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "extracted 1280-d features with efficientnet-lite0 (3 classes)" in result.output
    assert "train: 16 images, 6 failed, skipped files: 1 hidden, 1 not an image" in result.output
    assert "val: 9 images, 0 failed" in result.output
    assert "failed (train): " in result.output and "... 1 more in" in result.output
    assert "batch_size = 8" in (tmp_path / "run" / "config.toml").read_text()
    result = runner.invoke(cli, ["extract", str(root / "train"), str(root / "val"), "-o",
                                 str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["up_to_date"] is True
    assert "batch_size = 8" in (tmp_path / "run" / "config.toml").read_text()  # the run's own settings kept
    result = runner.invoke(cli, ["extract", str(root / "train"), "-o", str(tmp_path / "r2")])
    assert result.exit_code == 1 and "Error: no validation data: give VAL_DIR" in result.output
    result = runner.invoke(cli, ["extract", str(root), "-o", str(tmp_path / "r3"),
                                 "--batch-size", "-1"])
    assert result.exit_code == 1
    assert "invalid extract.batch_size (--batch-size): must be >= 0, got -1" in result.output


def test_cli_manifest_and_user_model(data, tmp_path):
    root, _ = data
    lines = ["path,label,split"]
    for split, per in (("train", 2), ("val", 1)):
        for name in ("digit0", "digit1"):
            lines += [f"{root}/{split}/{name}/{i:03d}.png,{name},{split}" for i in range(per)]
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    shutil.copy(EMBEDDED, tmp_path / "mine.onnx")
    (tmp_path / "mine.json").write_text(json.dumps({"normalisation": "tflite", "output": "logits"}))
    result = CliRunner().invoke(cli, ["extract", str(tmp_path / "all.csv"), "-o", str(tmp_path / "run"),
                                      "--model", str(tmp_path / "mine.onnx"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "extracted 1000-d features with mine (2 classes)" in result.output
    again = CliRunner().invoke(cli, ["extract", str(tmp_path / "all.csv"), "-o", str(tmp_path / "run")])
    assert "up to date" in again.output  # without --model the run's model is kept
    features = load_features(tmp_path / "run")
    assert features.train.features.shape == (4, 1000) and features.val.features.shape == (2, 1000)
    assert features.meta["model"]["output"] == "logits"


def test_models_that_break_the_contract_are_clear_errors(data, tmp_path):
    onnx = pytest.importorskip("onnx")
    root, _ = data
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["images"], ["maps"])], "maps",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 3, 224, 224])],
        [onnx.helper.make_tensor_value_info("maps", onnx.TensorProto.FLOAT, ["N", 3, 224, 224])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "maps.onnx")
    with pytest.raises(TvcleanError, match=r"maps.onnx: output 'maps' has shape \[1, 3, 224, 224\] "
                                           r"for one image; expected \(N, D\) features"):
        extract(root, None, tmp_path / "r1", Config(extract=ExtractConfig(model=str(tmp_path / "maps.onnx"))))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(TvcleanError, match=r"cannot load model .*junk.onnx"):
        extract(root, None, tmp_path / "r2", Config(extract=ExtractConfig(model=str(tmp_path / "junk.onnx"))))


def test_extractor_features_split_over_streams_keep_order(extracted):
    run, _ = extracted
    features = load_features(run)
    spec = resolve_model("efficientnet-lite0")
    images = np.stack([load_image(p, spec.preprocess) for p in features.val.paths[:5]])
    with inference_module.FeatureExtractor(spec, threads=2) as extractor:
        assert extractor.streams == 2
        together = extractor.features(images)
        assert extractor.features(images[:0]).shape == (0, 1280)
    np.testing.assert_allclose(together, features.val.features[:5], rtol=1e-4, atol=1e-4)


def test_an_image_changed_since_extraction_is_named_not_passed_as_up_to_date(tmp_path):
    """The features of an image overwritten in place are of the old picture: a second
    extract (or clean) on the run says so instead of reusing them."""
    root = tmp_path / "data"
    write_digit_tree(root / "train", per_class=4)
    write_digit_tree(root / "val", per_class=2, offset=20)
    run = tmp_path / "run"
    extract(root, None, run, FAST, progress=False)
    assert extract(root, None, run, FAST, progress=False).up_to_date
    changed = sorted((root / "train" / "digit1").glob("*.png"))[0]
    other = sorted((root / "train" / "digit2").glob("*.png"))[0]
    before = changed.read_bytes()
    changed.write_bytes(other.read_bytes())  # another picture under the same name
    with pytest.raises(TvcleanError, match=f"{changed}.* changed since its features were "
                                           f"extracted"):
        extract(root, None, run, FAST, progress=False)
    result = CliRunner().invoke(cli, ["clean", str(root), "-o", str(run), "--episodes", "2"])
    assert result.exit_code == 1 and "changed since its features" in result.output
    assert "Traceback" not in result.output and changed.read_bytes() == other.read_bytes()
    changed.write_bytes(before)
    os.utime(changed, ns=(0, 0))
    for record in (run / "features").glob("*_files.npy"):  # a run from before the record
        record.unlink()
    assert extract(root, None, run, FAST, progress=False).up_to_date
