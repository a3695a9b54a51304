"""The `estimate` stage: run-directory artifacts, resume, errors and the CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner
from runfixtures import clustered_features, make_feature_run

from tvclean.main import cli
from tvcore.atomicfile import read_csv
from tvcore.config import Config, EstimateConfig
from tvcore.errors import TvcleanError
from tvcore.rundir import RunDir, load_estimates
from tvcore.rundir.ownership import claim
from tvcore.stages.estimate import estimate


@pytest.fixture
def feature_run(tmp_path):
    rng = np.random.default_rng(0)
    train, labels, _ = clustered_features(rng, 30, 3, 16, flip=0.2)
    val, val_labels, _ = clustered_features(rng, 8, 3, 16)
    ok = np.ones(labels.size, bool)
    ok[[4, 50]] = False  # two images that failed to decode
    return make_feature_run(tmp_path / "run", train, labels, val, val_labels,
                            ["cat", "dog", "eel"], train_ok=ok)


def test_estimate_writes_values_for_the_subset(feature_run):
    config = EstimateConfig(episodes=6, per_class=20, val_per_class=5, lr=0.01, checkpoint_every=2)
    result = estimate(feature_run, Config(estimate=config), progress=False)
    assert result.rows.size == 60 and result.val_rows.size == 15
    assert 4 not in result.rows and 50 not in result.rows  # failed images are never drawn
    assert result.count.tolist() == [6] * 60
    assert np.all(np.isfinite(result.mean)) and np.all(result.stderr > 0)
    back = load_estimates(feature_run)
    np.testing.assert_array_equal(back.mean, result.mean)
    np.testing.assert_array_equal(back.rows, result.rows)
    assert back.history.shape == (3, 60) and back.history_episodes.tolist() == [2, 4, 6]
    np.testing.assert_allclose(back.history[-1], result.mean, rtol=1e-6)
    rows = read_csv(feature_run.estimates / "values.csv")
    assert len(rows) == 60 and rows[0]["label"] == "cat" and rows[0]["label_index"] == "0"
    assert rows[0]["path"] == "cat/img00000.png"  # as the user gave it
    assert float(rows[0]["mc_value"]) == result.mean[0]
    assert "[estimate]" in feature_run.config_path.read_text()


def test_mislabeled_examples_get_lower_values(tmp_path):
    rng = np.random.default_rng(1)
    train, labels, flipped = clustered_features(rng, 60, 3, 24, noise=0.8, flip=0.25)
    val, val_labels, _ = clustered_features(np.random.default_rng(1), 20, 3, 24, noise=0.8)
    run = make_feature_run(tmp_path / "run", train, labels, val, val_labels)
    result = estimate(run, Config(estimate=EstimateConfig(episodes=20, lr=0.002)), progress=False)
    is_flipped = flipped[result.rows]
    assert result.mean[is_flipped].mean() < 0 < result.mean[~is_flipped].mean()


def test_more_episodes_continue_the_earlier_run(feature_run):
    base = dict(per_class=20, val_per_class=5, lr=0.01, checkpoint_every=2)
    estimate(feature_run, Config(estimate=EstimateConfig(episodes=4, **base)), progress=False)
    continued = estimate(feature_run, Config(estimate=EstimateConfig(episodes=8, **base)), progress=False)
    assert "resumed at episode 4" in feature_run.log_path.read_text()
    straight = estimate(_copy_features(feature_run), Config(estimate=EstimateConfig(episodes=8, **base)),
                        progress=False)
    np.testing.assert_array_equal(continued.mean, straight.mean)
    np.testing.assert_array_equal(continued.stderr, straight.stderr)


def _copy_features(run):
    target = RunDir(run.root.parent / "copy")
    claim(target.root)
    shutil.copytree(run.features, target.features)
    return target


def test_changed_options_start_afresh(feature_run):
    estimate(feature_run, Config(estimate=EstimateConfig(episodes=4, per_class=20, lr=0.01)), progress=False)
    changed = estimate(feature_run, Config(estimate=EstimateConfig(episodes=4, per_class=20, lr=0.02)),
                       progress=False)
    assert "resumed" not in feature_run.log_path.read_text()
    assert changed.count.tolist() == [4] * 60


_WORKER = textwrap.dedent("""
    import sys
    from tvcore.config import Config, EstimateConfig
    from tvcore.stages.estimate import estimate
    estimate(sys.argv[1], Config(estimate=EstimateConfig(episodes=40, lr=0.01, checkpoint_every=1)), progress=False)
""")


def test_kill_minus_9_then_resume_gives_identical_values(tmp_path):
    rng = np.random.default_rng(3)
    train, labels, _ = clustered_features(rng, 400, 4, 64, flip=0.2)
    val, val_labels, _ = clustered_features(rng, 50, 4, 64)
    runs = [make_feature_run(tmp_path / name, train, labels, val, val_labels)
            for name in ("killed", "straight")]
    state = runs[0].estimates / "checkpoint" / "state.npz"
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(runs[0].root)])
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with np.load(state) as saved:
        done = int(saved["episodes"])
    assert 1 <= done < 40, "the run must be killed part-way"
    resumed = estimate(runs[0], Config(estimate=EstimateConfig(episodes=40, lr=0.01, checkpoint_every=1)),
                       progress=False)
    straight = estimate(runs[1], Config(estimate=EstimateConfig(episodes=40, lr=0.01, checkpoint_every=5)),
                        progress=False)
    assert f"resumed at episode {done}" in runs[0].log_path.read_text()
    np.testing.assert_array_equal(resumed.mean, straight.mean)
    np.testing.assert_array_equal(resumed.stderr, straight.stderr)


def test_missing_features_tell_which_stage_to_run(tmp_path):
    with pytest.raises(TvcleanError, match="run `tvclean extract`"):
        estimate(tmp_path / "empty", Config(estimate=EstimateConfig(episodes=1)), progress=False)


def test_nan_features_are_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    train, labels, _ = clustered_features(rng, 5, 2, 4)
    train[3, 2] = np.inf
    run = make_feature_run(tmp_path / "run", train, labels, train, labels)
    with pytest.raises(TvcleanError, match=r"training features of .*img00003.png contain NaN"):
        estimate(run, Config(estimate=EstimateConfig(episodes=1)), progress=False)


def test_cli_estimate_json_and_errors(feature_run):
    runner = CliRunner()
    result = runner.invoke(cli, ["estimate", str(feature_run.root), "--episodes", "3",
                                 "--per-class", "10", "--lr", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    assert '"episodes": 3' in result.output and '"subset": 30' in result.output
    bad = runner.invoke(cli, ["estimate", str(feature_run.root), "--lr", "-0.5"])
    assert bad.exit_code == 1
    assert "invalid estimate.lr (--lr): must be a finite number > 0, got -0.5" in bad.output
    assert "Traceback" not in bad.output


def test_cli_config_file_is_overridden_by_options(feature_run, tmp_path):
    config = tmp_path / "tv.toml"
    config.write_text("[estimate]\nepisodes = 2\nper_class = 5\nlr = 0.01\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["estimate", str(feature_run.root), "--config", str(config),
                                 "--episodes", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert '"episodes": 3' in result.output and '"subset": 15' in result.output
    config.write_text("[estimate]\nepisode = 2\n")
    bad = runner.invoke(cli, ["estimate", str(feature_run.root), "--config", str(config)])
    assert bad.exit_code == 1 and "unknown option estimate.episode" in bad.output


@pytest.mark.parametrize("cold", [True, False])
def test_the_progress_bar_says_when_the_first_run_compiles(feature_run, monkeypatch, capsys,
                                                          cold):
    from tvcore.engine import kernel_warmup
    monkeypatch.setattr(kernel_warmup, "cache_is_cold", lambda: cold)
    monkeypatch.setattr(kernel_warmup, "start_loss_side_helper", lambda dtype: None)
    config = EstimateConfig(episodes=4, per_class=20, val_per_class=5, lr=0.01, checkpoint_every=2)
    estimate(feature_run, Config(estimate=config), progress=True)
    drawn = capsys.readouterr().err.split("\r")
    assert ("compiling the kernels for this machine" in drawn[1]) == cold
    assert "compiling" not in drawn[-1]  # gone once the first block of episodes is done
    assert "4/4" in drawn[-1]
    # each redraw covers what the one before showed (a shorter label leaves nothing behind)
    assert all(len(now) >= len(before.rstrip()) for before, now in zip(drawn[1:], drawn[2:]))
