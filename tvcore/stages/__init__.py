"""The pipeline stages: each reads and writes a run directory."""
