"""The review loop's data side: filter applies RUN/review.csv, estimate learns from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runfixtures import clustered_features, make_feature_run

import tvcore
from tvclean.main import cli
from tvcore.rundir.review import append_review

FAST = ["--episodes", "6", "--threads", "1"]


@pytest.fixture
def run(tmp_path):
    rng = np.random.default_rng(1)
    x, y, flipped = clustered_features(rng, 30, 3, 8, noise=0.7, flip=0.25)
    vx, vy, _ = clustered_features(np.random.default_rng(1), 6, 3, 8, noise=0.7)
    run = make_feature_run(tmp_path / "run", x, y, vx, vy, ["ant", "bee", "cat"],
                           data_root=tmp_path / "data")
    run.flipped = flipped
    return run


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_without_reviews_nothing_changes(run, tmp_path):
    invoke("estimate", run.root, *FAST)
    invoke("filter", run.root)
    frame = tvcore.load_training_values(run.root)
    assert set(frame["decision_source"]) == {"computed"} and set(frame["reviewed_label"]) == {""}


def test_reviewed_decisions_override_and_relabelled_images_move(run):
    # reviews as validation off: only the reviewed images' decisions may change
    invoke("estimate", run.root, *FAST, "--no-use-reviews")
    invoke("filter", run.root)
    before = tvcore.load_training_values(run.root)
    keep = before.index[before["decision"] == "dirty"][0]
    drop = before.index[before["decision"] == "clean"][0]
    move = before.index[(before["given_label"] == "ant")][3]
    append_review(run, before.loc[keep, "path"], "clean", before.loc[keep, "given_label"])
    append_review(run, before.loc[drop, "path"], "dirty")
    append_review(run, before.loc[move, "path"], "relabel", "cat")
    append_review(run, "ant/no-such-image.png", "dirty")
    out = invoke("filter", run.root)
    assert "relabelled" in out
    after = tvcore.load_training_values(run.root)
    assert after.loc[keep, "decision"] == "clean" and not after.loc[keep, "is_label_issue"]
    assert after.loc[drop, "decision"] == "dirty" and after.loc[drop, "is_label_issue"]
    assert after.loc[move, "decision"] == "relabel" and after.loc[move, "reviewed_label"] == "cat"
    assert list(after.loc[[keep, drop, move], "decision_source"]) == ["reviewed"] * 3
    others = ~after.index.isin([keep, drop, move])
    assert (after.loc[others, "decision"] == before.loc[others, "decision"]).all()
    name = before.loc[move, "path"].split("/")[-1]
    assert (run.root / "clean" / "cat" / name).is_file()
    assert not (run.root / "clean" / "ant" / name).exists()
    assert (run.root / "clean" / before.loc[keep, "path"]).is_file()
    assert (run.root / "dirty" / before.loc[drop, "path"]).is_file()
    assert "review(s) in" in run.log_path.read_text()  # the unknown one is reported
    append_review(run, before.loc[keep, "path"], "")  # undo: computed again
    invoke("filter", run.root)
    undone = tvcore.load_training_values(run.root)
    assert undone.loc[keep, "decision"] == before.loc[keep, "decision"]
    assert undone.loc[keep, "decision_source"] == "computed"


def test_reviewed_images_join_the_validation_set_and_leave_the_subset(run):
    invoke("estimate", run.root, *FAST)
    invoke("filter", run.root, "--output", "none")
    frame = tvcore.load_training_values(run.root)
    rows = list(frame.index[:3]) + list(frame.index[40:42])
    for i in rows[:3]:
        append_review(run, frame.loc[i, "path"], "clean", frame.loc[i, "given_label"])
    append_review(run, frame.loc[rows[3], "path"], "relabel", "bee")
    append_review(run, frame.loc[rows[4], "path"], "dirty")
    est = tvcore.estimate(run.root, progress=False)
    assert sorted(est.review_rows.tolist()) == sorted(rows[:4])  # kept or relabelled
    assert not set(rows) & set(est.rows.tolist())  # no reviewed image in the subset
    meta = json.loads((run.estimates / "meta.json").read_text())
    assert meta["n_val"] == 18 and "4 of them reviewed" in run.log_path.read_text()
    back = tvcore.load_estimates(run.root)
    assert back.review_rows.tolist() == est.review_rows.tolist()
    # Switched off: exactly the run without reviews.
    off = tvcore.estimate(run.root, {"estimate": {"use_reviews": False}}, progress=False)
    fresh = make_feature_run(run.root.parent / "fresh", *_arrays(run), ["ant", "bee", "cat"])
    plain = tvcore.estimate(fresh.root, {"estimate": {"episodes": 6, "threads": 1}},
                            progress=False)
    np.testing.assert_array_equal(off.mean, plain.mean)
    assert off.review_rows.size == 0
    said = invoke("estimate", run.root, *FAST[2:], "--use-reviews", "--episodes", "7")
    assert "18 validation images + 4 reviewed)" in said  # the log: 22 (4 of them reviewed)


def _arrays(run):
    f = tvcore.load_features(run.root)
    return (np.asarray(f.train.features), f.train.labels, np.asarray(f.val.features),
            f.val.labels)


def test_filter_trusts_reviewed_images_as_validation(run):
    invoke("estimate", run.root, *FAST)
    invoke("filter", run.root, "--output", "none")
    frame = tvcore.load_training_values(run.root)
    for i in range(3):
        append_review(run, frame.loc[i, "path"], "clean", frame.loc[i, "given_label"])
    append_review(run, frame.loc[3, "path"], "dirty")  # discarded: not trusted
    tvcore.filter_run(run.root, progress=False)
    assert '"trusted_reviewed": 3' in _last_posterior_line(run)
    assert '"review_doubt":' in _last_posterior_line(run)  # the three kept verdicts fit step 4
    tvcore.filter_run(run.root, {"estimate": {"use_reviews": False}}, progress=False)
    assert '"trusted_reviewed": 0' in _last_posterior_line(run)
    assert '"review_doubt"' not in _last_posterior_line(run)


def test_filter_gives_the_rule_the_verdicts_on_images_put_in_a_class(run, monkeypatch):
    from tvcore.engine import decisions
    invoke("estimate", run.root, *FAST)
    invoke("filter", run.root, "--output", "none")
    frame = tvcore.load_training_values(run.root)
    labels = list(frame["given_label"])
    other = next(c for c in ("ant", "bee", "cat") if c != labels[7])
    append_review(run, frame.loc[5, "path"], "clean", labels[5])  # right
    append_review(run, frame.loc[7, "path"], "relabel", other)  # wrong: another class
    append_review(run, frame.loc[2, "path"], "dirty")  # maybe of no class: left out
    append_review(run, frame.loc[9, "path"], "relabel", labels[9])  # "relabelled" to its own
    seen = {}
    real = decisions.label_decisions

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(decisions, "label_decisions", spy)
    tvcore.filter_run(run.root, progress=False)
    rows, right = seen["verdicts"]
    assert dict(zip(rows.tolist(), right.tolist())) == {5: True, 7: False, 9: True}


def _last_posterior_line(run):
    return [line for line in run.log_path.read_text().splitlines()
            if "filter: posterior rule:" in line][-1]


def test_a_review_of_a_picture_since_replaced_is_not_applied(run):
    """The same file name, another picture (the data folder changed): neither filter nor
    estimate takes the old review for it."""
    from tvcore.io.modelzoo import sha256_file
    invoke("estimate", run.root, *FAST)
    invoke("filter", run.root, "--output", "none")
    frame = tvcore.load_training_values(run.root)
    kept, replaced = frame.index[0], frame.index[1]
    for i in (kept, replaced):
        append_review(run, frame.loc[i, "path"], "relabel", "cat",
                      sha256=sha256_file(frame.loc[i, "abs_path"]))
    Path(frame.loc[replaced, "abs_path"]).write_bytes(b"another picture")
    est = tvcore.estimate(run.root, progress=False)
    assert est.review_rows.tolist() == [kept]
    invoke("filter", run.root, "--output", "none")
    after = tvcore.load_training_values(run.root)
    assert after.loc[kept, "decision_source"] == "reviewed"
    assert after.loc[replaced, "decision_source"] == "computed"
    assert "files changed since they were reviewed" in run.log_path.read_text()
