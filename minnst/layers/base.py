"""Thin layer classes over the functional core, and the two containers.

A layer holds its parameters (``params``: name -> array) and settings, nothing else:

    y, cache = layer.forward(x)
    dx, grads = layer.backward(dy, cache)     # grads keyed like layer.params

Caches are returned, never stored, so one layer object can run on several inputs at
once (content, style and pastiche through the same VGG) and a forward whose backward is
not needed simply drops its cache. Gradients are returned, never accumulated into hidden
buffers.

Containers name their children; their ``params`` are the children's, flattened with dotted
keys (``"res1.conv1.weight"``), and the dict holds the children's very arrays, so an
optimiser that updates ``net.params[k]`` in place updates the layer.

Conditioning: a layer whose output depends on the style (``conditioned = True``, e.g.
``ConditionalInstanceNorm2d``) takes it as a second argument, ``forward(x, style)``, with
``style`` the (N, S) style weights of the batch. Containers are conditioned too and hand
``style`` to their conditioned children only: ``net.forward(x, style)``.
"""
from __future__ import annotations

from collections import OrderedDict


class Layer:
    """Base class: a stateless map with parameters. Subclasses set ``params`` and
    implement ``forward`` / ``backward``."""

    conditioned = False  # True: ``forward(x, style)`` takes the batch's style weights

    def __init__(self):
        self.params: dict = {}
        self.buffers: dict = {}  # non-trained state saved with the model (running stats)
        self.training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, cache):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)[0]

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def named_layers(self, prefix: str = ""):
        yield prefix, self

    def state_dict(self) -> dict:
        """Parameters and buffers of this layer and all children, dotted keys."""
        out = {}
        for name, layer in self.named_layers():
            pre = f"{name}." if name else ""
            for k, v in layer.params.items():
                out[pre + k] = v
            for k, v in layer.buffers.items():
                out[pre + k] = v
        return out

    def load_state_dict(self, state: dict):
        """Copy values into the existing arrays; every key and shape must match."""
        mine = self.state_dict()
        missing = sorted(set(mine) - set(state))
        extra = sorted(set(state) - set(mine))
        if missing or extra:
            raise ValueError(f"state mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
        for k, dst in mine.items():
            src = state[k]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"{k}: shape {tuple(src.shape)} does not match {tuple(dst.shape)}")
            dst[...] = src

    def to(self, xp, dtype=None):
        """Move every parameter and buffer to the array module ``xp`` (and ``dtype``)."""
        for _, layer in self.named_layers():
            for d in (layer.params, layer.buffers):
                for k, v in d.items():
                    d[k] = xp.asarray(v, dtype=dtype or v.dtype)
        if isinstance(self, _Container):
            self._refresh_params()
        return self

    def __repr__(self):
        return f"{self.__class__.__name__}()"


def forward_child(layer: Layer, x, style=None):
    """``layer.forward(x, style)`` for a conditioned layer, else ``layer.forward(x)``."""
    return layer.forward(x, style) if layer.conditioned else layer.forward(x)


class _Container(Layer):
    conditioned = True

    def __init__(self, layers):
        super().__init__()
        if isinstance(layers, dict):
            items = list(layers.items())
        else:
            items = [(str(i), l) for i, l in enumerate(layers)]
        self.layers = OrderedDict(items)
        self._refresh_params()

    def _refresh_params(self):
        for child in self.layers.values():
            if isinstance(child, _Container):
                child._refresh_params()
        self.params = {
            f"{name}.{k}": v
            for name, child in self.layers.items()
            for k, v in child.params.items()
        }

    def named_layers(self, prefix: str = ""):
        yield prefix, self
        for name, child in self.layers.items():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, _Container):
                yield from child.named_layers(full)
            else:
                yield full, child

    def train(self, mode: bool = True):
        self.training = mode
        for child in self.layers.values():
            child.train(mode)
        return self

    @staticmethod
    def _prefixed(name, grads):
        return {f"{name}.{k}": v for k, v in grads.items()}

    def __repr__(self):
        inner = ",\n  ".join(f"{n}: {l!r}".replace("\n", "\n  ") for n, l in self.layers.items())
        return f"{self.__class__.__name__}(\n  {inner}\n)"


class Sequential(_Container):
    """``y = f_n(… f_1(x))``; the cache is the list of the children's caches."""

    def forward(self, x, style=None):
        caches = []
        for layer in self.layers.values():
            x, cache = forward_child(layer, x, style)
            caches.append(cache)
        return x, caches

    def backward(self, dy, cache, add=None):
        """``add``: {child name: gradient} added to the gradient at that child's input, the
        gradient of a further loss term on an intermediate activation."""
        grads = {}
        for (name, layer), c in zip(reversed(self.layers.items()), reversed(cache)):
            dy, g = layer.backward(dy, c)
            if add and name in add:
                dy = dy + add[name]
            grads.update(self._prefixed(name, g))
        return dy, grads


class Residual(_Container):
    """``y = x + body(x)``; the backward adds the two contributions explicitly:
    ``dx = dy + body.backward(dy)``."""

    def __init__(self, body):
        super().__init__({"body": body})

    def forward(self, x, style=None):
        y, cache = self.layers["body"].forward(x, style)
        if y.shape != x.shape:
            raise ValueError(f"residual body changes the shape {x.shape} -> {y.shape}")
        return x + y, cache

    def backward(self, dy, cache):
        dx_body, g = self.layers["body"].backward(dy, cache)
        return dy + dx_body, self._prefixed("body", g)
