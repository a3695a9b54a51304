"""Discovering images from class folders and CSV manifests, and the errors a user sees."""

from __future__ import annotations

import os

import numpy as np
import pytest
from imagefiles import write_digit_tree, write_photo

from tvcore.errors import TvcleanError
from tvcore.io.dataset import discover


@pytest.fixture
def tree(tmp_path):
    """root/train/<class>/ and root/val/<class>/ with nested, hidden and non-image files."""
    write_digit_tree(tmp_path / "train", classes=(3, 1, 2), per_class=3)
    write_digit_tree(tmp_path / "val", classes=(1, 2, 3), per_class=2, offset=10)
    nested = tmp_path / "train" / "digit2" / "more" / "deeper"
    write_photo(nested / "photo.jpg", size=(64, 48))
    (tmp_path / "train" / "digit1" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "train" / "digit1" / "notes.txt").write_text("not an image")
    hidden = tmp_path / "train" / "digit3" / ".thumbnails"
    hidden.mkdir()
    write_photo(hidden / "thumb.jpg", size=(16, 16))
    (tmp_path / "train" / "README.md").write_text("outside any class")
    (tmp_path / "train" / ".hidden_class").mkdir()
    return tmp_path


def test_class_folders_sorted_with_nested_and_skipped_files(tree):
    data = discover(tree / "train", tree / "val")
    assert data.classes == ["digit1", "digit2", "digit3"]
    train = data.train
    assert len(train) == 10  # 3 per class + the nested photo
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert train.paths[3] == str(tree / "train" / "digit2" / "000.png")
    assert train.paths[6] == str(tree / "train" / "digit2" / "more" / "deeper" / "photo.jpg")
    assert all(os.path.isabs(p) for p in train.paths)
    assert dict(train.skipped) == {"hidden": 3, "not an image": 1, "outside class folders": 1}
    assert data.val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert dict(data.val.skipped) == {}


def test_one_root_holding_train_and_val(tree):
    data = discover(tree)
    assert data.train.source == tree / "train" and data.val.source == tree / "val"
    assert len(data.train) == 10 and len(data.val) == 6


def test_manifests_per_split_relative_to_the_manifest(tree):
    (tree / "lists").mkdir()
    (tree / "lists" / "train.csv").write_text(
        "\ufeffpath,label\n../train/digit3/000.png,three\n../train/digit1/000.png,one\n"
        "../train/digit1/notes.txt,one\n../train/digit1/001.png,one\n", encoding="utf-8")
    (tree / "lists" / "val.csv").write_text(
        f"path,label\n{tree / 'val' / 'digit1' / '000.png'},one\n../val/digit3/000.png,three\n")
    data = discover(tree / "lists" / "train.csv", tree / "lists" / "val.csv")
    assert data.classes == ["one", "three"]
    assert data.train.paths == [str(tree / "train" / "digit1" / "000.png"),
                                str(tree / "train" / "digit1" / "001.png"),
                                str(tree / "train" / "digit3" / "000.png")]
    assert data.train.labels.tolist() == [0, 0, 1]
    assert dict(data.train.skipped) == {"not an image": 1}
    assert data.val.paths[0] == str(tree / "val" / "digit1" / "000.png")


def test_one_manifest_with_a_split_column(tree):
    (tree / "all.csv").write_text(
        "path,label,split\ntrain/digit1/000.png,a,train\nval/digit1/000.png,a,val\n"
        "train/digit2/000.png,b,train\nval/digit2/000.png,b,val\nval/digit2/001.png,b,val\n")
    data = discover(tree / "all.csv")
    assert data.classes == ["a", "b"]
    assert len(data.train) == 2 and len(data.val) == 3
    assert np.array_equal(data.val.labels, [0, 1, 1])


@pytest.mark.parametrize("change, message", [
    (lambda t: (t / "val" / "digit3" / "000.png").unlink() or (t / "val" / "digit3" / "001.png").unlink(),
     r"class 'digit3' of the val split has no images: .*val/digit3"),
    (lambda t: write_digit_tree(t / "val", classes=(7,), per_class=1),
     r"class 'digit7' is in the val split but not in the train split"),
    (lambda t: write_digit_tree(t / "train", classes=(8,), per_class=1),
     r"class 'digit8' is in the train split but not in the val split"),
])
def test_class_errors_name_the_class(tree, change, message):
    change(tree)
    with pytest.raises(TvcleanError, match=message):
        discover(tree / "train", tree / "val")


def test_split_errors(tmp_path, tree):
    with pytest.raises(TvcleanError, match="training data not found: .*nowhere"):
        discover(tmp_path / "nowhere", tree / "val")
    with pytest.raises(TvcleanError, match="validation data not found"):
        discover(tree / "train", tmp_path / "nowhere")
    with pytest.raises(TvcleanError, match="no validation data: give VAL_DIR"):
        discover(tree / "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TvcleanError, match="the val split has no class folders: .*empty"):
        discover(tree / "train", tmp_path / "empty")
    (tmp_path / "list.txt").write_text("x")
    with pytest.raises(TvcleanError, match="must be a folder or a .csv manifest: .*list.txt"):
        discover(tree / "train", tmp_path / "list.txt")


def test_manifest_errors_name_file_and_line(tmp_path, tree):
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,class\na.png,x\n")
    with pytest.raises(TvcleanError, match=r"h.csv: needs a header with columns path,label, found file, class"):
        discover(bad_header, tree / "val")
    empty_label = tmp_path / "e.csv"
    empty_label.write_text("path,label\na.png,x\nb.png,\n")
    with pytest.raises(TvcleanError, match=r"e.csv, line 3: empty path or label"):
        discover(empty_label, tree / "val")
    bad_split = tmp_path / "s.csv"
    bad_split.write_text("path,label,split\na.png,x,test\n")
    with pytest.raises(TvcleanError, match=r"s.csv, line 2: split must be train or val, got 'test'"):
        discover(bad_split)
    only_train = tmp_path / "t.csv"
    only_train.write_text("path,label,split\na.png,x,train\n")
    with pytest.raises(TvcleanError, match=r"the val split has no images: .*t.csv"):
        discover(only_train)
