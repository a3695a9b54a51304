"""tvclean's performance and quality benchmarks: `python -m benchmarks NAME` (see __main__)."""
