"""One-shot `clean`, the array API, and the embedded demo data."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from imagefiles import write_digit_tree
from runfixtures import clustered_features, make_feature_run

from tvclean.main import cli
from tvcore.config import Config, EstimateConfig, ValueNetConfig
from tvcore.errors import TvcleanError
from tvcore.labelissues import training_values
from tvcore.stages import demo
from tvcore.stages.clean import clean
from tvcore.stages.estimate import estimate
from tvcore.stages.filter import filter_run, load_training_values


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _small_config(**estimate_options) -> Config:
    config = Config(estimate=EstimateConfig(episodes=4, lr=0.002, **estimate_options),
                    valuenet=ValueNetConfig(min_examples=5, max_epochs=10))
    config.report.enabled = False
    return config


def test_array_api_equals_the_run_directory_stages(tmp_path):
    rng = np.random.default_rng(5)
    train, labels, _ = clustered_features(rng, 50, 3, 12, flip=0.2)
    val, val_labels, _ = clustered_features(rng, 10, 3, 12)
    run = make_feature_run(tmp_path / "run", train, labels, val, val_labels)
    config = _small_config(per_class=30)
    config.filter.output = "none"
    estimate(run, config, progress=False)
    staged = filter_run(run, config, progress=False)
    direct = training_values(train, labels, val, val_labels, config)
    np.testing.assert_array_equal(direct.values, staged.values)
    assert direct.scored.decisions.tolist() == staged.decisions  # the posterior rule's
    np.testing.assert_array_equal(direct.scores, staged.scores)
    assert direct.dirty.tolist() == [d in ("dirty", "outlier") for d in staged.decisions]
    assert direct.mc.rows.size == 90


def test_clean_end_to_end_on_real_images(tmp_path):
    write_digit_tree(tmp_path / "data" / "train", classes=(0, 1, 7), per_class=12)
    write_digit_tree(tmp_path / "data" / "val", classes=(0, 1, 7), per_class=4, offset=20)
    before = _tree_digest(tmp_path / "data")
    result = clean(tmp_path / "data" / "train", tmp_path / "data" / "val", tmp_path / "run",
                   _small_config(), progress=False)
    assert set(result.seconds) == {"extract", "estimate", "filter"}
    rows = load_training_values(tmp_path / "run")
    assert len(rows) == 36 and set(rows["given_label"]) == {"digit0", "digit1", "digit7"}
    placed = list((tmp_path / "run" / "clean").rglob("*.png")) + \
        list((tmp_path / "run" / "dirty").rglob("*.png"))
    assert len(placed) == 36
    config_text = (tmp_path / "run" / "config.toml").read_text()
    for section in ("[extract]", "[estimate]", "[valuenet]", "[filter]", "[report]"):
        assert section in config_text
    assert _tree_digest(tmp_path / "data") == before
    again = clean(tmp_path / "data" / "train", tmp_path / "data" / "val", tmp_path / "run",
                  _small_config(), progress=False)
    assert again.extract.up_to_date
    np.testing.assert_array_equal(again.filter.values, result.filter.values)


def test_clean_refuses_a_run_directory_inside_the_data(tmp_path):
    write_digit_tree(tmp_path / "train", per_class=3)
    write_digit_tree(tmp_path / "val", per_class=2, offset=10)
    with pytest.raises(TvcleanError, match="inside the input folder"):
        clean(tmp_path / "train", tmp_path / "val", tmp_path / "train" / "run", _small_config())


def test_cli_clean_json(tmp_path):
    write_digit_tree(tmp_path / "data" / "train", classes=(3, 8), per_class=8)
    write_digit_tree(tmp_path / "data" / "val", classes=(3, 8), per_class=3, offset=20)
    config = tmp_path / "tv.toml"
    config.write_text("[estimate]\nepisodes = 3\n[valuenet]\nmin_examples = 5\nmax_epochs = 5\n")
    result = CliRunner().invoke(cli, ["clean", str(tmp_path / "data" / "train"),
                                      str(tmp_path / "data" / "val"), "-o", str(tmp_path / "run"),
                                      "--config", str(config), "--no-report", "--threads", "1",
                                      "--output", "symlink", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert sum(summary["filter"]["counts"].values()) == 16
    assert summary["report"] is None
    assert "episodes = 3" in (tmp_path / "run" / "config.toml").read_text()
    assert "threads = 1" in (tmp_path / "run" / "config.toml").read_text()
    assert all(p.is_symlink() for p in (tmp_path / "run" / "clean").rglob("*.png"))


def test_demo_data_has_a_known_fifth_of_labels_flipped(tmp_path):
    data = demo.materialize(tmp_path / "data")
    truth = (data / "truth.csv").read_text().splitlines()
    assert truth[0] == "path,is_mislabeled,true_label" and len(truth) == 2501
    flipped = [line for line in truth[1:] if line.split(",")[1] == "1"]
    assert len(flipped) == 500
    for line in truth[1:]:
        path, is_mislabeled, true_label = line.split(",")
        folder = Path(path).parent.name
        assert (folder != true_label) == (is_mislabeled == "1")
        assert (data / path).exists()
    assert len(list((data / "val").rglob("*.png"))) == 500
    assert sorted(p.name for p in (data / "train").iterdir()) == sorted(demo.CLASS_NAMES)


def test_demo_archive_is_small_and_real():
    from importlib import resources

    from tvcore.io.demoarchive import ARCHIVE

    archive = resources.files("tvcore").joinpath("data", ARCHIVE)
    assert archive.stat().st_size <= 3 * 2**20
    data = demo.load_archive()
    assert data["train_images"].shape == (2500, 28, 28)
    assert np.bincount(data["train_labels"]).tolist() == [250] * 10
    assert data["train_images"].std() > 50  # real photos, not blank


def test_flip_labels_is_seeded_and_never_keeps_the_label():
    labels = np.repeat(np.arange(5), 20)
    given, flipped = demo.flip_labels(labels, 0.3, 5, seed=1)
    again, _ = demo.flip_labels(labels, 0.3, 5, seed=1)
    assert flipped.sum() == 30 and np.array_equal(given, again)
    assert np.all(given[flipped] != labels[flipped]) and np.all(given[~flipped] == labels[~flipped])


def test_artifacts_get_the_usual_file_permissions(tmp_path):
    from tvcore.atomicfile import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert mask & 0o044 == 0, "the check needs a umask that lets others read"
