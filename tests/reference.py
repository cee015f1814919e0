"""A plain numpy (float64) reference of the tutorial's MLP step, for checking the backends."""

from __future__ import annotations

import numpy as np

from bench.core.spec import StageSpec


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and the inputs to each layer (for the backward pass); no dropout."""
    inputs = []
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        inputs.append(h)
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
    return h, inputs


def gradients(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, list]:
    """Mean softmax cross-entropy and its gradient for every parameter."""
    logits, inputs = forward(params, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].mean()
    delta = np.exp(log_probs)
    delta[np.arange(len(y)), y] -= 1.0
    delta /= len(y)
    grads: list[np.ndarray] = [np.empty(0)] * len(params)
    for i in reversed(range(len(params) // 2)):
        grads[2 * i] = inputs[i].T @ delta
        grads[2 * i + 1] = delta.sum(axis=0)
        if i > 0:
            delta = (delta @ params[2 * i].T) * (inputs[i] > 0)
    return float(loss), grads


def train(spec: StageSpec, params: list[np.ndarray], batches: list[tuple]) -> list[float]:
    """Apply the stage's optimizer over the batches, in place; return the losses."""
    opt = spec.optimizer
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    losses = []
    for t, (x, y) in enumerate(batches, start=1):
        loss, grads = gradients(params, x, y)
        losses.append(loss)
        if opt.name == "sgd":
            for p, g in zip(params, grads, strict=True):
                p -= opt.learning_rate * g
            continue
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        lr_t = opt.learning_rate * np.sqrt(1 - opt.beta2**t) / (1 - opt.beta1**t)
        for p, g, mi, vi in zip(params, grads, m, v, strict=True):
            mi[:] = opt.beta1 * mi + (1 - opt.beta1) * g
            vi[:] = opt.beta2 * vi + (1 - opt.beta2) * g * g
            p -= lr_t * mi / (np.sqrt(vi) + opt.epsilon)
    return losses
