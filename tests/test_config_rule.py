"""One configuration rule for every stage, `clean`, the CLI and the API: a stage on an existing
run starts from that run's config.toml, and only the options given override it; a --config
file, a --preset or a Config passed to the API replaces it. Help text has one source."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tomllib
from click.testing import CliRunner
from imagefiles import write_digit_tree
from runfixtures import clustered_features, make_feature_run

import tvcore
from tvclean.main import cli
from tvcore.config import SECTIONS, Config, options_table

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--episodes", "4", "--per-class", "20", "--val-per-class", "5"]


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(2)
    x, y, _ = clustered_features(rng, 30, 3, 8, flip=0.2)
    vx, vy, _ = clustered_features(np.random.default_rng(2), 8, 3, 8)
    return make_feature_run(tmp_path / "run", x, y, vx, vy, data_root=tmp_path / "data")


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def saved(run) -> dict:
    return tomllib.loads(run.config_path.read_text())


def estimate_lr(run) -> float:
    return json.loads((run.estimates / "meta.json").read_text())["config"]["lr"]


def test_estimate_keeps_the_runs_settings_and_options_override_them(run):
    invoke("estimate", run.root, *SMALL, "--lr", "0.5")
    invoke("estimate", run.root, "--episodes", "6")  # lr not given: the run's 0.5
    assert estimate_lr(run) == 0.5 and saved(run)["estimate"]["episodes"] == 6
    invoke("estimate", run.root, "--lr", "0.25")
    assert estimate_lr(run) == 0.25 and saved(run)["estimate"]["episodes"] == 6
    # The API follows the same rule: overrides on top of config.toml ...
    tvcore.estimate(run.root, {"estimate": {"episodes": 8}}, progress=False)
    assert estimate_lr(run) == 0.25 and saved(run)["estimate"]["episodes"] == 8
    # ... and an explicit Config is taken as it is.
    tvcore.estimate(run.root, Config(), progress=False)
    assert estimate_lr(run) == Config().estimate.lr


def test_preset_and_config_file_replace_the_runs_settings(run, tmp_path):
    invoke("estimate", run.root, *SMALL, "--lr", "0.5")
    invoke("estimate", run.root, "--preset", "default", *SMALL)
    assert estimate_lr(run) == Config().estimate.lr
    file = tmp_path / "mine.toml"
    file.write_text("[estimate]\nlr = 0.125\nepisodes = 4\nper_class = 20\n")
    invoke("estimate", run.root, "--config", file)
    assert estimate_lr(run) == 0.125


def test_filter_api_keeps_what_the_cli_saved(run):
    invoke("estimate", run.root, *SMALL)
    invoke("filter", run.root, "--method", "threshold", "--confidence-z", "0", "--output", "none")
    assert not (run.root / "clean").exists()
    result = tvcore.filter_run(run.root, progress=False)  # no options: the run's own
    assert not (run.root / "clean").exists()  # output none kept: nothing copied again
    frame = tvcore.load_training_values(run.root)
    ok = frame["decision"] != "error"
    np.testing.assert_array_equal(frame.loc[ok, "score"], frame.loc[ok, "value"])  # z = 0
    assert saved(run)["filter"]["confidence_z"] == 0.0 and result.counts["error"] == 0
    tvcore.filter_run(run.root, {"filter": {"output": "copy"}}, progress=False)
    assert (run.root / "clean").is_dir() and saved(run)["filter"]["confidence_z"] == 0.0


def test_report_keeps_its_settings(run):
    invoke("estimate", run.root, *SMALL)
    invoke("filter", run.root, "--output", "none")
    invoke("report", run.root, "--thumbnails", "2", "--embedding-sample", "40")
    page = tvcore.write_report(run.root, progress=False).read_text()
    thumbs = page.split('<section id="thumbnails">')[1].split("</section>")[0]
    assert thumbs.count('<figure class="thumb') == 2 * 2 * 3
    assert saved(run)["report"]["thumbnails"] == 2


def test_clean_on_an_existing_run_starts_from_its_config(tmp_path):
    write_digit_tree(tmp_path / "data" / "train", classes=(1, 7), per_class=10)
    write_digit_tree(tmp_path / "data" / "val", classes=(1, 7), per_class=4, offset=20)
    target = tmp_path / "run"
    invoke("extract", tmp_path / "data" / "train", tmp_path / "data" / "val", "-o", target,
           "--threads", "1")
    invoke("estimate", target, "--episodes", "3", "--lr", "0.5")
    invoke("clean", tmp_path / "data" / "train", tmp_path / "data" / "val", "-o", target,
           "--no-report", "--output", "none")
    run = tvcore.RunDir(target)
    assert estimate_lr(run) == 0.5 and saved(run)["estimate"]["episodes"] == 3
    result = tvcore.clean(tmp_path / "data" / "train", tmp_path / "data" / "val", target,
                          {"estimate": {"episodes": 5}}, progress=False)
    assert result.estimates.episodes == 5 and estimate_lr(run) == 0.5
    assert result.config.filter.output == "none"


def test_help_options_and_config_comments_come_from_the_field_metadata(run):
    commands = {"extract": ["extract"], "estimate": ["estimate"], "filter": ["filter", "valuenet"],
                "report": ["report"], "finetune": ["finetune"]}
    for command, sections in commands.items():
        text = "".join(invoke(command, "--help").output.split())  # click re-wraps the lines
        for section in sections:
            for f in dataclasses.fields(SECTIONS[section]):
                flag = "--" + f.name.replace("_", "-")
                if flag in text:
                    assert "".join(f.metadata["help"].split()) in text, (command, f.name)
    invoke("estimate", run.root, *SMALL)
    written = run.config_path.read_text()
    for f in dataclasses.fields(SECTIONS["estimate"]):
        first_words = " ".join(f.metadata["help"].split()[:4])
        assert first_words in " ".join(written.replace("#", " ").split()), f.name


def test_every_field_has_help_text():
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip().endswith((".", ")")), f"{section}.{f.name}"


def test_readme_option_table_is_generated_from_the_fields():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- options:start -->\n(.*?)\n<!-- options:end -->", readme, re.S)
    assert found, "README.md lacks the generated option table"
    assert found.group(1).strip() == options_table().strip(), \
        "README option table is stale: regenerate it with tvcore.config.options_table()"
