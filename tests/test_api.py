"""The Python API: find_label_issues on ordinary inputs, its errors, and the top-level names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from runfixtures import clustered_features, make_feature_run

import tvcore
from tvcore.errors import TvcleanError

FAST = {"estimate": {"episodes": 8, "lr": 1.0}, "valuenet": {"max_epochs": 20, "min_examples": 5}}
COLUMNS = ["given_label", "given_label_index", "decision", "is_label_issue", "score", "value",
           "stderr", "mc_value", "mc_stderr", "mc_count", "suggested_label", "rank",
           "decision_source", "reviewed_label"]


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(4)
    x, y, flipped = clustered_features(rng, 40, 3, 10, noise=0.6, flip=0.2)
    val_x, val_y, _ = clustered_features(np.random.default_rng(4), 12, 3, 10, noise=0.6)
    return x, y, val_x, val_y, flipped


@pytest.fixture(scope="module")
def reference(arrays):
    x, y, val_x, val_y, _ = arrays
    return tvcore.find_label_issues(x, y, val_x, val_y, config=FAST)


def test_the_result_frame_and_ranking(arrays, reference):
    x, y, _, _, flipped = arrays
    frame = reference.frame
    assert list(frame.columns) == COLUMNS and len(frame) == len(y)
    assert frame["mc_count"].dtype == np.int64 and frame["rank"].dtype == np.int64
    assert frame["is_label_issue"].dtype == bool
    assert sorted(frame["rank"]) == list(range(1, len(y) + 1))
    assert np.all(np.diff(frame["score"].to_numpy()[reference.ranked]) >= 0)
    assert (frame["is_label_issue"] == frame["decision"].isin(["dirty", "outlier"])).all()
    assert list(frame["given_label"]) == [str(k) for k in y]
    issues = reference.issues
    assert set(issues) == set(np.flatnonzero(reference.is_label_issue))
    assert flipped[issues].mean() > 0.6  # the flagged ones are mostly the flipped ones
    suggested = frame[frame["suggested_label"] != ""]
    assert len(suggested) and (suggested["suggested_label"] != suggested["given_label"]).all()


def test_dataframes_lists_and_string_labels_give_the_same_result(arrays, reference):
    x, y, val_x, val_y, _ = arrays
    names = np.array(["ant", "bee", "cat"])
    by_frame = tvcore.find_label_issues(pd.DataFrame(x), pd.Series(names[y]),
                                        pd.DataFrame(val_x), list(names[val_y]), config=FAST)
    assert list(by_frame.frame["given_label"]) == list(names[y])
    np.testing.assert_array_equal(by_frame.frame["score"], reference.frame["score"])
    by_list = tvcore.find_label_issues(x.tolist(), y.tolist(), val_x.tolist(), val_y.tolist(),
                                       config=FAST)
    np.testing.assert_allclose(by_list.frame["score"], reference.frame["score"], rtol=1e-5,
                               atol=1e-9)  # float64 lists round to float32 in the engine


def test_labels_with_gaps_are_their_own_classes(arrays, reference):
    x, y, val_x, val_y, _ = arrays
    gappy = np.array([0, 5, 9])
    result = tvcore.find_label_issues(x, gappy[y], val_x, gappy[val_y], config=FAST)
    assert set(result.frame["given_label"]) == {"0", "5", "9"}
    np.testing.assert_array_equal(result.frame["score"], reference.frame["score"])


def test_the_same_seed_gives_the_same_result_and_another_seed_another(arrays, reference):
    x, y, val_x, val_y, _ = arrays
    again = tvcore.find_label_issues(x, y, val_x, val_y, config=FAST)
    np.testing.assert_array_equal(again.frame["score"], reference.frame["score"])
    other = tvcore.find_label_issues(x, y, val_x, val_y, config=FAST, seed=1)
    assert not np.array_equal(other.frame["score"], reference.frame["score"])


def test_reviews_on_arrays_decide_their_rows_and_join_the_validation_set(arrays):
    x, y, val_x, val_y, flipped = arrays
    wrong, right, gone = (int(r) for r in (np.flatnonzero(flipped)[0],
                                           np.flatnonzero(~flipped)[0],
                                           np.flatnonzero(~flipped)[1]))
    other = (int(y[wrong]) + 1) % 3
    reviewed = {wrong: other, right: int(y[right]), gone: None}
    result = tvcore.training_values(x, y, val_x, val_y, FAST, reviewed=reviewed)
    decisions = result.scored.decisions
    assert (decisions[wrong], decisions[right], decisions[gone]) == ("relabel", "clean", "dirty")
    assert result.scored.suggested[wrong] == other
    assert not set(reviewed) & set(result.mc.rows.tolist())  # out of the Monte-Carlo subset
    plain = tvcore.training_values(x, y, val_x, val_y, FAST)
    assert set(reviewed) <= set(plain.mc.rows.tolist())
    # the reviewed rows left the subset, two joined the validation set: the estimates moved
    assert not np.array_equal(result.scored.scores, plain.scored.scores)
    unreviewed = tvcore.training_values(x, y, val_x, val_y, FAST, reviewed={})
    np.testing.assert_array_equal(unreviewed.scored.scores, plain.scored.scores)
    # the verdicts on the images put in a class (wrong, right) fit what labels are worth
    # where images are ambiguous (the posterior rule's step 4)
    assert "review_doubt" in result.scored.info and "review_doubt" not in plain.scored.info


@pytest.mark.parametrize("change, message", [
    (lambda x, y, vx, vy: (np.vstack([x, x[:10]]), y, vx, vy),
     r"labels has 120 entries but features has 130 rows"),
    (lambda x, y, vx, vy: (x, np.r_[y, y[:5]], vx, vy), r"labels has 125 entries but features"),
    (lambda x, y, vx, vy: (x, y, vx[:, :7], vy), r"features have 10 columns but val_features "
                                                 r"have 7"),
    (lambda x, y, vx, vy: (_with_nan(x, 37), y, vx, vy),
     r"training features of row 37 contain NaN or inf"),
    (lambda x, y, vx, vy: (x, y, vx, np.where(vy == 2, 0, vy)),
     r"class '2' has no usable validation image"),
    (lambda x, y, vx, vy: (x, np.zeros_like(y), vx, np.zeros_like(vy)),
     r"need at least two classes"),
    (lambda x, y, vx, vy: (x, np.array([None] + list(y[1:]), dtype=object), vx, vy),
     r"labels\[0\] is missing"),
    (lambda x, y, vx, vy: (x, np.array(["a", 1] * 60, dtype=object), vx,
                           np.array(["a", 1] * 18, dtype=object)), r"labels must be of one kind"),
    (lambda x, y, vx, vy: (x[0], y, vx, vy), r"features must be a 2-D array"),
    (lambda x, y, vx, vy: (np.full(x.shape, "a"), y, vx, vy), r"features must hold real numbers"),
])
def test_bad_arrays_are_one_line_errors(arrays, change, message):
    x, y, val_x, val_y, _ = arrays
    with pytest.raises(TvcleanError, match=message):
        tvcore.find_label_issues(*change(x, y, val_x, val_y), config=FAST)


def _with_nan(x, row):
    x = x.copy()
    x[row, 3] = np.nan
    return x


def test_top_level_stage_names_stay_functions_after_any_stage_ran(tmp_path, arrays):
    """`tvcore.estimate(...)` as the README writes it, after other stages were imported."""
    x, y, val_x, val_y, _ = arrays
    run = make_feature_run(tmp_path / "run", x, y, val_x, val_y, data_root=tmp_path / "data")
    estimates = tvcore.estimate(run.root, FAST, progress=False)
    result = tvcore.filter_run(run.root, {**FAST, "filter": {"output": "none"}}, progress=False)
    for name in ("extract", "estimate", "filter_run", "clean", "write_report", "evaluate",
                 "finetune", "find_label_issues", "load_training_values", "run_demo"):
        assert callable(getattr(tvcore, name)), name
    frame = tvcore.load_training_values(run.root)
    assert list(frame.columns) == ["path", "abs_path"] + COLUMNS
    assert frame["mc_count"].sum() == estimates.count.sum()
    assert list(frame["decision"]) == result.decisions


def test_import_tvclean_gives_the_library():
    import tvclean

    assert tvclean.find_label_issues is tvcore.find_label_issues
    assert tvclean.Config is tvcore.Config
    with pytest.raises(AttributeError):
        tvclean.no_such_name  # noqa: B018
