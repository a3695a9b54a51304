"""Monte-Carlo engine: speed against a plain NumPy per-step loop, scaling, compile time, memory.

    python -m benchmarks montecarlo [--quick] [--features RUN]

Default configuration of the issue: K=7 classes, S=1000 training and V=100
validation examples per class, D=2048 features, E=100 episodes, 2 threads.
Features are synthetic non-negative "CNN-like" activations unless --features
points at a run directory (then its real features are used).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from tvcore.config import EstimateConfig
from tvcore.engine import montecarlo
from tvcore.engine.featurenorm import normalize as normalize_features

# The reference configuration: the original's lr on raw features, every
# subset example in every episode.
ORIGINAL = dict(lr=1e-3, episode_per_class=-1, feature_norm="none")


def synthetic_problem(n_classes, per_class, val_per_class, dim, seed=0, normalize=False,
                      **options):
    """Class-clustered non-negative features (like pooled ReLU activations).

    normalize: centre and scale to unit length, as the default feature_norm does.
    """
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 0.5, (n_classes, dim))
    sub_labels = np.repeat(np.arange(n_classes), per_class)
    val_labels = np.repeat(np.arange(n_classes), val_per_class)
    sub = centres[sub_labels] + rng.gamma(0.5, 0.5, (sub_labels.size, dim))
    val = centres[val_labels] + rng.gamma(0.5, 0.5, (val_labels.size, dim))
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


def _row(*cells, widths=(14, 10, 12, 14, 14)):
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


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


_COMPILE_PROBE = """
import time, numpy as np
start = time.perf_counter()
from tvcore.engine import montecarlo
from tvcore.config import EstimateConfig
from tvcore.engine.featurenorm import normalize as normalize_features
rng = np.random.default_rng(0)
for head in ("linear", "mlp"):
    config = EstimateConfig(episodes=1, head=head, hidden=4)
    p = montecarlo.MonteCarloProblem(rng.random((6, 5)), [0, 0, 1, 1, 2, 2], rng.random((3, 5)),
                                     [0, 1, 2], 3, config)
    montecarlo.run_episodes(p, 0, 1)
print(time.perf_counter() - start)
"""


def bench_compile() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [float(subprocess.check_output([sys.executable, "-c", _COMPILE_PROBE], env=env))
                for _ in range(2)]
    print(f"\nJIT compile of both heads (float32, first call in a new process): "
          f"cold {runs[0]:.1f} s, cached {runs[1]:.1f} s")


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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks montecarlo")
    parser.add_argument("--quick", action="store_true", help="fewer episodes everywhere")
    parser.add_argument("--json", dest="json_out", help="also write the main numbers here")
    args = parser.parse_args(argv)
    args.episodes = 20 if args.quick else 100
    args.numpy_seconds = 3.0 if args.quick else 10.0
    args.scaling_budget_steps = 20_000 if args.quick else 100_000
    results = bench_default(args)
    bench_scaling(args)
    bench_compile()
    bench_memory(args)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
