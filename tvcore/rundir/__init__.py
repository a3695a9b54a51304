"""The run directory: every stage reads its inputs from and writes its artifacts to RUN/.

This package is the one owner of the run's files; stages go through it.

    RUN/.tvclean/run.json     marker (the directory is tvclean's) and stage records
                              (seconds, time finished), see ownership.py and run.py
    RUN/.tvclean/lock         the writer lock; split.json: the files placed in clean/, dirty/
    RUN/config.toml           effective configuration of every stage that ran (documented)
    RUN/log.txt               one line per event, appended by every stage
    RUN/features/             feature matrices and indexes (features.py, tables.py)
    RUN/estimates/            Monte-Carlo values (estimates.py)
    RUN/finetune/             model.onnx + model.json of `tvclean finetune` (if it ran)
    RUN/valuenets/            class_<k>.npz weights (no pickle) + meta.json
    RUN/training_values.csv   one row per training image (tables.py)
    RUN/evaluation.json       the last `tvclean evaluate` against a truth file
    RUN/clean/, RUN/dirty/    the split data set (splitdata.py)
    RUN/report/               index.html + PNG plots

All writes are atomic: a temp file in the same folder, then rename.
"""

from .estimates import Estimates, load_estimates
from .features import FeatureSet, Split, load_features
from .run import RunDir
from .tables import TrainingValues, read_training_values

__all__ = ["Estimates", "FeatureSet", "RunDir", "Split", "TrainingValues", "load_estimates",
           "load_features", "read_training_values"]
