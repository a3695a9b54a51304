"""Data safety, tried as a careless or hostile user would: tvclean never deletes, overwrites or
writes outside what it owns, and every fault ends in one clear line, never a traceback.

Each case checks the message, that the input tree is byte-for-byte unchanged, and that nothing
appeared outside the run directory. The full disk is a real tmpfs and the read-only run a
read-only bind mount where this machine lets the tests mount them (skipped otherwise);
"permission denied" runs the command as the user nobody.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from imagefiles import write_digit_tree
from runfixtures import clustered_features, make_feature_run

from tvclean.main import cli
from tvcore.rundir import RunDir

TVCLEAN = [sys.executable, "-m", "tvclean"]
FAST = ["--episodes", "4", "--threads", "1"]
STAGE_OPTIONS = {"estimate": FAST, "filter": [], "report": ["--thumbnails", "1"]}


# --- helpers -----------------------------------------------------------------------------------

def digest(folder: Path) -> dict[str, str]:
    """Every entry below folder: file bytes, link targets, modes (nothing may change)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + oct(path.stat().st_mode)
        else:
            found[rel] = "dir" + oct(path.stat().st_mode)
    return found


def entries(folder: Path, skip: Path | None = None) -> set[str]:
    """Paths below folder, leaving out those below `skip` (the run directory)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if skip is None or not (p == skip or skip in p.parents)}


def cli_fails(*args, match: str, env=None) -> str:
    """Run `tvclean ARGS` in this process; it must fail with exactly one line matching."""
    result = CliRunner(env=env).invoke(cli, [str(a) for a in args])
    output = result.output.strip()
    assert result.exit_code != 0, output
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert re_search(match, output), output
    return output


def re_search(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


def run_ok(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def run_process(*args, user=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*TVCLEAN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, user=user, env={**os.environ, **(env or {})})


@pytest.fixture
def data(tmp_path):
    """data/train, data/val: digit images in class folders (distinct images in each split)."""
    write_digit_tree(tmp_path / "data" / "train", classes=(0, 1, 7), per_class=8)
    write_digit_tree(tmp_path / "data" / "val", classes=(0, 1, 7), per_class=3, offset=30)
    return tmp_path / "data"


@pytest.fixture
def feature_run(tmp_path):
    rng = np.random.default_rng(0)
    x, y, _ = clustered_features(rng, 20, 3, 8, flip=0.2)
    vx, vy, _ = clustered_features(np.random.default_rng(0), 6, 3, 8)
    return make_feature_run(tmp_path / "run", x, y, vx, vy, data_root=tmp_path / "images")


def _mounted(kind: str):
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip(f"mounting a {kind} needs root on Linux")


@contextmanager
def tmpfs(path: Path, size: str):
    _mounted("tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- 1. a run directory above (or inside) the input ---------------------------------------------

def test_a_run_directory_above_the_input_is_refused_in_every_stage(tmp_path):
    mine = tmp_path / "mydata"
    write_digit_tree(mine / "clean", classes=(0, 1), per_class=6)
    write_digit_tree(mine / "val", classes=(0, 1), per_class=2, offset=30)
    before = digest(mine)
    for command in ("clean", "extract", "finetune"):
        extra = ["--baseline", "x.onnx"] if command == "finetune" else []
        cli_fails(command, mine / "clean", mine / "val", "-o", mine, *extra,
                  match=r"the input folder .*mydata/clean is inside the run directory")
    cli_fails("demo", "-o", mine / "clean", match="not empty and is not a tvclean demo folder")
    assert digest(mine) == before


def test_stages_on_a_run_whose_inputs_lie_inside_it_are_refused(tmp_path):
    """A run that records its images inside itself (made with an older tvclean, say)."""
    rng = np.random.default_rng(0)
    x, y, _ = clustered_features(rng, 12, 2, 6)
    run = make_feature_run(tmp_path / "run", x, y, x[:6], y[:6],
                           data_root=tmp_path / "run" / "images")
    before = digest(run.root / "images")
    for stage in ("estimate", "filter", "report"):
        cli_fails(stage, run.root, *STAGE_OPTIONS[stage],
                  match=r"input folder .*images/train is inside the run directory")
    assert digest(run.root / "images") == before
    assert not (run.root / "clean").exists() and not (run.root / "estimates").exists()


def test_extract_into_an_input_folder_is_refused(data):
    before = digest(data)
    cli_fails("extract", data / "train", data / "val", "-o", data / "train" / "run",
              match=r"run directory .*train/run is inside the input folder")
    assert digest(data) == before and not (data / "train" / "run").exists()


def test_an_input_inside_another_run_is_refused(data, tmp_path):
    run_ok("clean", data / "train", data / "val", "-o", tmp_path / "first", *FAST, "--no-report")
    cli_fails("clean", tmp_path / "first" / "clean", data / "val", "-o", tmp_path / "second",
              match=r"lies inside the tvclean run directory .*first")
    assert not (tmp_path / "second").exists()


# --- 2. files of the user's in -o DIR ------------------------------------------------------------

def test_a_folder_of_the_users_is_never_written(data, tmp_path, feature_run):
    folder = tmp_path / "mine"
    (folder / "clean" / "mine").mkdir(parents=True)
    (folder / "clean" / "mine" / "thesis.txt").write_text("my thesis")
    (folder / "training_values.csv").write_text("path,mine\n")
    (folder / "config.toml").write_text("[estimate]\nlr = 1.0\n[mine]\nkeep = true\n")
    (folder / "report").mkdir()
    (folder / "report" / "index.html").write_text("<p>my page</p>")
    before = digest(folder)
    shutil.copytree(feature_run.features, folder / "features")  # looks like a run, is not one
    before = digest(folder)
    refused = r"mine is not empty and is not a tvclean run directory"
    cli_fails("clean", data / "train", data / "val", "-o", folder, match=refused)
    cli_fails("extract", data / "train", data / "val", "-o", folder, match=refused)
    for stage in ("estimate", "filter", "report"):
        cli_fails(stage, folder, *STAGE_OPTIONS[stage], match=refused + "|run `tvclean estimate`")
    cli_fails("finetune", data / "train", data / "val", "-o", folder, "--baseline", "m.onnx",
              match=refused)
    assert digest(folder) == before


def test_an_empty_run_name_is_refused(data):
    cli_fails("clean", data / "train", data / "val", "-o", "", match=r"-o/--run must name a "
                                                                     r"directory")
    cli_fails("extract", data / "train", data / "val", "-o", " ", match="must name a directory")
    cli_fails("demo", "-o", "", match="-o/--out must name a folder")


def test_files_of_the_users_inside_a_run_survive_every_filter(data, tmp_path):
    run = tmp_path / "run"
    run_ok("clean", data / "train", data / "val", "-o", run, *FAST, "--no-report")
    (run / "clean" / "mine").mkdir()
    (run / "clean" / "mine" / "thesis.txt").write_text("my thesis")
    (run / "dirty" / "list.txt").write_text("my list")
    (run / "notes.md").write_text("my notes")
    for mode in ("copy", "symlink", "none", "hardlink", "copy"):
        run_ok("filter", run, "--output", mode)
        assert (run / "clean" / "mine" / "thesis.txt").read_text() == "my thesis"
        assert (run / "dirty" / "list.txt").read_text() == "my list"
        assert (run / "notes.md").read_text() == "my notes"
        frame = RunDir(run).resolve()  # the run's settings
        placed = {d: sorted(p for p in (run / d).rglob("*.png")) for d in ("clean", "dirty")}
        rows = [line.split(",") for line in (run / "training_values.csv").read_text()
                .splitlines()[1:]]
        counts = {d: sum(1 for r in rows if r[4] == d) for d in ("clean", "dirty")}
        expected = counts if mode != "none" else {"clean": 0, "dirty": 0}
        assert {d: len(p) for d, p in placed.items()} == expected, mode
        assert frame.filter.output == mode


def test_a_users_file_with_an_images_name_is_never_replaced(data, tmp_path):
    run = tmp_path / "run"
    run_ok("clean", data / "train", data / "val", "-o", run, *FAST, "--no-report")
    placed = sorted((run / "clean").rglob("*.png"))[0]
    placed.unlink()
    placed.write_text("the user's own file")  # where tvclean put (and will put) an image
    (run / "clean" / "extra.txt").write_text("mine")
    cli_fails("filter", run, match=r"was not created by tvclean but has the name of an image")
    assert placed.read_text() == "the user's own file"
    assert (run / "clean" / "extra.txt").read_text() == "mine"


# --- 3. class names are untrusted ----------------------------------------------------------------

@pytest.mark.parametrize("label, why", [
    ("../../../x", "a path separator"), ("/abs/path", "a path separator"),
    ("..", "a relative path"), ("a\\b", "a path separator"), ("ca\tt", "control characters"),
    (".hidden", "starts with a dot"), ("C:x", "an absolute path"),
])
def test_class_names_from_a_manifest_cannot_leave_the_run(tmp_path, label, why):
    images = tmp_path / "images"
    write_digit_tree(images, classes=(0, 1), per_class=4)
    rows = [("digit0/000.png", "zero"), ("digit0/001.png", label), ("digit1/000.png", "one")]
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n" + "".join(f'{p},"{lab}"\n' for p, lab in rows))
    val = tmp_path / "val.csv"
    val.write_text("path,label\ndigit0/002.png,zero\ndigit1/002.png,one\n")
    (tmp_path / "val.csv").rename(images / "val.csv")
    manifest.rename(images / "train.csv")
    outside = entries(tmp_path)
    cli_fails("clean", images / "train.csv", images / "val.csv", "-o", tmp_path / "run",
              match=rf"train.csv, line 3: label .* {why}")
    assert entries(tmp_path) == outside  # nothing written anywhere, the run included


def test_class_names_differing_only_in_case_are_refused(tmp_path):
    images = tmp_path / "images"
    write_digit_tree(images, classes=(0, 1), per_class=4)
    (images / "train.csv").write_text("path,label\ndigit0/000.png,Cat\ndigit1/000.png,cat\n")
    (images / "val.csv").write_text("path,label\ndigit0/002.png,Cat\ndigit1/002.png,cat\n")
    cli_fails("extract", images / "train.csv", images / "val.csv", "-o", tmp_path / "run",
              match=r"classes 'Cat', 'cat' .* differ only in case")


# --- 5. divergence --------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", ["1e6", "1e30", "1e300"])
def test_a_diverging_learning_rate_stops_naming_it_and_the_episode(feature_run, lr):
    shown = re.escape(f"{float(lr):g}")
    cli_fails("estimate", feature_run.root, "--lr", lr, *FAST,
              match=rf"diverged at episode \d+ \(--lr {shown}\)")
    assert not (feature_run.estimates / "meta.json").exists()
    run_ok("estimate", feature_run.root, "--lr", "1.0", *FAST)  # a sane one then works


# --- 6. one writer at a time ----------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from tvcore.rundir import RunDir
    with RunDir(sys.argv[1]).writing("filter"):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_second_writer_is_told_which_process_holds_the_run(feature_run):
    run_ok("estimate", feature_run.root, *FAST)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(feature_run.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for stage in ("filter", "estimate"):
            cli_fails(stage, feature_run.root, *STAGE_OPTIONS[stage],
                      match=rf"run directory .* is in use by PID {holder.pid} \(tvclean filter")
        assert not (feature_run.root / "training_values.csv").exists()
    finally:
        holder.kill()  # like kill -9: the kernel drops the lock with the process
        holder.wait()
    run_ok("filter", feature_run.root, "--output", "none")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(feature_run.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cli_fails("report", feature_run.root, match=rf"is in use by PID {holder.pid}")
        import tvcore
        assert len(tvcore.load_training_values(feature_run.root)) == 60  # readers still read
    finally:
        holder.kill()
        holder.wait()


def test_concurrent_filters_leave_one_consistent_split(tmp_path, data):
    run = tmp_path / "run"
    run_ok("clean", data / "train", data / "val", "-o", run, *FAST, "--no-report")
    for _ in range(3):
        procs = [subprocess.Popen([*TVCLEAN, "filter", str(run), "--threshold", str(t)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for t in (-0.5, 0.0, 0.5)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        assert any(code == 0 for code, _ in results)
        for code, err in results:
            assert code == 0 or ("is in use by" in err and "Traceback" not in err), err
        rows = (run / "training_values.csv").read_text().splitlines()[1:]
        dirty = sum(1 for r in rows if r.split(",")[4] == "dirty")
        assert len(list((run / "dirty").rglob("*.png"))) == dirty
        assert len(list((run / "clean").rglob("*.png"))) == len(rows) - dirty


# --- 7. a full disk, a read-only run, no permission ---------------------------------------------

def test_a_full_disk_is_one_line_and_a_rerun_with_space_completes_identically(data, tmp_path):
    reference = tmp_path / "reference"
    run_ok("clean", data / "train", data / "val", "-o", reference, *FAST, "--no-report")
    before = digest(data)
    with tmpfs(tmp_path / "disk", "100k") as disk:
        done = run_process("clean", data / "train", data / "val", "-o", disk / "run", *FAST,
                           "--no-report")
        assert done.returncode == 1, done.stderr  # not killed by a signal (SIGBUS: -7)
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("Error: ") and "No space left on device" in lines[-1]
        assert "Traceback" not in done.stderr
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        again = run_process("clean", data / "train", data / "val", "-o", disk / "run", *FAST,
                            "--no-report")
        assert again.returncode == 0, again.stderr
        assert_same_table(disk / "run" / "training_values.csv",
                          reference / "training_values.csv")
    assert digest(data) == before


def assert_same_table(path: Path, reference: Path) -> None:
    """Every column identical but the posterior score, which must agree to 1e-5 relative: in
    fresh-clone CI runs on an AVX2-only machine the scores differed by up to 1.1e-7 relative
    between the two processes, the Monte-Carlo values and decisions identical (not yet
    explained; see the closing note)."""
    import pandas as pd

    got, want = pd.read_csv(path), pd.read_csv(reference)
    others = [c for c in want.columns if c != "score"]
    pd.testing.assert_frame_equal(got[others], want[others], check_exact=True)
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("stage", ["estimate", "filter"])
def test_each_stage_on_a_full_disk_says_so_in_one_line(feature_run, tmp_path, stage):
    if stage == "filter":
        run_ok("estimate", feature_run.root, *FAST)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        copy = disk / "run"
        try:
            shutil.copytree(feature_run.root, copy, symlinks=True)
        except OSError:
            pytest.skip("the run does not fit the small tmpfs")
        filler = disk / "filler"
        try:  # fill the rest of the disk
            with open(filler, "wb") as fh:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
        except OSError:
            pass
        done = run_process(stage, copy, *STAGE_OPTIONS[stage])
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "No space left on device" in done.stderr.strip().splitlines()[-1]
        filler.unlink()
        again = run_process(stage, copy, *STAGE_OPTIONS[stage])
        assert again.returncode == 0, again.stderr


def test_a_read_only_run_directory_is_one_line(feature_run, tmp_path):
    _mounted("read-only bind mount")
    run_ok("estimate", feature_run.root, *FAST)
    run_ok("filter", feature_run.root, "--output", "none")
    view = tmp_path / "view"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(feature_run.root), str(view)]).returncode or \
            subprocess.run(["mount", "-o", "remount,ro,bind", str(view)]).returncode:
        pytest.skip("cannot make a read-only bind mount here")
    try:
        for stage in ("filter", "report", "estimate"):
            cli_fails(stage, view, *STAGE_OPTIONS[stage], match=r"Read-only file system")
        import tvcore
        assert len(tvcore.load_training_values(view)) == 60  # reading still works
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_permission_denied_is_one_line(data, tmp_path):
    """Run as root without the capability to ignore file permissions (setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop the permission override")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o555)
    before = digest(data)
    done = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         "--inh-caps=-dac_override,-dac_read_search", "--", *TVCLEAN, "extract",
         str(data / "train"), str(data / "val"), "-o", str(tmp_path / "locked" / "run")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "Permission denied" in done.stderr.strip().splitlines()[-1]
    assert digest(data) == before and not (tmp_path / "locked" / "run").exists()


# --- 8. what used to be tracebacks ----------------------------------------------------------------

def test_a_corrupt_config_in_a_run_is_one_line(feature_run):
    feature_run.config_path.write_text("this is [not toml")
    cli_fails("estimate", feature_run.root, *FAST, match=r"config.toml: not valid TOML")


def test_a_manifest_that_is_not_utf8_is_one_line(tmp_path):
    write_digit_tree(tmp_path / "images", classes=(0, 1), per_class=3)
    (tmp_path / "images" / "train.csv").write_bytes(b"path,label\n\xff\xfe.png,\xe9t\xe9\n")
    (tmp_path / "images" / "val.csv").write_text("path,label\ndigit0/000.png,a\n")
    cli_fails("extract", tmp_path / "images" / "train.csv", tmp_path / "images" / "val.csv",
              "-o", tmp_path / "run", match=r"train.csv: not UTF-8 text")


def test_a_negative_seed_is_one_line(feature_run):
    cli_fails("estimate", feature_run.root, "--seed", "-1", match=r"estimate.seed .*>= 0")


def test_a_model_cache_that_is_a_file_is_one_line(data, tmp_path):
    (tmp_path / "cachefile").write_text("not a folder")
    cli_fails("models", "list", env={"TVCLEAN_CACHE": str(tmp_path / "cachefile")},
              match=r"TVCLEAN_CACHE .*cachefile is a file")


def test_clean_as_a_symlink_or_dirty_as_a_file_is_one_line_and_left_alone(data, tmp_path):
    run = tmp_path / "run"
    run_ok("clean", data / "train", data / "val", "-o", run, *FAST, "--no-report")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    shutil.rmtree(run / "clean")
    (run / "clean").symlink_to(elsewhere)
    cli_fails("filter", run, match=r"run/clean is a symbolic link that tvclean did not create")
    assert (run / "clean").is_symlink() and digest(elsewhere) == {"precious.txt": digest(
        elsewhere)["precious.txt"]}
    (run / "clean").unlink()
    shutil.rmtree(run / "dirty")
    (run / "dirty").write_text("a file")
    cli_fails("filter", run, match=r"run/dirty is a file that tvclean did not create")
    assert (run / "dirty").read_text() == "a file"


def test_a_truncated_checkpoint_is_set_aside_and_the_values_stay_exact(feature_run, tmp_path):
    reference = make_feature_run(tmp_path / "reference", *_arrays(feature_run))
    run_ok("estimate", reference.root, *FAST)
    run_ok("estimate", feature_run.root, "--episodes", "2", "--threads", "1")
    state = feature_run.estimates / "checkpoint" / "state.npz"
    state.write_bytes(state.read_bytes()[:100])
    run_ok("estimate", feature_run.root, *FAST)
    assert "ignoring the unreadable checkpoint" in feature_run.log_path.read_text()
    assert (feature_run.estimates / "mean.npy").read_bytes() == \
        (reference.estimates / "mean.npy").read_bytes()


def _arrays(run):
    from tvcore.rundir import load_features
    f = load_features(run)
    return (np.asarray(f.train.features), f.train.labels, np.asarray(f.val.features),
            f.val.labels)


# --- 9. meaningless input -------------------------------------------------------------------------

def test_one_class_only_is_refused(tmp_path):
    write_digit_tree(tmp_path / "train", classes=(3,), per_class=5)
    write_digit_tree(tmp_path / "val", classes=(3,), per_class=2, offset=20)
    cli_fails("clean", tmp_path / "train", tmp_path / "val", "-o", tmp_path / "run",
              match=r"one class only \('digit3'\)")
    assert not (tmp_path / "run").exists()


def test_train_equal_to_val_is_refused(data, tmp_path):
    cli_fails("clean", data / "train", data / "train", "-o", tmp_path / "run",
              match=r"training and validation data are the same folder")


def test_validation_images_that_are_training_images_are_refused(data, tmp_path):
    shutil.copy(data / "train" / "digit1" / "003.png", data / "val" / "digit1" / "copy.png")
    shutil.copy(data / "train" / "digit7" / "000.png", data / "val" / "digit7" / "copy.png")
    cli_fails("clean", data / "train", data / "val", "-o", tmp_path / "run",
              match=r"2 training image\(s\) are also validation images .*identical bytes")
    manifest = tmp_path / "both.csv"
    manifest.write_text(f"path,label,split\n{data}/train/digit0/000.png,a,train\n"
                        f"{data}/train/digit1/000.png,b,train\n"
                        f"{data}/train/digit0/000.png,a,val\n{data}/val/digit1/000.png,b,val\n")
    cli_fails("extract", manifest, "-o", tmp_path / "run",
              match=r"1 training image\(s\) are also validation images")


def test_duplicate_manifest_rows_are_refused_naming_the_row(data, tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text(f"path,label\n{data}/train/digit0/000.png,a\n"
                        f"{data}/train/digit1/000.png,b\n{data}/train/digit0/000.png,a\n")
    cli_fails("extract", manifest, data / "val", "-o", tmp_path / "run",
              match=r"train.csv, line 4: .*digit0/000.png is listed twice \(also on line 2\)")


def test_symlinked_folders_are_followed_once_and_loops_are_counted(data, tmp_path):
    extra = tmp_path / "extra"
    write_digit_tree(extra, classes=(7,), per_class=4, offset=50)
    (data / "train" / "digit7" / "more").symlink_to(extra / "digit7")
    (data / "train" / "digit7" / "loop").symlink_to(data / "train" / "digit7")
    out = run_ok("extract", data / "train", data / "val", "-o", tmp_path / "run",
                 "--threads", "1")
    assert "train: 28 images" in out  # 24 + 4 through the link
    assert "1 symbolic-link loop" in out


# --- 10. regressions of the hostile-user sweep ---------------------------------------------------

def test_non_utf8_and_line_break_file_names_are_skipped_and_named(data, tmp_path):
    folder = data / "train" / "digit0"
    os.rename(folder / "000.png", os.fsencode(folder) + b"/\xff.png")
    (folder / "001.png").rename(folder / "cr\r.png")
    before = digest(data)
    out = run_ok("clean", data / "train", data / "val", "-o", tmp_path / "run", *FAST,
                 "--no-report")
    assert "train: 22 images" in out, out
    assert "1 line break in the name, 1 name not valid UTF-8" in out, out
    run_ok("estimate", tmp_path / "run", *FAST)  # the run's own index reads back
    assert digest(data) == before


def test_symlinked_artifacts_are_refused_and_their_targets_untouched(data, tmp_path):
    run = tmp_path / "run"
    run_ok("clean", data / "train", data / "val", "-o", run, *FAST, "--no-report")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "www").mkdir()
    (mine / "www" / "index.html").write_text("<p>my site</p>")
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(mine / "notes.txt")
    cli_fails("filter", run, match=r"log.txt is a symbolic link")
    (run / "log.txt").unlink()
    shutil.rmtree(run / "report", ignore_errors=True)
    (run / "report").symlink_to(mine / "www")
    cli_fails("report", run, "--thumbnails", "1", match=r"report is a symbolic link")
    assert (mine / "notes.txt").read_text() == "my notes\n"
    assert (mine / "www" / "index.html").read_text() == "<p>my site</p>"
    assert sorted(p.name for p in mine.rglob("*")) == ["index.html", "notes.txt", "www"]


def test_a_run_inside_the_data_root_is_refused(data):
    before = digest(data)
    cli_fails("clean", data, "-o", data / "run", *FAST, match=r"inside the input folder")
    assert digest(data) == before and not (data / "run").exists()


def test_a_fifo_among_the_images_is_skipped_not_waited_on(data, tmp_path):
    os.mkfifo(data / "train" / "digit0" / "fifo.png")
    done = run_process("extract", data / "train", data / "val", "-o", tmp_path / "run",
                       "--threads", "1", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train: 24 images" in done.stdout + done.stderr


def test_a_config_that_is_not_a_regular_file_is_one_line(data, tmp_path):
    cli_fails("extract", data / "train", data / "val", "-o", tmp_path / "run", "--config",
              "/dev/zero", match=r"/dev/zero: not a configuration file")


def test_a_corrupt_run_marker_is_one_line(data, tmp_path):
    run = tmp_path / "run"
    run_ok("clean", data / "train", data / "val", "-o", run, *FAST, "--no-report")
    (run / ".tvclean" / "run.json").write_text('{"format": 1, "stages": [1]}')
    cli_fails("filter", run, match=r"corrupt run marker")


def test_a_nul_in_a_manifest_path_names_the_row(data, tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_bytes(b"path,label\n" + os.fsencode(data) + b"/train/digit0/0\x0000.png,a\n")
    cli_fails("extract", manifest, data / "val", "-o", tmp_path / "run",
              match=r"train.csv, line 2: the path .* holds a NUL or line-break character")


def test_an_unexpected_error_is_one_line_and_the_traceback_is_on_request(feature_run,
                                                                         monkeypatch):
    # a bug of ours must not print a traceback at the user; TVCLEAN_DEBUG=1 shows it
    import tvcore.stages.filter as filter_stage

    def broken(*args, **kwargs):
        raise ValueError("something tvclean did not expect")

    monkeypatch.setattr(filter_stage, "score_training_set", broken)
    run_ok("estimate", feature_run.root, *FAST)
    cli_fails("filter", feature_run.root, match=r"internal error \(ValueError: something tvclean did "
                                           r"not expect\); this is a bug in tvclean")
    result = CliRunner(env={"TVCLEAN_DEBUG": "1"}).invoke(cli, ["filter", str(feature_run.root)])
    assert isinstance(result.exception, ValueError)


    def refused(*args, **kwargs):
        raise click.ClickException("a message click prints as it is")

    monkeypatch.setattr(filter_stage, "score_training_set", refused)  # click's own: not a bug
    cli_fails("filter", feature_run.root, match=r"^Error: a message click prints as it is$")
