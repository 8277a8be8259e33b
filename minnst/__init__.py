"""minnst: neural style transfer from scratch on NumPy and CuPy.

Gatys et al. (optimisation, ``minnst.gatys``) and Johnson et al. (feed-forward,
``minnst.transformer`` / ``minnst.train_fast`` / ``minnst.stylize``), with every layer,
loss gradient and optimiser written by hand. Importing minnst never touches CUDA.
"""
__version__ = "0.1.0"
