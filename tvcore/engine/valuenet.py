"""Training-ValueNets: one MLP regressor per class, feature vector -> training-value.

Keras-faithful numpy re-implementation of the original regressor:
Dense(hidden, relu, glorot_uniform, zero bias) -> inverted Dropout -> Dense(1),
Adam (Keras form, epsilon outside the square root), MAE or MSE loss, a random
validation split, shuffled mini-batches and early stopping on the validation
loss that restores the best epoch's weights. Computation is float32, as Keras.

Targets of ~1e-3 are too small for Adam at lr 1e-3 to fit, so by default each
class's targets are divided by their mean |value| and predictions multiplied back.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from ..atomicfile import atomic_save_npz, atomic_write_json, read_json
from ..config import ValueNetConfig
from ..errors import TvcleanError

DTYPE = np.float32
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-7  # Keras Adam defaults
# Adam moments below this are set to zero. They move a weight by < lr * 1e-30 / EPSILON
# (1e-26), far below float32 resolution, and would otherwise decay through subnormal
# numbers, whose arithmetic is 10-30x slower (TensorFlow flushes those to zero too).
MOMENT_FLUSH = 1e-30
PREDICT_ROWS = 8192  # rows per predict chunk: bounds memory for memory-mapped X
META_FILE = "meta.json"
NET_FILE = "class_{}.npz"
_NET_KEYS = ("w1", "b1", "w2", "b2", "target_scale", "train_loss", "val_loss",
             "best_epoch", "val_rows")


@dataclass
class ValueNet:
    """A trained regressor of one class.

    w1: (D, H), b1: (H,), w2: (H, 1), b2: (1,) float32 weights of the best epoch.
    target_scale: targets were divided by this before training; predict multiplies back.
    train_loss, val_loss: (epochs_run,) float64 loss per epoch, in scaled units.
    best_epoch: index into the histories of the epoch whose weights were kept.
    val_rows: (n_val,) int64 rows of the training X held out for validation.
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    target_scale: float
    train_loss: np.ndarray
    val_loss: np.ndarray
    best_epoch: int
    val_rows: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.w1.shape[0])

    def predict(self, X: np.ndarray, batch_rows: int = PREDICT_ROWS) -> np.ndarray:
        """Predicted training-values in original units.

        X: (n, D) features (any float dtype, may be memory-mapped), read in
        chunks of batch_rows rows. Returns (n,) float64.
        """
        X = _check_matrix(X, "X")
        if X.shape[1] != self.dim:
            raise TvcleanError(f"X has {X.shape[1]} features per row, the value net expects {self.dim}")
        out = np.empty(X.shape[0], dtype=np.float64)
        for start in range(0, X.shape[0], batch_rows):
            chunk = np.asarray(X[start:start + batch_rows], dtype=self.w1.dtype)
            _check_finite(chunk, "X", start)
            _, _, pred = forward(self.w1, self.b1, self.w2, self.b2, chunk)
            out[start:start + len(chunk)] = pred
        return out * self.target_scale


class NetStack:
    """Value nets of one shape with their first layers stacked into one matrix, so the
    features are checked and multiplied once for all of them (stacked once, used on every
    chunk); nets of different shapes are kept as they are and run one by one."""

    def __init__(self, nets: list[ValueNet]):
        self.nets = nets
        self.stacked = len({(net.dim, net.w1.shape[1], net.w1.dtype) for net in nets}) == 1
        if self.stacked:
            dtype = nets[0].w1.dtype
            self.w1 = np.concatenate([net.w1 for net in nets], axis=1).astype(dtype)  # (D, N*H)
            self.b1 = np.concatenate([net.b1 for net in nets]).astype(dtype)
            self.w2 = np.stack([net.w2[:, 0] for net in nets]).astype(dtype)  # (N, H)
            self.b2 = np.array([net.b2[0] for net in nets], dtype)
            self.scale = np.array([net.target_scale for net in nets])

    def predict(self, X: Any, batch_bytes: int = 32 * 2**20) -> np.ndarray:
        """(n, len(nets)) float64: every net's predictions on X (n, D), as ValueNet.predict;
        rows are taken in chunks whose hidden activations (rows x nets x H float32) stay
        within batch_bytes."""
        X = _check_matrix(X, "X")
        out = np.empty((X.shape[0], len(self.nets)), dtype=np.float64)
        if not self.nets:
            return out
        if not self.stacked:
            return np.column_stack([net.predict(X) for net in self.nets])
        if X.shape[1] != self.nets[0].dim:
            raise TvcleanError(f"X has {X.shape[1]} features per row, the value nets expect "
                               f"{self.nets[0].dim}")
        n_nets, hidden = self.w2.shape
        rows = max(1, batch_bytes // (4 * self.w1.shape[1]))
        for start in range(0, X.shape[0], rows):
            chunk = np.asarray(X[start:start + rows], dtype=self.w1.dtype)
            _check_finite(chunk, "X", start)
            act = np.maximum(chunk @ self.w1 + self.b1, 0).reshape(chunk.shape[0], n_nets, hidden)
            out[start:start + chunk.shape[0]] = np.einsum("bnh,nh->bn", act, self.w2) + self.b2
        return out * self.scale


def predict_many(nets: list[ValueNet], X: Any, batch_bytes: int = 32 * 2**20) -> np.ndarray:
    """(n, len(nets)) float64: every net's predictions on X (n, D) (see NetStack)."""
    return NetStack(nets).predict(X, batch_bytes)


def can_fit(n_examples: int, config: ValueNetConfig) -> bool:
    """Whether a class with n_examples MC estimates has enough to train a value net."""
    n_val = _n_val(n_examples, config.val_split)
    return n_examples >= config.min_examples and 1 <= n_val < n_examples


def min_examples_needed(config: ValueNetConfig) -> int:
    """The smallest number of MC examples for which `can_fit` holds."""
    n = max(config.min_examples, 2)
    while not can_fit(n, config):
        n += 1
    return n


def fit_valuenet(X: np.ndarray, y: np.ndarray, config: ValueNetConfig,
                 seed: int | Sequence[int]) -> ValueNet:
    """Train one class's regressor from its Monte-Carlo estimates.

    X: (n, D) features; y: (n,) training-values; seed: an int or a sequence
    such as (config.seed, class_index), fed to np.random.default_rng.
    Raises TvcleanError on non-finite input or when `can_fit` is False.
    """
    config.validate()
    X, y = _check_training_data(X, y, config)
    rng = np.random.default_rng(seed)
    scale = _target_scale(y, config.target_scale)
    targets = (y / scale).astype(DTYPE)
    perm = rng.permutation(len(y))
    val_rows = np.sort(perm[:_n_val(len(y), config.val_split)])
    train_rows = perm[len(val_rows):]
    trainer = _Trainer(X.shape[1], config, rng)
    # Single-threaded BLAS: for these small matrices its threads cost more than they
    # give, about 3x more on a busy 2-core machine (measured).
    with threadpool_limits(limits=1, user_api="blas"):
        trainer.run(X[train_rows], targets[train_rows], X[val_rows], targets[val_rows])
    w1, b1, w2, b2 = (a.copy() for a in _views(trainer.best, X.shape[1], config.hidden))
    return ValueNet(w1=w1, b1=b1, w2=w2, b2=b2, target_scale=scale,
                    train_loss=np.array(trainer.train_loss), val_loss=np.array(trainer.val_loss),
                    best_epoch=trainer.best_epoch, val_rows=val_rows.astype(np.int64))


def fit_valuenets(per_class: Mapping[int, tuple[np.ndarray, np.ndarray]], config: ValueNetConfig,
                  threads: int = 0) -> dict[int, ValueNet]:
    """Train the value nets of several classes, one class per thread.

    per_class: {class index: (X (n, D), y (n,))}, every class passing `can_fit`.
    Class k is seeded with (config.seed, k), so results do not depend on threads
    (0 = all cores).
    """
    threads = threads or os.cpu_count() or 1
    # set the BLAS limit once here: each fit's own limit then restores 1, not the default
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        futures = {k: pool.submit(fit_valuenet, X, y, config, (config.seed, int(k)))
                   for k, (X, y) in per_class.items()}
        return {k: future.result() for k, future in futures.items()}


# ----------------------------------------------------------------------------- model maths

def forward(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, X: np.ndarray,
            mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward pass. X: (b, D); mask: (b, H) dropout multipliers or None.

    Returns pre-activations (b, H), dropped-out hidden activations (b, H), predictions (b,).
    """
    pre = X @ w1 + b1
    hidden = np.maximum(pre, 0)
    if mask is not None:
        hidden *= mask
    return pre, hidden, (hidden @ w2)[:, 0] + b2[0]


def loss_and_grads(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
                   X: np.ndarray, targets: np.ndarray, loss: str,
                   mask: np.ndarray | None = None, out: Any = None) -> tuple[float, Any]:
    """Mean loss over the batch and its gradients (g_w1, g_b1, g_w2, g_b2).

    X: (b, D); targets: (b,); loss: "mae" or "mse"; mask: (b, H) or None;
    out: arrays shaped like (w1, b1, w2, b2) to write the gradients into, or None.
    """
    pre, hidden, pred = forward(w1, b1, w2, b2, X, mask)
    err = pred - targets
    if loss == "mae":
        value, d_pred = np.abs(err).mean(), np.sign(err) / len(err)
    else:
        value, d_pred = (err * err).mean(), 2 * err / len(err)
    d_pred = d_pred.astype(w1.dtype)[:, None]
    d_pre = d_pred * w2[:, 0]
    if mask is not None:
        d_pre *= mask
    d_pre *= pre > 0
    g_w1, g_b1, g_w2, g_b2 = out if out is not None else (None,) * 4
    return float(value), (np.matmul(X.T, d_pre, out=g_w1), d_pre.sum(0, out=g_b1),
                          np.matmul(hidden.T, d_pred, out=g_w2), d_pred.sum(0, out=g_b2))


def batch_loss(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, X: np.ndarray,
               targets: np.ndarray, loss: str) -> float:
    """Mean loss without dropout. X: (n, D); targets: (n,)."""
    err = forward(w1, b1, w2, b2, X)[2] - targets
    return float(np.abs(err).mean() if loss == "mae" else (err * err).mean())


@njit(cache=True, nogil=True, error_model="numpy")
def adam_update(params: np.ndarray, grads: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float,
                step: int, beta1: float, beta2: float, eps: float, flush: float) -> None:
    """One Keras Adam step in place. params, grads, m, v: (P,); step: 1-based.

    Moments below `flush` in magnitude are set to zero (see MOMENT_FLUSH).
    """
    alpha = lr * np.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    a, e, t = params.dtype.type(alpha), params.dtype.type(eps), params.dtype.type(flush)
    b1, b2 = params.dtype.type(beta1), params.dtype.type(beta2)
    # Three simple loops vectorize (sqrt and divide included); one fused loop does not.
    for i in range(params.size):
        mi = b1 * m[i] + (1 - b1) * grads[i]
        m[i] = mi * (np.abs(mi) >= t)  # a multiply, not a branch, to stay vectorized
    for i in range(params.size):
        vi = b2 * v[i] + (1 - b2) * grads[i] * grads[i]
        v[i] = vi * (vi >= t)
    for i in range(params.size):
        params[i] -= a * m[i] / (np.sqrt(v[i]) + e)


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """Keras' default Dense init: U(-l, l), l = sqrt(6 / (fan_in + fan_out)); (fan_in, fan_out)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def dropout_mask(rng: np.random.Generator, shape: tuple[int, int], rate: float,
                 dtype: Any = DTYPE) -> np.ndarray | None:
    """Inverted dropout: keep with probability 1 - rate, scale kept units by 1 / (1 - rate)."""
    if rate == 0:
        return None
    keep = rng.random(shape, dtype=np.float32) >= rate
    return keep.astype(dtype) * dtype(1.0 / (1.0 - rate))


# ----------------------------------------------------------------------------- training

def _n_params(dim: int, hidden: int) -> int:
    return dim * hidden + hidden + hidden + 1


def _views(flat: np.ndarray, dim: int, hidden: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(w1, b1, w2, b2) as views into one flat parameter vector, so Adam is one pass."""
    s1, s2 = dim * hidden, dim * hidden + hidden
    return (flat[:s1].reshape(dim, hidden), flat[s1:s2], flat[s2:s2 + hidden].reshape(hidden, 1),
            flat[s2 + hidden:])


class _Trainer:
    """Mini-batch Adam with early stopping over flat parameter / moment buffers."""

    def __init__(self, dim: int, config: ValueNetConfig, rng: np.random.Generator):
        self.config, self.rng, self.dim = config, rng, dim
        self.params = np.zeros(_n_params(dim, config.hidden), dtype=DTYPE)
        self.grads = np.zeros_like(self.params)
        self.m, self.v = np.zeros_like(self.params), np.zeros_like(self.params)
        w1, _, w2, _ = _views(self.params, dim, config.hidden)
        w1[:] = glorot_uniform(rng, dim, config.hidden)
        w2[:] = glorot_uniform(rng, config.hidden, 1)
        self.step = 0
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.best, self.best_epoch = self.params.copy(), 0

    def run(self, X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
            y_val: np.ndarray) -> None:
        best, waited = np.inf, 0
        for epoch in range(self.config.max_epochs):
            self.train_loss.append(self._epoch(X_train, y_train))
            self.val_loss.append(batch_loss(*self._weights(), X_val, y_val, self.config.loss))
            if self.val_loss[-1] < best:  # Keras EarlyStopping, min_delta 0
                best, waited, self.best_epoch = self.val_loss[-1], 0, epoch
                self.best[:] = self.params
            else:
                waited += 1
                if waited >= self.config.patience:
                    break

    def _weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return _views(self.params, self.dim, self.config.hidden)

    def _epoch(self, X: np.ndarray, y: np.ndarray) -> float:
        order = self.rng.permutation(len(y))
        X, y = X[order], y[order]
        size, total = self.config.batch_size, 0.0
        for start in range(0, len(y), size):
            total += self._batch(X[start:start + size], y[start:start + size]) * len(y[start:start + size])
        return total / len(y)

    def _batch(self, X: np.ndarray, y: np.ndarray) -> float:
        mask = dropout_mask(self.rng, (len(y), self.config.hidden), self.config.dropout)
        value, _ = loss_and_grads(*self._weights(), X, y, self.config.loss, mask,
                       out=_views(self.grads, self.dim, self.config.hidden))
        self.step += 1
        adam_update(self.params, self.grads, self.m, self.v, self.config.lr, self.step,
                    BETA1, BETA2, EPSILON, MOMENT_FLUSH)
        return value


def _n_val(n: int, val_split: float) -> int:
    """Validation examples, as Keras' validation_split: n - int(n * (1 - split))."""
    return n - int(n * (1.0 - val_split))


def _target_scale(y: np.ndarray, mode: str) -> float:
    if mode == "none":
        return 1.0
    scale = float(np.abs(y).mean())
    return scale if scale > 0 else 1.0


# ----------------------------------------------------------------------------- validation

def _check_matrix(X: Any, name: str) -> np.ndarray:
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if len(X.shape) != 2:
        raise TvcleanError(f"{name} must be a 2-D (examples, features) array, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise TvcleanError(f"{name} must hold real numbers, got dtype {X.dtype}")
    return X


def _check_finite(a: np.ndarray, name: str, row_offset: int = 0) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.argwhere(bad)[0][0]) + row_offset
        raise TvcleanError(f"{name} has a non-finite value (NaN or inf) in row {row}")


def _check_training_data(X: Any, y: Any, config: ValueNetConfig) -> tuple[np.ndarray, np.ndarray]:
    X = _check_matrix(X, "X")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or len(y) != X.shape[0]:
        raise TvcleanError(f"y must have one value per row of X: X has {X.shape[0]} rows, "
                           f"y has shape {y.shape}")
    if not can_fit(len(y), config):
        raise TvcleanError(f"too few examples to train a value net: {len(y)}, needs at least "
                           f"{min_examples_needed(config)} (valuenet.min_examples, valuenet.val_split)")
    X = np.ascontiguousarray(X, dtype=DTYPE)
    _check_finite(X, "X")
    _check_finite(y, "y")
    return X, y


# ----------------------------------------------------------------------------- files

def save_valuenets(path_dir: str | Path, nets: dict[int, ValueNet], meta: dict) -> None:
    """Write class_<k>.npz per class (no pickle), then meta.json listing the classes.

    meta: JSON-serialisable extra information (configuration, class names, ...).
    """
    path_dir = Path(path_dir)
    for k, net in sorted(nets.items()):
        atomic_save_npz(path_dir / NET_FILE.format(int(k)),
                        **{key: np.asarray(getattr(net, key)) for key in _NET_KEYS})
    atomic_write_json(path_dir / META_FILE, {**meta, "valuenet_classes": sorted(int(k) for k in nets)})


def load_valuenets(path_dir: str | Path) -> tuple[dict[int, ValueNet], dict]:
    """Read what `save_valuenets` wrote: ({class: ValueNet}, meta)."""
    path_dir = Path(path_dir)
    meta = read_json(path_dir / META_FILE)
    classes = meta.pop("valuenet_classes", None) if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not all(isinstance(k, int) for k in classes):
        raise TvcleanError(f"{path_dir / META_FILE}: missing or invalid 'valuenet_classes'")
    return {k: _load_net(path_dir / NET_FILE.format(k)) for k in classes}, meta


def _load_net(path: Path) -> ValueNet:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in _NET_KEYS}
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found; re-run `tvclean filter`") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TvcleanError(f"{path}: not a valid value-net file ({exc})") from None
    net = ValueNet(**{key: arrays[key] for key in ("w1", "b1", "w2", "b2", "train_loss",
                                                   "val_loss", "val_rows")},
                   target_scale=float(arrays["target_scale"]), best_epoch=int(arrays["best_epoch"]))
    _check_net_shapes(net, path)
    return net


def _check_net_shapes(net: ValueNet, path: Path) -> None:
    dim, hidden = net.w1.shape if net.w1.ndim == 2 else (0, 0)
    expected = {"w1": (dim, hidden), "b1": (hidden,), "w2": (hidden, 1), "b2": (1,)}
    for key, shape in expected.items():
        array = getattr(net, key)
        if array.shape != shape or hidden == 0 or not np.issubdtype(array.dtype, np.floating):
            raise TvcleanError(f"{path}: {key} has shape {array.shape} and dtype {array.dtype}, "
                               f"expected float {shape}")
        _check_finite(array, f"{path}: {key}")
