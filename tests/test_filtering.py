"""The `filter` stage: value nets, decisions, training_values.csv and the split data set."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runfixtures import clustered_features, make_feature_run

from tvclean.main import cli
from tvcore.config import Config, EstimateConfig, FilterConfig, ValueNetConfig
from tvcore.errors import TvcleanError
from tvcore.rundir.ownership import check_no_overlap
from tvcore.rundir.splitdata import relative_name
from tvcore.stages.estimate import estimate
from tvcore.stages.filter import filter_run, load_training_values


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def estimated_run(tmp_path):
    rng = np.random.default_rng(0)
    train, labels, flipped = clustered_features(rng, 100, 3, 16, noise=0.7, flip=0.2)
    val, val_labels, _ = clustered_features(np.random.default_rng(0), 10, 3, 16, noise=0.7)
    ok = np.ones(labels.size, bool)
    ok[7] = False
    run = make_feature_run(tmp_path / "run", train, labels, val, val_labels,
                           ["cat", "dog", "eel"], train_ok=ok, data_root=tmp_path / "data")
    estimate(run, Config(estimate=EstimateConfig(episodes=30)), progress=False)
    run.flipped = flipped
    return run


def _config(**filter_options):
    """The threshold rule (these tests check its arithmetic); posterior tests say so."""
    filter_options.setdefault("method", "threshold")
    return Config(filter=FilterConfig(**filter_options),
                  valuenet=ValueNetConfig(min_examples=10, max_epochs=30))


def test_filter_writes_values_decisions_and_copies(estimated_run, tmp_path):
    before = _digest(tmp_path / "data")
    result = filter_run(estimated_run, _config(), progress=False)
    assert result.counts["error"] == 1 and result.decisions[7] == "error"
    assert result.counts["clean"] + result.counts["dirty"] == 299
    rows = load_training_values(estimated_run)
    assert len(rows) == 300 and rows.loc[7, "decision"] == "error"
    assert np.isnan(rows.loc[7, "value"]) and np.isnan(rows.loc[7, "score"])
    assert rows["mc_count"].dtype == np.int64 and rows["is_label_issue"].dtype == bool
    for i, (value, score, decision) in enumerate(zip(result.values, result.scores,
                                                     result.decisions)):
        assert rows.loc[i, "decision"] == decision
        if decision != "error":
            assert rows.loc[i, "value"] == value and rows.loc[i, "score"] == score
            assert (score < 0) == (decision == "dirty") == rows.loc[i, "is_label_issue"]
            # decided by its own Monte-Carlo estimate, one standard error above it
            assert score == pytest.approx(rows.loc[i, "mc_value"] + rows.loc[i, "mc_stderr"])
    in_subset = rows[rows["mc_count"] > 0]
    assert len(in_subset) == 299 and in_subset["mc_count"].between(1, 30).all()
    assert sorted(rows["rank"]) == list(range(1, 301)) and rows.loc[7, "rank"] == 300
    clean = sorted(p.name for p in (estimated_run.root / "clean").rglob("*.png"))
    dirty = sorted(p.name for p in (estimated_run.root / "dirty").rglob("*.png"))
    assert len(clean) == result.counts["clean"] and len(dirty) == result.counts["dirty"]
    first_dirty = next(i for i, d in enumerate(result.decisions) if d == "dirty")
    source = Path(rows.loc[first_dirty, "abs_path"])
    klass = rows.loc[first_dirty, "given_label"]
    assert rows.loc[first_dirty, "path"] == f"{klass}/{source.name}"  # as the user gave it
    assert (estimated_run.root / "dirty" / klass / source.name).read_bytes() == \
        source.read_bytes()
    assert _digest(tmp_path / "data") == before  # inputs untouched


def test_filter_finds_mislabeled_images(estimated_run):
    result = filter_run(estimated_run, _config(output="none"), progress=False)
    dirty = np.array([d == "dirty" for d in result.decisions])
    flipped = estimated_run.flipped
    assert dirty[flipped].mean() > 0.6  # most flipped images are discarded
    assert dirty[~flipped].mean() < 0.3


def test_suggested_label_is_another_class(estimated_run):
    filter_run(estimated_run, _config(output="none"), progress=False)
    rows = load_training_values(estimated_run)
    suggested = rows[rows["suggested_label"] != ""]
    assert (suggested["decision"] == "dirty").any()
    assert (suggested["suggested_label"] != suggested["given_label"]).all()
    assert (suggested["suggested_label"].isin(["cat", "dog", "eel"])).all()
    # most discarded images get a suggestion; it is right more often than not on flipped ones
    dirty = rows["decision"] == "dirty"
    assert (rows.loc[dirty, "suggested_label"] != "").mean() > 0.5
    assert (rows["suggested_label"] != "")[estimated_run.flipped].mean() > 0.5


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_link_modes(estimated_run, mode):
    filter_run(estimated_run, _config(output=mode), progress=False)
    placed = [p for p in (estimated_run.root / "clean").rglob("*.png")]
    assert placed
    rows = {Path(p).name: p for p in load_training_values(estimated_run)["abs_path"]}
    for p in placed:
        if mode == "symlink":
            assert p.is_symlink() and os.readlink(p) == rows[p.name]
        else:
            assert os.path.samefile(p, rows[p.name])


def test_output_none_removes_earlier_split_and_threshold_moves_decisions(estimated_run):
    filter_run(estimated_run, _config(), progress=False)
    assert (estimated_run.root / "clean").is_dir()
    low = filter_run(estimated_run, _config(output="none", threshold=-1e9), progress=False)
    assert not (estimated_run.root / "clean").exists()
    assert low.counts["dirty"] == 0
    high = filter_run(estimated_run, _config(output="none", threshold=1e9), progress=False)
    assert high.counts["clean"] == 0


def test_prefix_values_in_file_names(estimated_run):
    result = filter_run(estimated_run, _config(prefix_values=True), progress=False)
    names = [p.name for p in (estimated_run.root / "dirty").rglob("*.png")]
    assert len(names) == result.counts["dirty"]
    assert all(n.split("_", 1)[0].startswith("-") for n in names)


def test_value_nets_are_reused_when_up_to_date(estimated_run):
    filter_run(estimated_run, _config(output="none"), progress=False)
    stamp = (estimated_run.valuenets / "class_0.npz").stat().st_mtime_ns
    filter_run(estimated_run, _config(output="none", threshold=0.001), progress=False)
    assert (estimated_run.valuenets / "class_0.npz").stat().st_mtime_ns == stamp


def test_class_with_too_few_estimates_falls_back(estimated_run):
    config = _config(output="none")
    config.valuenet.min_examples = 1000  # more than any class has
    result = filter_run(estimated_run, config, progress=False)
    assert any("too few Monte-Carlo estimates" in w for w in result.warnings)
    rows = load_training_values(estimated_run)
    in_subset = rows["mc_count"] > 0
    assert in_subset.sum() == 299
    assert (rows.loc[in_subset, "value"] == rows.loc[in_subset, "mc_value"]).all()


def test_run_inside_input_directory_is_refused(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(TvcleanError, match="inside the input folder"):
        check_no_overlap(tmp_path / "data" / "train" / "run", [tmp_path / "data" / "train"])
    with pytest.raises(TvcleanError, match="input folder .* is inside the run directory"):
        check_no_overlap(tmp_path / "data", [tmp_path / "data" / "train"])
    check_no_overlap(tmp_path / "run", [tmp_path / "data" / "train"])


def test_relative_names_keep_nested_folders():
    assert relative_name("/d/train/cat/sub/x.png", "cat", ["/d/train"]) == "sub/x.png"
    assert relative_name("/d/train/cat/x.png", "cat", ["/d/train"]) == "x.png"
    assert relative_name("/elsewhere/y.png", "cat", ["/d/train"]) == "y.png"
    assert relative_name("/d/imgs/a/y.png", "cat", ["/d/list.csv"]) == "imgs/a/y.png"


def test_filter_without_estimates_says_what_to_run(tmp_path):
    rng = np.random.default_rng(0)
    train, labels, _ = clustered_features(rng, 5, 2, 4)
    run = make_feature_run(tmp_path / "run", train, labels, train, labels)
    with pytest.raises(TvcleanError, match="run `tvclean estimate`"):
        filter_run(run, _config(), progress=False)


def test_cli_filter(estimated_run):
    runner = CliRunner()
    result = runner.invoke(cli, ["filter", str(estimated_run.root), "--output", "none",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert '"dirty":' in result.output
    text = runner.invoke(cli, ["filter", str(estimated_run.root), "--output", "none"])
    assert text.exit_code == 0 and "discarded" in text.output and "cat" in text.output
    bad = runner.invoke(cli, ["filter", str(estimated_run.root), "--output", "move"])
    assert bad.exit_code == 2 and "move" in bad.output


def test_posterior_filter_decides_with_the_validation_set(estimated_run):
    config = Config(valuenet=ValueNetConfig(min_examples=10, max_epochs=30))
    assert config.filter.method == "posterior"
    result = filter_run(estimated_run, config, progress=False)
    rows = load_training_values(estimated_run)
    assert set(result.decisions) <= {"clean", "dirty", "outlier", "error"}  # relabel is off
    usable = np.array([d != "error" for d in result.decisions])
    flagged = np.array([d in ("dirty", "outlier") for d in result.decisions])
    assert ((result.scores[usable] < 0) == flagged[usable]).all()
    assert (rows["is_label_issue"] == flagged).all()
    truth = estimated_run.flipped
    tp = np.sum(flagged & truth)
    assert 2 * tp / (flagged.sum() + truth.sum()) > 0.8
    assert list(rows["decision"]) == result.decisions
    assert list(rows["suggested_label"].fillna("")) == result.suggested
    # a suggestion is another class the image more likely belongs to: every discarded one has it
    assert all(s for s, d in zip(result.suggested, result.decisions) if d == "dirty")
    log = (estimated_run.root / "log.txt").read_text()
    assert "filter: posterior rule:" in log and "noise_rate" in log


def test_posterior_relabel_moves_images_into_their_new_class(estimated_run):
    config = Config(valuenet=ValueNetConfig(min_examples=10, max_epochs=30))
    config.filter.relabel, config.filter.relabel_confidence = True, 0.5
    result = filter_run(estimated_run, config, progress=False)
    relabelled = [i for i, d in enumerate(result.decisions) if d == "relabel"]
    assert relabelled and result.counts["relabel"] == len(relabelled)
    rows = load_training_values(estimated_run)
    for i in relabelled:
        placed = list((estimated_run.root / "clean").rglob(Path(rows.loc[i, "path"]).name))
        assert [p.parent.name for p in placed] == [rows.loc[i, "suggested_label"]]


def test_images_of_no_class_go_to_the_outlier_folder(tmp_path):
    rng = np.random.default_rng(4)
    train, labels, _ = clustered_features(rng, 60, 3, 16, noise=0.5)
    val, val_labels, _ = clustered_features(np.random.default_rng(4), 15, 3, 16, noise=0.5)
    # 20 images of a fourth kind, no class of the label set, given in-set labels
    foreign, _, _ = clustered_features(np.random.default_rng(99), 20, 1, 16, noise=0.5)
    train = np.concatenate([train, foreign + 3.0])
    labels = np.concatenate([labels, np.arange(20) % 3])
    run = make_feature_run(tmp_path / "run", train, labels, val, val_labels,
                           ["ant", "bee", "cat"], data_root=tmp_path / "data")
    estimate(run, Config(estimate=EstimateConfig(episodes=20)), progress=False)
    result = filter_run(run, Config(valuenet=ValueNetConfig(min_examples=10, max_epochs=30)),
                        progress=False)
    decisions = np.array(result.decisions)
    assert np.mean(decisions[180:] == "outlier") > 0.8
    assert np.mean(decisions[:180] == "outlier") < 0.05
    placed = list((run.root / "outlier").rglob("*.png"))
    assert len(placed) == result.counts["outlier"]
    frame = load_training_values(run)
    assert frame.loc[frame["decision"] == "outlier", "is_label_issue"].all()
    assert (frame.loc[frame["decision"] == "outlier", "suggested_label"].fillna("") == "").all()


def test_many_images_of_no_class_come_with_a_warning_of_what_else_it_can_mean(tmp_path):
    rng = np.random.default_rng(5)
    train, labels, _ = clustered_features(rng, 60, 3, 16, noise=0.5)
    val, val_labels, _ = clustered_features(np.random.default_rng(5), 15, 3, 16, noise=0.5)
    foreign, _, _ = clustered_features(np.random.default_rng(98), 60, 1, 16, noise=0.5)
    run = make_feature_run(tmp_path / "run", np.concatenate([train, foreign + 3.0]),
                           np.concatenate([labels, np.arange(60) % 3]), val, val_labels,
                           ["ant", "bee", "cat"], data_root=tmp_path / "data")
    estimate(run, Config(estimate=EstimateConfig(episodes=20)), progress=False)
    result = filter_run(run, Config(valuenet=ValueNetConfig(min_examples=10, max_epochs=30)),
                        progress=False)
    assert result.counts["outlier"] > 0.2 * 240
    said = [w for w in result.warnings if "of no class" in w]
    assert len(said) == 1 and "collected apart" in said[0] and "--no-outliers" in said[0]
    assert f"{result.counts['outlier']} of 240 images" in said[0]
    assert "of no class" in (run.root / "log.txt").read_text()


def test_few_images_of_no_class_need_no_warning(estimated_run):
    result = filter_run(estimated_run, Config(valuenet=ValueNetConfig(min_examples=10,
                                                                      max_epochs=30)),
                        progress=False)
    assert result.counts["outlier"] <= 0.1 * len(result.decisions)
    assert not [w for w in result.warnings if "of no class" in w]
