"""`tvclean evaluate`: metrics against hand-computed numbers, truth formats, path matching, errors, CLI."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tvclean.main import cli
from tvcore.errors import TvcleanError
from tvcore.rundir.ownership import claim
from tvcore.rundir.tables import TRAINING_VALUES_COLUMNS
from tvcore.stages.evaluate import detection_metrics, evaluate, format_evaluation

HEADER = list(TRAINING_VALUES_COLUMNS)

# (class, file, given label, predicted value or None for an unreadable image, decision, mislabeled)
# Hand-computed expectations below are for exactly these rows.
ROWS = [
    ("cat", "c1.jpg", 0, -0.5, "dirty", True),
    ("cat", "c2.jpg", 0, 0.1, "clean", True),
    ("cat", "c3.jpg", 0, -0.2, "dirty", False),
    ("cat", "c4.jpg", 0, 0.3, "clean", False),
    ("dog", "d1.jpg", 1, 0.4, "clean", False),
    ("dog", "d2.jpg", 1, 0.2, "clean", False),
    ("dog", "d3.jpg", 1, None, "error", True),  # unreadable: excluded, counted
    ("dog", "d4.jpg", 1, -0.1, "dirty", None),  # the truth says nothing about it
]
EXTRA_TRUTH = ("dog", "zz.jpg", True)  # a truth entry without a training image

# Six evaluated rows: values [-0.5, 0.1, -0.2, 0.3, 0.4, 0.2], mislabeled [1,1,0,0,0,0],
# discarded [1,0,1,0,0,0]. Scores -value rank: c1(+) c3(-) c2(+) d2(-) c4(-) d1(-), so
# ROC-AUC = (4 + 3) / 8 and AP = (1/1 + 2/3) / 2.
OVERALL = {"n": 6, "mislabeled": 2, "discarded": 2, "tp": 1, "fp": 1, "fn": 1, "tn": 3,
           "precision": 0.5, "recall": 0.5, "f1": 0.5, "fraction_removed": 2 / 6,
           "noise_rate": 2 / 6, "roc_auc": 0.875, "average_precision": 5 / 6}
# cat: ranking c1(+) c3(-) c2(+) c4(-): ROC-AUC = (2 + 1) / 4, AP = (1 + 2/3) / 2.
CAT = {"n": 4, "mislabeled": 2, "discarded": 2, "tp": 1, "fp": 1, "fn": 1, "tn": 1,
       "precision": 0.5, "recall": 0.5, "f1": 0.5, "fraction_removed": 0.5,
       "noise_rate": 0.5, "roc_auc": 0.75, "average_precision": 5 / 6}
# dog: only d1, d2 evaluated, both correct and kept: every rate but fraction_removed is undefined.
DOG = {"n": 2, "mislabeled": 0, "discarded": 0, "tp": 0, "fp": 0, "fn": 0, "tn": 2,
       "precision": None, "recall": None, "f1": None, "fraction_removed": 0.0,
       "noise_rate": 0.0, "roc_auc": None, "average_precision": None}


def assert_metrics(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        if value is None:
            assert actual[key] is None, key
        else:
            assert actual[key] == pytest.approx(value), key


def write_training_values(run: Path, rows) -> None:
    """RUN/training_values.csv with these (path, label index, class name, score, decision)
    rows, written cell by cell (so that tests can write broken values too)."""
    claim(run)
    with open(run / "training_values.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for rank, (path, label, name, value, decision) in enumerate(rows, start=1):
            cell = "" if value is None else value
            writer.writerow([os.path.basename(path), path, name, label, decision,
                             "true" if decision == "dirty" else "false", cell, cell, 0.0, "",
                             "", 0, "", rank, "computed", ""])


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def dataset(tmp_path):
    """A training folder, its run with training_values.csv; returns (run, train_dir)."""
    train = tmp_path / "train"
    for cls, name, *_ in ROWS:
        (train / cls).mkdir(parents=True, exist_ok=True)
        (train / cls / name).write_bytes(b"img")
    run = tmp_path / "run"
    write_training_values(run, [(str(train / cls / name), label, cls, value, decision)
                                for cls, name, label, value, decision, _ in ROWS])
    return run, train


def truth_rows():
    """(class, file, mislabeled) of every truth entry."""
    rows = [(cls, name, mis) for cls, name, _, _, _, mis in ROWS if mis is not None]
    return rows + [EXTRA_TRUTH]


def assert_fixture_result(ev) -> None:
    assert_metrics(ev.overall, OVERALL)
    assert [c["class_name"] for c in ev.per_class] == ["cat", "dog"]
    assert [c["label"] for c in ev.per_class] == [0, 1]
    assert_metrics(ev.per_class[0], CAT)
    assert_metrics(ev.per_class[1], DOG)
    assert (ev.errors, ev.train_without_truth, ev.truth_without_train) == (1, 1, 1)


# --- detection_metrics ------------------------------------------------------------------------


def test_detection_metrics_hand_computed():
    values = np.array([-0.5, 0.1, -0.2, 0.3, 0.4, 0.2])
    mis = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    assert_metrics(detection_metrics(mis, values < 0, values), OVERALL)


def test_detection_metrics_partial_credit():
    # 3 mislabeled of 5; 2 discarded, both right: P = 1, R = 2/3, F1 = 2*2/(2*2+0+1) = 0.8.
    # Scores [0.9, 0.8, -0.1, 0.5, -0.3] for truth [1,1,1,0,0]: positives beat negatives in
    # 2 + 2 + 1 of 6 pairs; ranking + + (-) + (-): AP = (1 + 1 + 3/4) / 3.
    values = np.array([-0.9, -0.8, 0.1, -0.5, 0.3])
    mis = np.array([True, True, True, False, False])
    out = detection_metrics(mis, np.array([1, 1, 0, 0, 0], dtype=bool), values)
    assert_metrics(out, {"tp": 2, "fp": 0, "fn": 1, "tn": 2, "precision": 1.0,
                         "recall": 2 / 3, "f1": 0.8, "fraction_removed": 0.4,
                         "roc_auc": 5 / 6, "average_precision": 11 / 12})


def test_detection_metrics_nothing_discarded_gives_no_precision_and_zero_f1():
    out = detection_metrics([True, False, False], [False, False, False], [0.1, 0.2, 0.3])
    assert_metrics(out, {"precision": None, "recall": 0.0, "f1": 0.0, "fraction_removed": 0.0,
                         "roc_auc": 1.0, "average_precision": 1.0})


def test_detection_metrics_all_mislabeled_has_no_auc_but_perfect_ap():
    out = detection_metrics([True, True], [True, False], [-1.0, 1.0])
    assert_metrics(out, {"precision": 1.0, "recall": 0.5, "roc_auc": None,
                         "average_precision": 1.0})


def test_detection_metrics_no_mislabeled_counts_false_positives():
    out = detection_metrics([False, False, False], [True, False, False], [-1.0, 1.0, 2.0])
    assert_metrics(out, {"tp": 0, "fp": 1, "precision": 0.0, "recall": None, "f1": 0.0,
                         "roc_auc": None, "average_precision": None})


def test_detection_metrics_empty_input_is_all_undefined():
    out = detection_metrics(np.zeros(0, bool), np.zeros(0, bool), np.zeros(0))
    assert out["n"] == 0
    assert all(out[k] is None for k in ("precision", "recall", "f1", "fraction_removed",
                                        "roc_auc", "average_precision"))


def test_detection_metrics_rejects_bad_arrays():
    with pytest.raises(TvcleanError, match="lengths differ"):
        detection_metrics([True], [True, False], [0.0, 1.0])
    with pytest.raises(TvcleanError, match="values must be finite"):
        detection_metrics([True, False], [True, False], [np.nan, 1.0])
    with pytest.raises(TvcleanError, match="must be 1-D"):
        detection_metrics([[True]], [[True]], [[0.0]])


# --- truth formats ----------------------------------------------------------------------------


def test_csv_is_mislabeled_with_absolute_paths(dataset, tmp_path):
    run, train = dataset
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"],
                      [(str(train / c / f), "true" if m else "0") for c, f, m in truth_rows()])
    ev = evaluate(run, truth)
    assert_fixture_result(ev)
    assert ev.matched_by == {"path": 7, "class_file": 0, "file_name": 0}


def test_csv_relative_paths_are_relative_to_the_csv_folder(dataset, tmp_path):
    run, _ = dataset
    truth = write_csv(tmp_path / "labels" / "truth.csv", ["path", "is_mislabeled"],
                      [(f"../train/{c}/{f}", int(m)) for c, f, m in truth_rows()])
    ev = evaluate(run, truth)
    assert_fixture_result(ev)
    assert ev.matched_by["path"] == 7


def test_csv_true_label_by_name_and_by_index(dataset, tmp_path):
    run, train = dataset
    # Mislabeled cats are truly dogs (given once by name, once by index); d3 is truly a cat.
    true_labels = {"c1.jpg": "dog", "c2.jpg": "1", "c3.jpg": "cat", "c4.jpg": "0",
                   "d1.jpg": "dog", "d2.jpg": "1", "d3.jpg": "cat", "zz.jpg": "dog"}
    truth = write_csv(tmp_path / "truth.csv", ["path", "true_label"],
                      [(str(train / c / f), true_labels[f]) for c, f, _ in truth_rows()])
    assert_fixture_result(evaluate(run, truth))


def test_true_label_class_names_win_over_indices_and_unknown_names_are_mislabeled(tmp_path):
    run = tmp_path / "run"
    # Class 0 is named "1": a true label "1" means that class by name, so a.jpg is correct.
    write_training_values(run, [(str(tmp_path / "1" / "a.jpg"), 0, "1", 0.5, "clean"),
                                (str(tmp_path / "1" / "b.jpg"), 0, "1", -0.5, "dirty"),
                                (str(tmp_path / "0" / "c.jpg"), 1, "0", 0.2, "clean")])
    truth = write_csv(tmp_path / "truth.csv", ["path", "true_label"],
                      [("1/a.jpg", "1"), ("1/b.jpg", "horse"), ("0/c.jpg", "0")])
    ev = evaluate(run, truth)
    assert_metrics(ev.overall, {"n": 3, "mislabeled": 1, "tp": 1, "fp": 0, "fn": 0, "tn": 2,
                                "precision": 1.0, "recall": 1.0})


def test_evaluation_folder_layout_matches_by_class_and_file(dataset, tmp_path):
    run, _ = dataset
    folder = tmp_path / "eval"
    for cls, name, mis in truth_rows():
        part = folder / cls / ("dirty" if mis else "clean")
        part.mkdir(parents=True, exist_ok=True)
        (part / name).write_bytes(b"img")
    (folder / "cat" / "clean" / ".DS_Store").write_bytes(b"")  # hidden files are not entries
    ev = evaluate(run, folder)
    assert_fixture_result(ev)
    assert ev.matched_by == {"path": 0, "class_file": 7, "file_name": 0}


# --- path matching fallbacks ------------------------------------------------------------------


def test_resolved_paths_match_through_symlinks(dataset, tmp_path):
    run, train = dataset
    link = tmp_path / "link"
    link.symlink_to(train, target_is_directory=True)
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"],
                      [(str(link / c / f), int(m)) for c, f, m in truth_rows()])
    ev = evaluate(run, truth)
    assert_fixture_result(ev)
    assert ev.matched_by == {"path": 7, "class_file": 0, "file_name": 0}


def test_unique_file_names_match_and_ambiguous_ones_do_not(tmp_path):
    run = tmp_path / "run"
    write_training_values(run, [(str(tmp_path / "t" / "cat" / "x.jpg"), 0, "cat", -1.0, "dirty"),
                                (str(tmp_path / "t" / "dog" / "x.jpg"), 1, "dog", 1.0, "clean"),
                                (str(tmp_path / "t" / "dog" / "y.jpg"), 1, "dog", 2.0, "clean")])
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"],
                      [("elsewhere/x.jpg", 1), ("elsewhere/y.jpg", 0)])
    ev = evaluate(run, truth)
    assert ev.matched_by == {"path": 0, "class_file": 0, "file_name": 1}
    assert (ev.overall["n"], ev.train_without_truth, ev.truth_without_train) == (1, 2, 1)


def test_class_file_key_disambiguates_repeated_file_names(tmp_path):
    run = tmp_path / "run"
    write_training_values(run, [(str(tmp_path / "t" / "cat" / "x.jpg"), 0, "cat", -1.0, "dirty"),
                                (str(tmp_path / "t" / "dog" / "x.jpg"), 1, "dog", 1.0, "clean")])
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"],
                      [("copy/cat/x.jpg", 1), ("copy/dog/x.jpg", 0)])
    ev = evaluate(run, truth)
    assert ev.matched_by == {"path": 0, "class_file": 2, "file_name": 0}
    assert_metrics(ev.overall, {"tp": 1, "tn": 1, "fp": 0, "fn": 0})


# --- errors -----------------------------------------------------------------------------------


def test_missing_training_values_says_to_run_filter(tmp_path):
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"], [("a.jpg", 1)])
    with pytest.raises(TvcleanError, match=r"training_values.csv not found: run `tvclean filter`"):
        evaluate(tmp_path / "run", truth)


def test_truth_csv_without_verdict_column(dataset, tmp_path):
    run, _ = dataset
    truth = write_csv(tmp_path / "truth.csv", ["path", "label"], [("a.jpg", 1)])
    with pytest.raises(TvcleanError, match=r"truth.csv: needs an is_mislabeled or a true_label"):
        evaluate(run, truth)


def test_nothing_matches(dataset, tmp_path):
    run, _ = dataset
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"], [("other/q.jpg", 1)])
    with pytest.raises(TvcleanError, match=r"no entry of .*truth.csv matches a training image"):
        evaluate(run, truth)


@pytest.mark.parametrize("rows, message", [
    ([("a.jpg", "maybe")], r"line 2: is_mislabeled must be 0/1/true/false, got 'maybe'"),
    ([("a.jpg", "1"), ("./a.jpg", "0")], r"line 3: './a.jpg' already given on line 2"),
    ([("", "1")], r"line 2: empty path"),
])
def test_bad_truth_rows(dataset, tmp_path, rows, message):
    run, _ = dataset
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"], rows)
    with pytest.raises(TvcleanError, match=message):
        evaluate(run, truth)


def test_truth_that_is_neither_csv_nor_layout(dataset, tmp_path):
    run, _ = dataset
    (tmp_path / "plain" / "cat").mkdir(parents=True)
    with pytest.raises(TvcleanError, match=r"expected <class>/clean and <class>/dirty folders"):
        evaluate(run, tmp_path / "plain")
    with pytest.raises(TvcleanError, match=r"--truth .*nowhere: no such file or folder"):
        evaluate(run, tmp_path / "nowhere")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(TvcleanError, match=r"binary.csv: not a readable CSV file"):
        evaluate(run, tmp_path / "binary.csv")


def test_corrupt_training_values(tmp_path):
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"], [("a.jpg", 1)])
    run = tmp_path / "run"
    write_training_values(run, [(str(tmp_path / "a.jpg"), 0, "cat", "nan", "clean")])
    with pytest.raises(TvcleanError, match=r"line 2: score 'nan' is not a finite number"):
        evaluate(run, truth)
    write_training_values(run, [(str(tmp_path / "a.jpg"), 0, "cat", 1.0, "maybe")])
    with pytest.raises(TvcleanError, match=r"line 2: decision 'maybe' is not one of clean, dirty, "
                                           r"relabel, outlier, error"):
        evaluate(run, truth)
    write_csv(run / "training_values.csv", ["path", "label"], [("a.jpg", 0)])
    with pytest.raises(TvcleanError, match=r"missing columns abs_path, decision, .*; re-run "
                                           r"`tvclean filter`"):
        evaluate(run, truth)


# --- the result object and the table -----------------------------------------------------------


def test_to_dict_is_json_ready(dataset, tmp_path):
    run, train = dataset
    truth = write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"],
                      [(str(train / c / f), int(m)) for c, f, m in truth_rows()])
    data = json.loads(json.dumps(evaluate(run, truth).to_dict()))
    assert data["overall"]["roc_auc"] == pytest.approx(0.875)
    assert data["per_class"][1]["roc_auc"] is None
    assert data["truth"] == str(truth)


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def truth_csv(dataset, tmp_path):
    _, train = dataset
    return write_csv(tmp_path / "truth.csv", ["path", "is_mislabeled"],
                     [(str(train / c / f), int(m)) for c, f, m in truth_rows()])


def table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] in ("class", "cat", "dog", "overall"):
            rows[cells[0]] = cells[1:]
    return rows


def test_cli_prints_table(dataset, truth_csv):
    run, _ = dataset
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--truth", str(truth_csv)])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert rows["class"] == ["images", "mislabeled", "removed", "removed%", "tp", "fp", "fn",
                             "tn", "precision", "recall", "F1", "ROC-AUC", "AP"]
    assert rows["overall"] == ["6", "2", "2", "33.3%", "1", "1", "1", "3",
                               "0.500", "0.500", "0.500", "0.875", "0.833"]
    assert rows["cat"] == ["4", "2", "2", "50.0%", "1", "1", "1", "1",
                           "0.500", "0.500", "0.500", "0.750", "0.833"]
    assert rows["dog"] == ["2", "0", "0", "0.0%", "0", "0", "0", "2",
                           "n/a", "n/a", "n/a", "n/a", "n/a"]
    assert "1 without truth, 1 unreadable (excluded); 1 truth entries matched no training image" \
        in result.stdout
    assert "matched by absolute path 7, <class>/<file> 0, unique file name 0" in result.stdout


def test_cli_json(dataset, truth_csv):
    run, _ = dataset
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--truth", str(truth_csv), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert_metrics(data["overall"], OVERALL)
    assert_metrics(data["per_class"][0], CAT)
    assert_metrics(data["per_class"][1], DOG)
    assert data["errors"] == 1 and data["truth_without_train"] == 1


def test_cli_errors_are_one_line(tmp_path, truth_csv):
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "empty_run"),
                                      "--truth", str(truth_csv)])
    assert result.exit_code == 1
    assert "run `tvclean filter`" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_requires_truth(dataset):
    run, _ = dataset
    result = CliRunner().invoke(cli, ["evaluate", str(run)])
    assert result.exit_code == 2
    assert "Missing option '--truth'" in result.output


def test_format_evaluation_matches_cli(dataset, truth_csv):
    run, _ = dataset
    text = format_evaluation(evaluate(run, truth_csv))
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--truth", str(truth_csv)])
    assert result.stdout.rstrip("\n") == text
    assert os.path.basename(str(truth_csv)) in text.splitlines()[0]
