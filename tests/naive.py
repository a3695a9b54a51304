"""Naive, obviously-correct float64 references for the fast kernels.

Every step literally runs the forward pass, the backward pass and the full
validation loss, as the original Keras script does (but in float64).
"""

from __future__ import annotations

import numpy as np


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy of logits (n, K) against integer labels (n,)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(labels)), labels]))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def naive_linear_deltas(x_sub, y_sub, x_val, y_val, init_weights, order, lr):
    """Loss drops (epochs, N) of a linear softmax head W (K, D), zero bias.

    order (epochs, L) lists the examples visited; unvisited examples get NaN.
    """
    x_sub, x_val = np.float64(x_sub), np.float64(x_val)
    w = np.array(init_weights, dtype=np.float64)
    b = np.zeros(w.shape[0])
    deltas = np.full((order.shape[0], len(x_sub)), np.nan)
    for epoch in range(order.shape[0]):
        for i in order[epoch]:
            before = mean_cross_entropy(x_val @ w.T + b, y_val)
            grad = softmax(w @ x_sub[i] + b)
            grad[y_sub[i]] -= 1.0
            w -= lr * np.outer(grad, x_sub[i])
            b -= lr * grad
            after = mean_cross_entropy(x_val @ w.T + b, y_val)
            deltas[epoch, i] = before - after
    return deltas


def naive_mlp_deltas(x_sub, y_sub, x_val, y_val, init_w1, init_w2, order, lr):
    """Loss drops (epochs, N) of a ReLU MLP head: W1 (H, D), W2 (K, H), zero biases."""
    x_sub, x_val = np.float64(x_sub), np.float64(x_val)
    w1, w2 = np.array(init_w1, dtype=np.float64), np.array(init_w2, dtype=np.float64)
    b1, b2 = np.zeros(w1.shape[0]), np.zeros(w2.shape[0])

    def val_loss():
        return mean_cross_entropy(np.maximum(x_val @ w1.T + b1, 0) @ w2.T + b2, y_val)

    deltas = np.full((order.shape[0], len(x_sub)), np.nan)
    for epoch in range(order.shape[0]):
        for i in order[epoch]:
            before = val_loss()
            x = x_sub[i]
            pre = w1 @ x + b1
            hidden = np.maximum(pre, 0)
            grad_logits = softmax(w2 @ hidden + b2)
            grad_logits[y_sub[i]] -= 1.0
            grad_pre = (w2.T @ grad_logits) * (pre > 0)
            w2 -= lr * np.outer(grad_logits, hidden)
            b2 -= lr * grad_logits
            w1 -= lr * np.outer(grad_pre, x)
            b1 -= lr * grad_pre
            deltas[epoch, i] = before - val_loss()
    return deltas


def naive_normalise(pixels: np.ndarray, mean, std) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> (3, H, W) float32 as numpy computes pixel * (1/std) +
    (-mean/std) in float32, and the same in float64 (both returned: exact, reference)."""
    planes = np.repeat(pixels[None], 3, axis=0) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    scale = 1.0 / np.asarray(std, dtype=np.float32)
    offset = -np.asarray(mean, dtype=np.float32) * scale
    as_float32 = planes.astype(np.float32) * scale[:, None, None] + offset[:, None, None]
    exact = (planes.astype(np.float64) - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    return as_float32.astype(np.float32), exact
