"""Run a benchmark: `python -m benchmarks NAME [args]`, or `all`. Each prints a table."""

from __future__ import annotations

import importlib
import sys

# name -> module in this package; each module has main(argv) -> None.
BENCHMARKS = {
    "extract": "bench_extract",
    "finetune": "bench_finetune",
    "montecarlo": "bench_montecarlo",
    "precision": "bench_precision",
    "quality": "bench_quality",
    "review": "bench_review",
    "review-loop": "bench_review_loop",
    "scale": "bench_scale",
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [args]   (NAME: all, " + ", ".join(BENCHMARKS) + ")")
        return
    name, rest = argv[0], argv[1:]
    names = list(BENCHMARKS) if name == "all" else [name]
    for each in names:
        if each not in BENCHMARKS:
            sys.exit(f"unknown benchmark {each!r}; known: {', '.join(BENCHMARKS)}")
        print(f"\n=== {each} ===", flush=True)
        importlib.import_module(f".{BENCHMARKS[each]}", __package__).main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
