"""The optimisers: Adam (Kingma & Ba 2015) by hand, and the one driver of scipy's L-BFGS-B.

Adam, over a dict of arrays updated in place.

For each parameter θ with gradient g, at step t = 1, 2, …:

    m ← β₁·m + (1 − β₁)·g            v ← β₂·v + (1 − β₂)·g²
    θ ← θ − lr_t · m / (√v + ε̂),     lr_t = lr·√(1 − β₂ᵗ) / (1 − β₁ᵗ),  ε̂ = ε·√(1 − β₂ᵗ)

which is exactly ``θ − lr·m̂ / (√v̂ + ε)`` with the bias-corrected ``m̂ = m/(1 − β₁ᵗ)``,
``v̂ = v/(1 − β₂ᵗ)``, rearranged so the corrections are two scalars instead of two
array passes. The moments have the parameters' dtype and array module.

    opt = Adam(net.params, lr=1e-3)
    opt.step(grads)                      # grads keyed like params; missing/None = no gradient
    state = opt.state_dict()             # {"t": int, "lr": …, "m.<name>": array, "v.<name>": array}
    opt.load_state_dict(state)

``params`` is any ``dict[str, array]`` (a network's ``params``, or a single image for the
Gatys optimisation); the arrays are modified in place, so views held elsewhere (a layer's
own ``params``) see the update.

``lbfgs(fun, z0, lower, upper, iterations, …)`` runs scipy's L-BFGS-B with box bounds on a
flat float64 vector; the Gatys method (``gatys.stylize``) and the experiments use it.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_xp


class Adam:
    def __init__(self, params: dict, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.params = params
        self.lr, self.betas, self.eps = float(lr), (float(b1), float(b2)), float(eps)
        self.t = 0
        self.m = {k: get_xp(p).zeros_like(p) for k, p in params.items()}
        self.v = {k: get_xp(p).zeros_like(p) for k, p in params.items()}

    def step(self, grads: dict):
        """One update of every parameter that has a gradient in ``grads``."""
        unknown = set(grads) - set(self.params)
        if unknown:
            raise KeyError(f"gradients for unknown parameters: {sorted(unknown)[:5]}")
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        lr_t = self.lr * math.sqrt(c2) / c1
        eps_t = self.eps * math.sqrt(c2)
        for k, p in self.params.items():
            g = grads.get(k)
            if g is None:
                continue
            if g.shape != p.shape:
                raise ValueError(f"gradient of {k} has shape {tuple(g.shape)}, parameter {tuple(p.shape)}")
            xp = get_xp(p)
            g = g.astype(p.dtype, copy=False)
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            p -= lr_t * m / (xp.sqrt(v) + eps_t)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """``{"t", "lr", "beta1", "beta2", "eps"}`` as Python numbers plus the moments
        ``"m.<name>"``, ``"v.<name>"`` (the live arrays; copy before mutating)."""
        state = {"t": self.t, "lr": self.lr, "beta1": self.betas[0], "beta2": self.betas[1],
                 "eps": self.eps}
        for k in self.params:
            state[f"m.{k}"] = self.m[k]
            state[f"v.{k}"] = self.v[k]
        return state

    def load_state_dict(self, state: dict):
        """Restore a ``state_dict()``: step count, hyper-parameters and every moment (copied
        into the existing arrays; names and shapes must match the parameters)."""
        for k, p in self.params.items():
            for which in ("m", "v"):
                key = f"{which}.{k}"
                if key not in state:
                    raise ValueError(f"optimiser state lacks {key}")
                a = state[key]
                if tuple(a.shape) != tuple(p.shape):
                    raise ValueError(f"optimiser state {key} has shape {tuple(a.shape)}, "
                                     f"parameter {tuple(p.shape)}")
        extra = [k for k in state if k[:2] in ("m.", "v.") and k[2:] not in self.params]
        if extra:
            raise ValueError(f"optimiser state for unknown parameters: {extra[:5]}")
        self.t = int(state["t"])
        self.lr = float(state.get("lr", self.lr))
        self.betas = (float(state.get("beta1", self.betas[0])), float(state.get("beta2", self.betas[1])))
        self.eps = float(state.get("eps", self.eps))
        for k, p in self.params.items():
            xp = get_xp(p)
            self.m[k][...] = xp.asarray(state[f"m.{k}"], dtype=p.dtype)
            self.v[k][...] = xp.asarray(state[f"v.{k}"], dtype=p.dtype)


# --------------------------------------------------------------------------- L-BFGS-B

class StopOptimization(Exception):
    """Raised by an objective to end an ``lbfgs`` run early; the message is the reason."""


def lbfgs(fun, z0, lower: float, upper: float, iterations: int, memory: int = 10,
          on_iteration=None, gtol: float | None = None, ftol: float | None = None) -> str:
    """Minimise ``fun`` with scipy's L-BFGS-B from ``z0`` within ``[lower, upper]``.

    ``fun(z) -> (float, flat float64 gradient)`` on the flat float64 vector ``z`` (scipy
    reuses ``z``: copy it to keep it). At most ``iterations`` iterations (and
    ``3·iterations + 20`` evaluations), ``memory`` correction pairs. After each iteration
    ``on_iteration(intermediate_result)`` (scipy's ``OptimizeResult`` with ``x`` and
    ``fun``) may return a reason to stop. ``gtol``/``ftol``: scipy's tolerances (None: its
    defaults; 0 runs the whole budget). Returns why the run ended: the reason given by
    ``on_iteration`` or a ``StopOptimization`` raised by ``fun``, else scipy's message.
    Needs scipy ≥ 1.11 (the ``intermediate_result`` callback that may stop the run).
    """
    from scipy.optimize import fmin_l_bfgs_b

    stopped = []

    def callback(intermediate_result):
        reason = on_iteration(intermediate_result) if on_iteration is not None else None
        if reason:
            stopped.append(reason)
            raise StopIteration

    # fmin_l_bfgs_b, not minimize: minimize turns any bounds into a Bounds object and back
    # into a list of n fresh (lo, hi) tuples of fresh floats, 112 bytes per value alive for
    # the whole run (4 GB at 4096×3072); fmin_l_bfgs_b hands scipy's solver our list of n
    # references to one tuple (8 bytes per value). The same solver, options and bits.
    bounds = [(float(lower), float(upper))] * z0.size
    options = {"m": memory, "maxiter": iterations, "maxfun": 3 * iterations + 20}
    if gtol is not None:
        options["pgtol"] = gtol
    if ftol is not None:
        options["factr"] = ftol / np.finfo(float).eps
    try:
        _, _, info = fmin_l_bfgs_b(fun, z0, bounds=bounds, callback=callback, **options)
    except StopOptimization as e:
        return str(e)
    if stopped:
        return stopped[0]
    msg = info["task"].decode() if isinstance(info["task"], bytes) else str(info["task"])
    return f"L-BFGS-B: {msg.lower()}"
