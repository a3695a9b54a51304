"""Monte-Carlo engine: speed against a plain NumPy per-step loop, against the machine's
bound, as a whole `tvclean estimate` process, scaling, cold start, memory.

    python -m benchmarks montecarlo [--quick]

Default configuration of the issue: K=7 classes, S=1000 training and V=100
validation examples per class, D=2048 features, E=100 episodes, 2 threads.
Features are synthetic non-negative "CNN-like" activations. Every time is
reported next to a reference measured in the same run (a NumPy loop, the
machine's measured peak, the same process on a warm cache), so the ratios
hold on a busy machine where the absolute times do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from tvcore.atomicfile import atomic_save_npy, atomic_write_json
from tvcore.config import EstimateConfig
from tvcore.engine import montecarlo
from tvcore.engine.featurenorm import normalize as normalize_features
from tvcore.engine.vmath import vexpm1, vexpm1_tiny
from tvcore.rundir import RunDir
from tvcore.rundir.ownership import claim
from tvcore.rundir.tables import write_index

# The reference configuration: the original's lr on raw features, every
# subset example in every episode.
ORIGINAL = dict(lr=1e-3, episode_per_class=-1, feature_norm="none")


def synthetic_features(n_classes, per_class, val_per_class, dim, seed=0):
    """Class-clustered non-negative features (like pooled ReLU activations) and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 0.5, (n_classes, dim))
    sub_labels = np.repeat(np.arange(n_classes), per_class)
    val_labels = np.repeat(np.arange(n_classes), val_per_class)
    sub = centres[sub_labels] + rng.gamma(0.5, 0.5, (sub_labels.size, dim))
    val = centres[val_labels] + rng.gamma(0.5, 0.5, (val_labels.size, dim))
    return sub, sub_labels, val, val_labels


def synthetic_problem(n_classes, per_class, val_per_class, dim, seed=0, normalize=False,
                      **options):
    """A MonteCarloProblem on synthetic_features.

    normalize: centre and scale to unit length, as the default feature_norm does.
    """
    sub, sub_labels, val, val_labels = synthetic_features(n_classes, per_class, val_per_class,
                                                          dim, seed)
    if normalize:
        center = sub.mean(axis=0)
        sub, val = normalize_features(sub, center), normalize_features(val, center)
    options = {**ORIGINAL, **options} if not normalize else options
    config = EstimateConfig(per_class=per_class, val_per_class=val_per_class, **options)
    return montecarlo.MonteCarloProblem(sub.astype(np.float32), sub_labels,
                                        val.astype(np.float32), val_labels, n_classes, config)


def time_engine(problem) -> tuple[float, int]:
    """Seconds of the whole Monte-Carlo phase (Gram matrix included) and SGD steps run."""
    start = time.perf_counter()
    problem._grams.clear()
    problem._grams[problem.blocks[0]] = problem._gram(0)
    acc = montecarlo.estimate_values(problem)
    return time.perf_counter() - start, int(acc.count.sum())


def numpy_loop_steps_per_second(problem, seconds=10.0) -> float:
    """The original's way: after every SGD step, a full forward pass of the validation set."""
    rng = np.random.default_rng(0)
    x_sub, y_sub = problem.sub_feats.astype(np.float32), problem.sub_labels
    x_val, y_val = problem.val_feats.astype(np.float32), problem.val_labels
    limit = np.sqrt(3.0 / problem.dim)
    weights = rng.uniform(-limit, limit, (problem.dim, problem.n_classes)).astype(np.float32)
    bias = np.zeros(problem.n_classes, np.float32)
    lr = np.float32(problem.config.lr)

    def val_loss():
        logits = x_val @ weights + bias
        peak = logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        return float(np.mean(log_norm - logits[np.arange(len(y_val)), y_val]))

    steps, start = 0, time.perf_counter()
    before = val_loss()
    for i in rng.permutation(problem.n_sub):
        logits = x_sub[i] @ weights + bias
        grad = np.exp(logits - logits.max())
        grad /= grad.sum()
        grad[y_sub[i]] -= 1
        weights -= lr * np.outer(x_sub[i], grad)
        bias -= lr * grad
        after = val_loss()
        _ = before - after
        before = after
        steps += 1
        if time.perf_counter() - start > seconds:
            break
    return steps / (time.perf_counter() - start)


def write_feature_run(root: Path, n_classes, per_class, val_per_class, dim, seed=0) -> Path:
    """A run directory holding RUN/features of synthetic_features, as `tvclean extract` writes."""
    run = RunDir(root)
    claim(run.root)
    sub, sub_labels, val, val_labels = synthetic_features(n_classes, per_class, val_per_class,
                                                          dim, seed)
    names = [f"class{k}" for k in range(n_classes)]
    for split, features, labels in (("train", sub, sub_labels), ("val", val, val_labels)):
        atomic_save_npy(run.features / f"{split}.npy", features.astype(np.float32))
        paths = [f"{names[k]}/{i:06d}.png" for i, k in enumerate(labels)]
        write_index(run.features / f"{split}_index.csv", paths,
                    [f"/data/{split}/{path}" for path in paths], labels, names, {})
    atomic_write_json(run.features / "meta.json", {
        "classes": names, "dim": dim, "model": {"name": "synthetic", "sha256": "",
                                                 "preprocessing": {}}})
    return Path(root)


def whole_process(args: list[str], env=None) -> tuple[float, float]:
    """(wall, CPU) seconds of one `python -m tvclean ARGS` process."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tvclean", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tvclean {' '.join(args)} failed: {proc.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime


def _row(*cells, widths=(14, 10, 12, 14, 14)):
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


@njit(fastmath={"contract"}, error_model="numpy", nogil=True, cache=True)
def _expm1_throughput(x, out, repeats, tiny):
    """out = expm1(x * s) for `repeats` scales s: the vector expm1 loop with least around it."""
    check = 0.0
    for r in range(repeats):
        scale = x.dtype.type(1.0 + 1e-3 * (r % 3))
        if tiny:
            for m in range(x.shape[0]):
                out[m] = vexpm1_tiny(x[m] * scale)
        else:
            for m in range(x.shape[0]):
                out[m] = vexpm1(x[m] * scale)
        check += out[r % x.shape[0]]
    return check


def machine_peaks(threads: int, seconds: float = 0.5) -> dict:
    """Measured peaks with `threads` threads: float32 GEMM multiply-adds/s (BLAS, 2048³),
    vector expm1/s (float32, full range and the tiny-argument polynomial)."""
    n = 2048
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    with threadpool_limits(threads):
        a @ a
        gemm = max(n**3 / _timed(lambda: a @ a) for _ in range(3))
    rates = {}
    for tiny in (False, True):
        xs = [np.random.default_rng(t).uniform(-0.02, 0.02, 1024).astype(np.float32)
              for t in range(threads)]
        outs = [np.empty_like(x) for x in xs]
        _expm1_throughput(xs[0], outs[0], 1, tiny)
        repeats = int(seconds * 2e9 / 1024 / 3) if not tiny else int(seconds * 5e9 / 1024 / 3)
        with ThreadPoolExecutor(threads) as pool:
            def run_all(xs=xs, outs=outs, repeats=repeats, tiny=tiny):
                list(pool.map(_expm1_throughput, xs, outs, [repeats] * threads,
                              [tiny] * threads))
            run_all()
            rates[tiny] = max(threads * repeats * 1024 / _timed(run_all) for _ in range(3))
    return {"gemm_macs_per_s": gemm, "expm1_per_s": rates[False],
            "tiny_expm1_per_s": rates[True]}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_bound(args) -> dict:
    """Kernel time of the issue's configuration against a bound from the work per step."""
    threads = 2
    numba.set_num_threads(threads)
    problem = synthetic_problem(7, 1000, 100, 2048, normalize=True, threads=threads,
                                episodes=args.episodes)
    montecarlo.run_episodes(problem, 0, 1)  # compile (or load) first
    steps = problem.config.episodes * problem.episode_length
    macs = 2 * problem.dim * problem.n_classes  # the head's forward x·Wᵀ and update W -= lr·g xᵀ
    expm1s = problem.n_val * problem.n_classes  # the validation logits' rank-1 update
    runs = []  # (kernel s, peaks), the peaks measured next to each kernel run
    for _ in range(args.repeats):
        peaks = machine_peaks(threads)
        runs.append((_timed(lambda: montecarlo.estimate_values(problem)), peaks))

    def bound_of(peaks, expm1_rate):
        return steps * (macs / peaks["gemm_macs_per_s"] + expm1s / peaks[expm1_rate])

    ratios = sorted((k / bound_of(p, "expm1_per_s"), k / bound_of(p, "tiny_expm1_per_s"), k, p)
                    for k, p in runs)
    ratio, floor_ratio, kernel, peaks = ratios[len(ratios) // 2]
    bound, floor = bound_of(peaks, "expm1_per_s"), bound_of(peaks, "tiny_expm1_per_s")
    print(f"\nbound (K=7 S=1000 V=100 D=2048 E={problem.config.episodes}, tvclean defaults, "
          f"{threads} threads, float32): per step {macs:,} multiply-adds, {expm1s:,} expm1")
    print(f"  measured peaks ({threads} threads): GEMM {peaks['gemm_macs_per_s'] * 2e-9:.0f} "
          f"GFLOP/s, expm1 {peaks['expm1_per_s'] * 1e-9:.2f} G/s (tiny-argument polynomial "
          f"{peaks['tiny_expm1_per_s'] * 1e-9:.2f} G/s)")
    print(f"  kernel (all episodes, Gram matrix built): {kernel:.3f} s = "
          f"{kernel / steps * threads * 1e6:.2f} us per step and thread")
    print(f"  bound from the peaks: {bound:.3f} s -> kernel at {ratio:.2f}x the bound (goal "
          f"<= 2x); with every expm1 at the tiny-argument rate: {floor:.3f} s ({floor_ratio:.2f}x)"
          f"; median of {len(runs)} runs, each next to its own peak measurement")
    return {"kernel_s": kernel, "bound_s": bound, "kernel_over_bound": ratio,
            "floor_s": floor, **peaks}


def bench_default(args) -> dict:
    problem = synthetic_problem(7, 1000, 100, 2048, episodes=args.episodes, threads=2)
    montecarlo.run_episodes(problem, 0, 1)  # compile (or load from cache) before timing
    seconds, steps = time_engine(problem)
    numpy_rate = numpy_loop_steps_per_second(problem, seconds=args.numpy_seconds)
    rate = steps / seconds
    print(f"issue config: K=7 S=1000 V=100 D=2048 E={args.episodes}, lr 1e-3 on raw features, "
          f"2 threads, float32")
    print(f"  tvclean engine : {seconds:8.3f} s total, {rate:12.4g} steps/s")
    print(f"  NumPy loop     : {numpy_rate:12.4g} steps/s "
          f"(full validation forward per step; would take {steps / numpy_rate:,.0f} s)")
    print(f"  speed-up       : {rate / numpy_rate:8.0f}x   (target: >= 100x, total <= 2 s)")
    tuned = synthetic_problem(7, 1000, 100, 2048, normalize=True, threads=2,
                              episodes=max(2, args.episodes * 3 // 2))
    montecarlo.run_episodes(tuned, 0, 1)
    tuned_seconds, tuned_steps = time_engine(tuned)
    print(f"tvclean defaults (centred unit features, lr 2, E={tuned.config.episodes}): "
          f"{tuned_seconds:.3f} s total, {tuned_steps / tuned_seconds:.4g} steps/s")
    return {"seconds": seconds, "steps_per_s": rate, "numpy_steps_per_s": numpy_rate,
            "speedup": rate / numpy_rate, "defaults_seconds": tuned_seconds}


def bench_whole_process(args) -> dict:
    """`tvclean estimate RUN --episodes E` as a whole process against the NumPy loop, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        run = write_feature_run(Path(tmp) / "run", 7, 1000, 100, 2048)
        command = ["estimate", str(run), "--episodes", str(args.episodes)]
        whole_process(command)  # the kernels compiled and cached, the feature files read once
        problem = synthetic_problem(7, 1000, 100, 2048, normalize=True)
        steps = 7000 * args.episodes
        walls, cpus, ratios = [], [], []
        for _ in range(args.repeats):
            shutil.rmtree(run / "estimates", ignore_errors=True)
            wall, cpu = whole_process(command)
            numpy_rate = numpy_loop_steps_per_second(problem, seconds=args.numpy_seconds / 2)
            walls.append(wall)
            cpus.append(cpu)
            ratios.append(steps / numpy_rate / wall)
    median = float(np.median(walls))
    print(f"\nwhole process: tvclean estimate RUN --episodes {args.episodes} (K=7 S=1000 V=100 "
          f"D=2048, defaults, all cores), {args.repeats} runs interleaved with the NumPy loop")
    print(f"  wall {median:.2f} s median ({min(walls):.2f}-{max(walls):.2f}), CPU "
          f"{np.median(cpus):.2f} s; NumPy loop for the same {steps:,} steps: "
          f"{median * np.median(ratios):,.0f} s -> {np.median(ratios):.0f}x "
          f"(goal: <= 2 s, >= 100x)")
    return {"whole_process_s": median, "whole_process_cpu_s": float(np.median(cpus)),
            "whole_process_speedup": float(np.median(ratios))}


def bench_scaling(args) -> None:
    print("\nscaling (S=1000, V=100 per class, 2 threads; ns/pair = time per step and "
          "validation-example-class pair)")
    print(_row("case", "episodes", "seconds", "steps/s", "ns/pair"))
    cases = [("K", k, 2048) for k in (2, 7, 20, 50)] + [("D", 7, d) for d in (256, 1024, 4096)]
    for axis, n_classes, dim in cases:
        episodes = max(2, int(args.scaling_budget_steps / (n_classes * 1000)))
        problem = synthetic_problem(n_classes, 1000, 100, dim, episodes=episodes, threads=2,
                                    checkpoint_every=episodes)
        montecarlo.run_episodes(problem, 0, 1)
        seconds, steps = time_engine(problem)
        pairs = steps * n_classes * problem.n_val
        label = f"K={n_classes}" if axis == "K" else f"D={dim}"
        print(_row(label, episodes, f"{seconds:.3f}", f"{steps / seconds:.4g}",
                   f"{seconds / pairs * 1e9 * 2:.3f}"))


def bench_cold_start(args) -> dict:
    """The first `tvclean estimate` on an empty numba cache, against the same on a warm one.

    The demo's size: K=10, 250 training and 50 validation images per class,
    D=1280 (EfficientNet-Lite0), tvclean's defaults (150 episodes); every run
    is a whole process. Each cold run gets a new, empty NUMBA_CACHE_DIR.
    """
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        run = write_feature_run(Path(tmp) / "run", 10, 250, 50, 1280)
        for repeat in range(args.cold_repeats):
            env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(tmp) / f"cache{repeat}"))
            for times in (cold, warm):
                shutil.rmtree(run / "estimates", ignore_errors=True)
                times.append(whole_process(["estimate", str(run)], env))
    cold_wall, cold_cpu = np.median(cold, axis=0)
    warm_wall, warm_cpu = np.median(warm, axis=0)
    print(f"\ncold start: tvclean estimate, K=10 S=250 V=50 D=1280 (the demo's size), 150 "
          f"episodes, whole process, median of {args.cold_repeats}")
    print(f"  empty numba cache: {cold_wall:.1f} s wall, {cold_cpu:.1f} s CPU; warm cache: "
          f"{warm_wall:.1f} s wall, {warm_cpu:.1f} s CPU; compilation {cold_wall - warm_wall:.1f} s "
          f"wall (goal: first run <= 5 s)")
    return {"cold_s": float(cold_wall), "warm_s": float(warm_wall),
            "cold_cpu_s": float(cold_cpu), "warm_cpu_s": float(warm_cpu)}


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (Linux keeps it
# across fork and exec), which here would report the benchmark process's own peak.
_MEMORY_PROBE = """
import sys
sys.path.insert(0, {root!r})
from benchmarks.bench_montecarlo import synthetic_problem, time_engine
problem = synthetic_problem({k}, 1000, 100, 2048, episodes={e}, threads=2)
time_engine(problem)
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) / 1024)
"""


def bench_memory(args) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print("\npeak resident memory of a whole run (new process, D=2048, S=1000, V=100):")
    for k, episodes in ((7, 4), (50, 2)):
        code = _MEMORY_PROBE.format(root=root, k=k, e=episodes)
        peak = float(subprocess.check_output([sys.executable, "-c", code]))
        n, m = k * 1000, k * 100
        print(f"  K={k:3d}: {peak:8.0f} MiB  (features {n * 2048 * 4 / 2**20:.0f} MiB, "
              f"Gram {n * m * 4 / 2**20:.0f} MiB)")


SECTIONS = {"default": bench_default, "bound": bench_bound, "whole": bench_whole_process,
            "cold": bench_cold_start, "scaling": bench_scaling, "memory": bench_memory}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks montecarlo")
    parser.add_argument("--quick", action="store_true", help="fewer episodes everywhere")
    parser.add_argument("--json", dest="json_out", help="also write the main numbers here")
    parser.add_argument("--only", help="comma-separated sections: " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    args.episodes = 20 if args.quick else 100
    args.numpy_seconds = 3.0 if args.quick else 10.0
    args.scaling_budget_steps = 20_000 if args.quick else 100_000
    args.repeats = 2 if args.quick else 3
    args.cold_repeats = 1 if args.quick else 2
    results = {}
    for name in (args.only.split(",") if args.only else SECTIONS):
        if name not in SECTIONS:
            sys.exit(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
        results.update(SECTIONS[name](args) or {})
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
