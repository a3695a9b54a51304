"""The HTML report: contents checked against training_values.csv, escaping, offline, plots, CLI."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from runfixtures import clustered_features, make_feature_run
from scipy.stats import spearmanr

from tvclean.main import cli
from tvcore.config import Config, EstimateConfig, FilterConfig, ValueNetConfig
from tvcore.errors import TvcleanError
from tvcore.stages.estimate import estimate
from tvcore.stages.filter import filter_run, load_training_values
from tvcore.stages.report import (
    embedding_rows,
    extreme_rows,
    load_report_data,
    plain,
    rank_convergence,
    thumbnail_uri,
    tsne_2d,
    write_report,
)

# A class folder name that breaks HTML unless escaped, and one that breaks matplotlib mathtext.
NASTY = 'd<b>&"og'
CLASSES = ["cat", NASTY, "e$l"]
THUMBNAILS = 4
CHROMIUM = "/usr/bin/chromium"


def _filtered_run(root: Path):
    rng = np.random.default_rng(0)
    train, labels, _ = clustered_features(rng, 60, 3, 16, noise=0.7, flip=0.2)
    val, val_labels, _ = clustered_features(np.random.default_rng(0), 10, 3, 16, noise=0.7)
    ok = np.ones(labels.size, bool)
    ok[7] = False  # an image the extract stage could not read
    run = make_feature_run(root / "run", train, labels, val, val_labels, CLASSES, train_ok=ok,
                           data_root=root / "data")
    estimate(run, Config(estimate=EstimateConfig(episodes=10, lr=0.005, checkpoint_every=2)),
             progress=False)
    filter_run(run, Config(filter=FilterConfig(output="none"),
                           valuenet=ValueNetConfig(min_examples=10, max_epochs=30)),
               progress=False)
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A filtered run whose lowest-valued cat image is gone and highest is corrupt, reported."""
    run = _filtered_run(tmp_path_factory.mktemp("report"))
    low, high = extreme_rows(load_report_data(run), 0, THUMBNAILS)
    paths = list(load_training_values(run)["abs_path"])
    os.unlink(paths[low[0]])
    Path(paths[high[0]]).write_bytes(b"not an image")
    path = write_report(run, {"report": {"embedding_sample": 120, "thumbnails": THUMBNAILS}},
                        progress=False)
    return SimpleNamespace(run=run, path=path, html=path.read_text(encoding="utf-8"),
                           rows=load_training_values(run).to_dict("records"))


def test_report_is_written_in_the_run(report):
    assert report.path == report.run.root / "report" / "index.html"
    assert report.html.startswith("<!DOCTYPE html>") and report.html.endswith("</html>\n")
    assert "report: " in report.run.log_path.read_text()


def test_class_table_matches_training_values(report):
    found = re.findall(r'<tr class="class-row"><td>(.*?)</td><td>(\d+)</td><td>(\d+)</td>'
                       r"<td>(\d+)</td><td>[^<]*</td><td>(\d+)</td>", report.html)
    table = {html.unescape(name): tuple(map(int, numbers)) for name, *numbers in found}
    assert list(table) == CLASSES
    for name in CLASSES:
        mine = [r["decision"] for r in report.rows if r["given_label"] == name]
        assert table[name] == (len(mine), mine.count("clean"), mine.count("dirty"),
                               mine.count("error"))
    dirty = sum(r["decision"] == "dirty" for r in report.rows)
    assert dirty > 0
    assert re.search(r'<span id="discarded">(\d+)</span>', report.html).group(1) == str(dirty)
    assert "Threshold</th><td>0</td>" in report.html
    assert "10 episodes" in report.html


def test_names_are_escaped(report):
    assert html.escape(NASTY) in report.html
    assert NASTY not in report.html and "<b>" not in report.html


def test_page_is_self_contained(report):
    assert not re.search(r"https?://", report.html, re.IGNORECASE)
    sources = re.findall(r'src="([^"]*)"', report.html)
    assert sources and all(s.startswith("data:image/") for s in sources)
    links = re.findall(r'href="([^"]*)"', report.html)
    assert links and all(link.startswith("#") for link in links)


def test_plots_are_embedded_and_written(report):
    plots = re.findall(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([^"]*)"',
                       report.html)
    assert len(plots) == 3
    for (alt, encoded), name in zip(plots, ("histograms", "embedding", "convergence")):
        png = base64.b64decode(encoded)
        assert (report.run.report / f"{name}.png").read_bytes() == png
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float64)
        assert min(pixels.shape) >= 250 and pixels.std() > 10, alt


def section(page: str, anchor: str) -> str:
    return page.split(f'<section id="{anchor}">')[1].split("</section>")[0]


def _grid(page: str, label: int, kind: str) -> str:
    return page.split(f'data-class="{label}" data-kind="{kind}">')[1].split("<h4>")[0]


def _grid_paths(page: str, label: int, kind: str) -> list[str]:
    titles = re.findall(r'<figure class="thumb \w+" title="([^"]*)"', _grid(page, label, kind))
    return [html.unescape(t).split("\n")[0] for t in titles]


def test_thumbnails_are_the_extreme_images(report):
    for label, name in enumerate(CLASSES):
        mine = [r for r in report.rows if r["given_label"] == name and not np.isnan(r["score"])]
        mine.sort(key=lambda r: float(r["score"]))
        assert _grid_paths(report.html, label, "lowest") == [r["abs_path"] for r in
                                                             mine[:THUMBNAILS]]
        assert _grid_paths(report.html, label, "highest") == [r["abs_path"] for r in
                                                              mine[::-1][:THUMBNAILS]]
    assert section(report.html, "thumbnails").count('<figure class="thumb') == \
        2 * THUMBNAILS * len(CLASSES)
    lowest = min((r for r in report.rows if r["given_label"] == "cat"
                  and not np.isnan(r["score"])), key=lambda r: float(r["score"]))
    # the posterior rule's score has no standard error: shown as a probability
    p_right = 1 / (1 + np.exp(-float(lowest["score"])))
    assert np.isnan(float(lowest["stderr"]))
    assert f'<div class="score">label right: p {p_right:.2f}</div>' in \
        _grid(report.html, 0, "lowest")


def test_missing_and_corrupt_images_get_placeholders(report):
    assert _grid(report.html, 0, "lowest").count('class="placeholder"') == 1
    assert _grid(report.html, 0, "highest").count('class="placeholder"') == 1
    thumbs = section(report.html, "thumbnails")
    assert thumbs.count('class="placeholder"') == 2
    assert thumbs.count("data:image/png;base64,") == 2 * THUMBNAILS * 3 - 2


def test_discarded_thumbnails_are_framed(report):
    shown = _grid_paths(report.html, 1, "lowest")
    decisions = {r["abs_path"]: r["decision"] for r in report.rows}
    framed = re.findall(r'<figure class="thumb (\w+)"', _grid(report.html, 1, "lowest"))
    assert framed == [decisions[p] for p in shown] and "dirty" in framed


def test_stage_times_are_the_stages_own_records(report):
    records = report.run.stage_records()
    assert {"estimate", "filter", "report"} <= set(records)
    shown = re.search(r"Stage times</th><td>([^<]*)</td>", report.html).group(1)
    for stage in ("estimate", "filter"):
        assert f"{stage} {records[stage]['seconds']:.1f} s" in html.unescape(shown)


def test_rank_convergence_is_spearman_against_final():
    rng = np.random.default_rng(1)
    final = rng.normal(size=200)
    history = np.array([final + rng.normal(scale=s, size=200) for s in (3.0, 1.0, 0.3, 0.0)])
    rho = rank_convergence(history, final)
    expected = [spearmanr(row, final).statistic for row in history]
    np.testing.assert_allclose(rho, expected, rtol=1e-12)
    assert rho[-1] == pytest.approx(1.0) and np.all(np.diff(rho) > 0)
    assert np.isnan(rank_convergence(np.ones((1, 5)), np.arange(5.0)))[0]


def _ranked(values, labels):
    return SimpleNamespace(values=np.asarray(values, float), labels=np.asarray(labels))


def test_extreme_rows_never_show_an_image_twice():
    data = _ranked([0.3, -0.2, np.nan, 0.1, -0.5, 0.0, 9.0], [0, 0, 0, 0, 0, 0, 1])
    low, high = extreme_rows(data, 0, 8)
    assert low.tolist() == [4, 1, 5] and high.tolist() == [0, 3]
    low, high = extreme_rows(data, 0, 1)
    assert low.tolist() == [4] and high.tolist() == [0]
    low, high = extreme_rows(data, 2, 3)
    assert low.size == 0 and high.size == 0


def test_embedding_sample_is_seeded_and_readable_only():
    values = np.r_[np.full(5, np.nan), np.linspace(-1, 1, 95)]
    data = SimpleNamespace(values=values, features=SimpleNamespace(train=SimpleNamespace(
        ok=np.r_[np.zeros(5, bool), np.ones(95, bool)])))
    rows = embedding_rows(data, 40)
    assert rows.size == 40 and np.all(np.diff(rows) > 0) and rows.min() >= 5
    assert np.array_equal(rows, embedding_rows(data, 40))
    assert not np.array_equal(rows, embedding_rows(data, 40, seed=1))
    assert embedding_rows(data, 500).tolist() == list(range(5, 100))


def test_tsne_keeps_clusters_apart_and_is_deterministic():
    rng = np.random.default_rng(0)
    features, labels, _ = clustered_features(rng, 60, 3, 80, noise=0.3)
    xy = tsne_2d(features)
    assert xy.shape == (180, 2) and np.all(np.isfinite(xy))
    np.testing.assert_array_equal(xy, tsne_2d(features))
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    assert np.mean(labels[distance.argmin(axis=1)] == labels) > 0.95  # 1-NN in the map


def _decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_thumbnail_uri(tmp_path):
    Image.new("L", (28, 28), 200).save(tmp_path / "small.png")
    uri = thumbnail_uri(str(tmp_path / "small.png"))
    assert uri.startswith("data:image/png;base64,") and _decode(uri).size == (28, 28)
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "photo.png")
    uri = thumbnail_uri(str(tmp_path / "photo.png"))
    assert uri.startswith("data:image/jpeg;base64,") and _decode(uri).size == (112, 75)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    Image.fromarray(noise).save(tmp_path / "rotated.jpg", exif=exif)
    assert _decode(thumbnail_uri(str(tmp_path / "rotated.jpg"))).size == (75, 112)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    assert thumbnail_uri(str(tmp_path / "broken.png")) is None
    assert thumbnail_uri(str(tmp_path / "missing.png")) is None


def test_missing_stages_are_named(tmp_path):
    rng = np.random.default_rng(0)
    train, labels, _ = clustered_features(rng, 8, 2, 4)
    with pytest.raises(TvcleanError, match="run `tvclean extract`"):
        write_report(tmp_path / "empty")
    run = make_feature_run(tmp_path / "run", train, labels, train, labels)
    with pytest.raises(TvcleanError, match="run `tvclean estimate`"):
        write_report(run)
    estimate(run, Config(estimate=EstimateConfig(episodes=2)), progress=False)
    with pytest.raises(TvcleanError, match="run `tvclean filter`"):
        write_report(run)


def test_corrupt_training_values_are_reported(report, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(report.run.root, run_copy)
    text = (run_copy / "training_values.csv").read_text().splitlines()
    text[3] = text[3].replace(",clean,", ",maybe,").replace(",dirty,", ",maybe,")
    (run_copy / "training_values.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(TvcleanError, match=r"training_values.csv, line 4: decision 'maybe'"):
        write_report(run_copy)


def test_cli_report(report, monkeypatch):
    opened = []
    monkeypatch.setattr("click.launch", lambda url: opened.append(url))
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(report.run.root), "--embedding-sample", "50",
                                 "--thumbnails", "2", "--open"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(report.path) and opened == [str(report.path)]
    page = report.path.read_text(encoding="utf-8")
    assert section(page, "thumbnails").count('<figure class="thumb') == 2 * 2 * len(CLASSES)
    assert "t-SNE of the features of 50 training images" in page


def test_cli_report_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "run `tvclean extract`" in missing.output
    assert "Traceback" not in missing.output
    bad = runner.invoke(cli, ["report", str(tmp_path), "--thumbnails", "0"])
    assert bad.exit_code == 1 and "--thumbnails" in bad.output


def test_report_renders_in_chromium(report, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
                    f"--screenshot={shot}", "--window-size=1400,3000",
                    report.path.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float64)
    assert pixels.shape == (3000, 1400, 3)
    assert pixels.std() > 20  # not a blank page
    # The header bar (dark) and the white section cards are both drawn.
    assert pixels[20, 700].mean() < 100 and (pixels.mean(axis=2) > 250).mean() > 0.2


def test_evaluation_is_saved_and_shown(tmp_path):
    from tvcore.stages.evaluate import evaluate

    run = _filtered_run(tmp_path)
    rows = load_training_values(run)
    truth = tmp_path / "truth.csv"
    truth.write_text("path,is_mislabeled\n" + "".join(f"{p},{i % 5 == 0:d}\n"
                                                     for i, p in enumerate(rows["abs_path"])))
    result = evaluate(run, truth)
    saved = json.loads((run.root / "evaluation.json").read_text())
    assert saved["overall"]["f1"] == result.overall["f1"]
    html = write_report(run, {"report": {"embedding_sample": 50, "thumbnails": 2}}).read_text()
    assert f"F1 {result.overall['f1']:.3f}" in html
    filter_run(run, Config(filter=FilterConfig(output="none", threshold=1.0)), progress=False)
    stale = write_report(run, {"report": {"embedding_sample": 50, "thumbnails": 2}}).read_text()
    assert "Against the truth" not in stale  # decisions changed since the evaluation


def test_borderline_and_unreadable_sections(report):
    border = section(report.html, "borderline")
    shown = re.findall(r'<figure class="thumb \w+[^"]*" title="([^"]*)"', border)
    assert len(shown) == 3 * THUMBNAILS
    data = load_report_data(report.run)
    margin = {p: abs(v) / s if np.isfinite(s) else abs(v)  # posterior: log-odds, no stderr
              for p, v, s in zip(data.paths, data.values, data.table.stderr) if np.isfinite(v)}
    margins = [margin[html.unescape(p)] for p in shown]
    assert margins == sorted(margins) and margins[-1] <= np.quantile(list(margin.values()), 0.2)
    unreadable = section(report.html, "unreadable")
    assert "1 image file(s) could not be used" in unreadable
    assert "cannot identify image file" in unreadable and "img00007.png" in unreadable


def test_captions_show_given_and_suggested_labels_in_plain_numbers(report):
    assert not re.search(r"\de[-+]\d\d", section(report.html, "thumbnails"))  # no exponents
    rows = {r["abs_path"]: r for r in report.rows}
    figures = re.findall(r'<figure class="thumb [^"]*" title="([^"]*)">.*?'
                         r'<div class="labels">(.*?)</div>', report.html)
    with_suggestion = 0
    for title, labels in figures:
        row = rows[html.unescape(title)]
        expected = html.escape(row["given_label"])
        if row["suggested_label"]:
            expected += f' &rarr; {html.escape(row["suggested_label"])}'
            with_suggestion += 1
        assert labels == expected
    assert len(figures) > 20 and with_suggestion > 0


def test_plain_numbers():
    assert plain(0.09734) == "+0.0973" and plain(-0.001234) == "-0.00123"
    assert plain(12.5) == "+12.5" and plain(0.0) == "0" and plain(float("nan")) == "n/a"
    assert plain(0.0157, signed=False) == "0.0157" and plain(3e-7) == "+0.000000300"


def test_score_text_of_either_rule():
    from tvcore.stages.report import _score_text

    assert _score_text(0.0, float("nan")) == "label right: p 0.50"
    assert _score_text(-0.0123, 0.004) == "-0.0123 &plusmn; 0.00400"
