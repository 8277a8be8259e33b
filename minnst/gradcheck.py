"""Finite-difference gradient checks (NumPy, float64), in the manner of cs231n.

* ``eval_numerical_gradient(f, x)``: central differences of a scalar function at every
  coordinate of ``x``.
* ``eval_numerical_gradient_array(f, x, dy)``: the same for an array-valued ``f`` through
  the scalar ``Σ f(x)·dy``; this is exactly what a layer's backward computes from ``dy``.
* ``grad_check_sparse``: a handful of random coordinates, for large inputs.
* ``directional_check``: one random direction ``v``: compares ``<∇f, v>`` with
  ``(f(x+hv) − f(x−hv)) / 2h``, for whole networks.
* ``rel_error(a, b) = max|a−b| / max(1e-8, |a|+|b|)``, the max taken elementwise.

All functions perturb a private copy of ``x`` and never modify the caller's array.
"""
from __future__ import annotations

import numpy as np


def rel_error(a, b) -> float:
    """Largest elementwise relative error ``|a−b| / max(1e-8, |a|+|b|)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def _central_difference(f, x, i, h: float) -> float:
    """``(f(x + h e_i) − f(x − h e_i)) / 2h``, restoring ``x[i]`` afterwards."""
    old = x[i]
    x[i] = old + h
    fp = float(f(x))
    x[i] = old - h
    fm = float(f(x))
    x[i] = old
    return (fp - fm) / (2 * h)


def eval_numerical_gradient(f, x, h: float = 1e-5) -> np.ndarray:
    """``∂f/∂x`` by central differences; ``f`` maps an array like ``x`` to a float."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        grad[i] = _central_difference(f, x, i, h)
    return grad


def eval_numerical_gradient_array(f, x, dy, h: float = 1e-5) -> np.ndarray:
    """Gradient of ``Σ f(x)·dy`` w.r.t. ``x`` by central differences."""
    dy = np.asarray(dy, dtype=np.float64)
    return eval_numerical_gradient(lambda z: np.sum(np.asarray(f(z), dtype=np.float64) * dy), x, h)


def grad_check_sparse(f, x, analytic_grad, num_checks: int = 20, h: float = 1e-5,
                      seed: int = 0) -> float:
    """Relative error of ``analytic_grad`` against central differences at random coordinates."""
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=np.float64)
    analytic_grad = np.asarray(analytic_grad, dtype=np.float64)
    worst = 0.0
    for _ in range(num_checks):
        i = tuple(int(rng.integers(n)) for n in x.shape)
        worst = max(worst, rel_error(_central_difference(f, x, i, h), analytic_grad[i]))
    return worst


def directional_check(f, x, analytic_grad, h: float = 1e-4, seed: int = 0,
                      direction=None) -> tuple[float, float, float]:
    """Compare ``<∇f, v>`` with ``(f(x+hv) − f(x−hv)) / 2h`` along a random unit ``v``.

    Returns ``(rel_error, numeric, analytic)``.
    """
    x = np.array(x, dtype=np.float64)
    if direction is None:
        v = np.random.default_rng(seed).standard_normal(x.shape)
    else:
        v = np.array(direction, dtype=np.float64)
    v /= np.linalg.norm(v)
    numeric = (float(f(x + h * v)) - float(f(x - h * v))) / (2 * h)
    analytic = float(np.sum(np.asarray(analytic_grad, dtype=np.float64) * v))
    return rel_error(numeric, analytic), numeric, analytic
