"""Configuration: presets, TOML, validation messages."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tvclean.main import cli
from tvcore.config import Config, EstimateConfig, FilterConfig
from tvcore.errors import TvcleanError


def test_default_and_original_presets():
    default, original = Config.preset("default"), Config.preset("original")
    assert default.to_dict() == Config().to_dict()
    assert (original.estimate.lr, original.estimate.episodes, original.estimate.episode_per_class,
            original.estimate.feature_norm) == (0.001, 100, -1, "none")
    assert (original.filter.confidence_z, original.filter.decide_by) == (0.0, "valuenet")
    assert original.valuenet.target_scale == "none"
    with pytest.raises(TvcleanError, match="invalid preset \\(--preset\\): must be one of"):
        Config.preset("fast")


def test_toml_preset_key_and_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "original"\n[filter]\nthreshold = -0.01\n')
    config = Config.from_toml(path)
    assert config.estimate.lr == 0.001 and config.filter.threshold == -0.01
    assert Config.from_toml(path, preset="default").estimate.lr == Config().estimate.lr
    path.write_text(config.to_toml())
    assert Config.from_toml(path).to_dict() == config.to_dict()


@pytest.mark.parametrize("section, options, message", [
    (EstimateConfig, dict(episode_per_class=-2), "estimate.episode_per_class"),
    (EstimateConfig, dict(feature_norm="l2"), "estimate.feature_norm .*center-l2, none"),
    (FilterConfig, dict(confidence_z=-1.0), "invalid filter.confidence_z \\(--confidence-z\\)"),
    (FilterConfig, dict(decide_by="knn"), "filter.decide_by .*must be one of mc, valuenet"),
])
def test_bad_values_name_the_option(section, options, message):
    with pytest.raises(TvcleanError, match=message):
        section(**options).validate()


def test_cli_preset_is_recorded_in_the_run(tmp_path):
    import numpy as np
    from runfixtures import clustered_features, make_feature_run

    rng = np.random.default_rng(0)
    train, labels, _ = clustered_features(rng, 12, 2, 6)
    run = make_feature_run(tmp_path / "run", train, labels, train, labels)
    result = CliRunner().invoke(cli, ["estimate", str(run.root), "--preset", "original",
                                      "--episodes", "2"])
    assert result.exit_code == 0, result.output
    saved = Config.from_toml(run.config_path)
    assert saved.estimate.lr == 0.001 and saved.estimate.episodes == 2
    assert saved.estimate.feature_norm == "none"
    bad = CliRunner().invoke(cli, ["estimate", str(run.root), "--preset", "fast"])
    assert bad.exit_code == 2 and "fast" in bad.output
