"""Style transfer by optimisation (Gatys, Ecker & Bethge 2016).

The pastiche's pixels are the variables. Each evaluation runs the image through the
frozen VGG16 (up to the deepest layer used), adds

    L = α · Σ_{l ∈ content} L_content(F_l, P_l) + β · Σ_{l ∈ style} w_l · E_l(F_l, A_l) + λ_tv · TV(x)

and carries the gradient back to the pixels. ``perceptual.py`` assembles that loss (the
same one the fast method trains with), ``losses.py`` has the formulas, ``docs/gatys.md``
derives them. Two optimisers over the pixel image in [0, 1]: scipy's L-BFGS-B with bounds
[0, 1] (default; float64 only at scipy's boundary) or projected Adam.

    obj = Objective(content, [style], beta=1e3)
    loss, grad = obj.loss_and_grad(x)           # x like content: (H, W, 3) in [0, 1]
    result = stylize(content, [style], GatysConfig(size=256, iterations=200))

The package: ``objective`` (the objective of one pastiche), ``config`` (``GatysConfig``
and its checks), ``run`` (``stylize``), ``batch`` (batches and sweeps: output names, one
run as a task for a Dask worker or this process), ``cli`` (``python -m minnst.gatys --help``).
"""
from ..errors import ConfigError
from ..perceptual import LossTerms
from .batch import Run, RunOutput, RunTask, plan_runs, run_task
from .config import (DEFAULT_STYLE_WEIGHT, DEFAULT_TV_WEIGHT, INITS, OPTIMIZERS, PRESERVE_COLORS,
                     TOL_WINDOW, GatysConfig)
from .objective import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, Objective
from .run import NonFiniteLossError, Progress, StylizeInterrupted, StylizeResult, stylize
