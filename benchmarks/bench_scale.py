"""Bounded memory at scale: peak RSS and wall time of estimate + filter on 200,000 x 1280 features.

    python -m benchmarks scale [--quick] [--rows N] [--episodes E] [--dir DIR]

A run directory with memory-mapped synthetic features (K=50 classes, 10% of
the training labels flipped) is written once; then each configuration runs
`estimate` + `filter` (output none, no report) in a fresh process, while
this process polls the resident memory of that process and all its children
(the Dask workers included) every 50 ms. RSS counts the feature file's
pages that a process has touched (file-backed, reclaimable, shared with the
page cache); the anonymous part is memory the run really owns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tvcore.atomicfile import atomic_write_json
from tvcore.rundir import RunDir
from tvcore.rundir.ownership import claim
from tvcore.rundir.tables import write_index

DIM, CLASSES, VAL_PER_CLASS_ROWS = 1280, 50, 100
CHUNK_ROWS = 8192
PHASE_SUFFIX = ".phase"  # beside RUN: the child writes the stage it is in, for per-stage peaks
MODES = {  # name -> (Dask workers or 0, estimate memory budget in MiB)
    "single process": (0, 2048),
    "single process, budget 256 MiB": (0, 256),
    "2-worker LocalCluster": (2, 2048),
}


def write_features(run: RunDir, name: str, rows: int, rng, centres, flip: float) -> None:
    """RUN/features/<name>.npy (memory-mapped, written in chunks) and its index."""
    run.features.mkdir(parents=True, exist_ok=True)
    matrix = np.lib.format.open_memmap(run.features / f"{name}.npy", mode="w+",
                                       dtype=np.float32, shape=(rows, DIM))
    labels = np.arange(rows) % CLASSES
    for start in range(0, rows, CHUNK_ROWS):
        part = labels[start:start + CHUNK_ROWS]
        matrix[start:start + part.size] = centres[part] + rng.gamma(0.5, 0.5, (part.size, DIM))
    matrix.flush()
    del matrix
    given = labels.copy()
    flipped = rng.random(rows) < flip
    given[flipped] = (labels[flipped] + rng.integers(1, CLASSES, flipped.sum())) % CLASSES
    paths = [f"class{k:02d}/img{i:07d}.png" for i, k in enumerate(given)]
    write_index(run.features / f"{name}_index.csv", paths,
                [f"/data/{name}/{p}" for p in paths], given.tolist(),
                [f"class{k:02d}" for k in range(CLASSES)], {})


def make_run(root: Path, rows: int) -> RunDir:
    """A run directory as `tvclean extract` leaves it, with rows training feature rows."""
    run = RunDir(root)
    claim(run.root)
    rng = np.random.default_rng(0)
    centres = rng.gamma(0.5, 0.5, (CLASSES, DIM)).astype(np.float32)
    write_features(run, "train", rows, rng, centres, flip=0.1)
    write_features(run, "val", CLASSES * VAL_PER_CLASS_ROWS, rng, centres, flip=0.0)
    atomic_write_json(run.features / "meta.json", {
        "classes": [f"class{k:02d}" for k in range(CLASSES)], "dim": DIM,
        "model": {"name": "synthetic", "sha256": "", "preprocessing": {}}})
    return run


def child(args) -> None:
    """In the measured process: estimate + filter, then times as JSON on stdout."""
    from tvcore.cluster import open_cluster
    from tvcore.config import Config, EstimateConfig, FilterConfig
    from tvcore.stages.estimate import estimate
    from tvcore.stages.filter import filter_run

    config = Config(estimate=EstimateConfig(
        episodes=args.episodes, per_class=args.per_class, val_per_class=args.val_per_class,
        checkpoint_every=args.block, memory_budget_mb=args.budget),
        filter=FilterConfig(output="none"))
    config.report.enabled = False
    times = {}
    phase = Path(args.run).with_suffix(PHASE_SUFFIX)
    with open_cluster(workers=args.workers or None) as cluster:
        start = time.perf_counter()
        if cluster is not None:
            cluster.client.wait_for_workers(args.workers)
            times["cluster start"] = time.perf_counter() - start
            start = time.perf_counter()
        phase.write_text("estimate")
        estimate(args.run, config, progress=False, cluster=cluster)
        times["estimate"] = time.perf_counter() - start
    phase.write_text("filter")
    start = time.perf_counter()
    filter_run(args.run, config, progress=False)
    times["filter"] = time.perf_counter() - start
    print(json.dumps(times))


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) in bytes of a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    rss = anon = 0
    for proc in procs:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
    return rss, anon


def measure(run: Path, workers: int, budget: int, args) -> dict:
    """Run one configuration in a fresh process; peak memory of its tree and its times."""
    command = [sys.executable, "-m", "benchmarks.bench_scale", "--child", "--run", str(run),
               "--workers", str(workers), "--budget", str(budget), "--episodes", str(args.episodes),
               "--per-class", str(args.per_class), "--val-per-class", str(args.val_per_class),
               "--block", str(args.block)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    peaks: dict[str, list[int]] = {}  # phase -> [peak RSS, peak anonymous RSS]
    while True:
        # wait4 also reports the CPU time of the reaped descendants (the Dask workers)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        try:
            phase = run.with_suffix(PHASE_SUFFIX).read_text() or "start"
        except OSError:
            phase = "start"
        rss, anon = tree_memory(proc.pid)
        peak = peaks.setdefault(phase, [0, 0])
        peak[:] = max(peak[0], rss), max(peak[1], anon)
        time.sleep(0.05)
    wall = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({proc.returncode}): {out}")
    mib = {f"{phase} {kind}": value / 2**20 for phase, pair in peaks.items()
           for kind, value in zip(("rss_mib", "anon_mib"), pair)}
    return {"peak_rss_mib": max(p[0] for p in peaks.values()) / 2**20,
            "peak_anon_mib": max(p[1] for p in peaks.values()) / 2**20, **mib,
            "wall_s": wall, "cpu_s": cpu, **json.loads(out.strip().splitlines()[-1])}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller Monte-Carlo subset (S=200, V=20 per class), 4 episodes")
    parser.add_argument("--rows", type=int, default=200_000, help="training feature rows")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--val-per-class", type=int, default=None)
    parser.add_argument("--block", type=int, default=2, help="episodes per block (checkpoint)")
    parser.add_argument("--dir", help="where to write the run directories (default: a temp dir)")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=2048, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (4, 200, 20) if args.quick else (8, 1000, 100)
    for name, value in zip(("episodes", "per_class", "val_per_class"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        started = time.perf_counter()
        base = make_run(Path(tmp) / "features-run", args.rows)
        size = (base.features / "train.npy").stat().st_size / 2**20
        print(f"{args.rows} x {DIM} float32 training features ({size:.0f} MiB, memory-mapped), "
              f"K={CLASSES}, {CLASSES * VAL_PER_CLASS_ROWS} validation rows; written in "
              f"{time.perf_counter() - started:.0f}s")
        print(f"estimate: S={args.per_class} V={args.val_per_class} per class "
              f"(subset {CLASSES * args.per_class}, Gram matrix "
              f"{CLASSES**2 * args.per_class * args.val_per_class * 4 / 2**20:.0f} MiB float32), "
              f"{args.episodes} episodes in blocks of {args.block}, linear head; filter: "
              "50 value nets, output none; 2 cores")
        print("peak RSS / peak anonymous RSS (MiB) of the whole process tree, by stage; times")
        print(f"{'configuration':32s} {'estimate RSS/anon':>17s} {'filter RSS/anon':>16s} "
              f"{'estimate':>9s} {'filter':>7s} {'total':>7s} {'CPU':>7s}")
        results = {}
        for name, (workers, budget) in MODES.items():
            run = Path(tmp) / name.replace(" ", "_").replace(",", "")
            claim(run)  # a run of its own whose features are hard links to the base's
            (run / "features").mkdir()
            for file in base.features.iterdir():
                os.link(file, run / "features" / file.name)
            result = results[name] = measure(run, workers, budget, args)
            startup = f" (+{result['cluster start']:.1f}s start)" if workers else ""
            memory = [f"{result[f'{stage} rss_mib']:.0f} / {result[f'{stage} anon_mib']:.0f}"
                      for stage in ("estimate", "filter")]
            print(f"{name:32s} {memory[0]:>17s} {memory[1]:>16s} {result['estimate']:8.1f}s "
                  f"{result['filter']:6.1f}s {result['wall_s']:6.1f}s {result['cpu_s']:6.0f}s"
                  f"{startup}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
