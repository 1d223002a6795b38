"""Layers shared by the built-in cells: the fused GRU and the default initialiser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clockwork._util import add_bias

glorot = nnx.initializers.glorot_uniform()


class GRU(nnx.Module):
    """Flax linen's ``GRUCell`` (as in the JAX port) fused into two matrix products.

    ``r = sigmoid(W_ir x + b_ir + W_hr h)``, ``z = sigmoid(W_iz x + b_iz + W_hz h)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Parameters: ``input_kernel (I, 3H)``, ``input_bias (3H)``, ``hidden_kernel (H, 3H)``,
    ``hidden_bias (H)``, gates in the order ``r, z, n``: linen's parameter count (``nnx.GRUCell``
    has no hidden bias).
    """

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs):
        h = hidden_features
        self.hidden_features = h
        self.input_kernel = nnx.Param(glorot(rngs.params(), (in_features, 3 * h)))
        self.input_bias = nnx.Param(jnp.zeros((3 * h,)))
        ortho = nnx.initializers.orthogonal()
        self.hidden_kernel = nnx.Param(
            jnp.concatenate([ortho(rngs.params(), (h, h)) for _ in range(3)], axis=1)
        )
        self.hidden_bias = nnx.Param(jnp.zeros((h,)))

    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        """One step: ``h (B, H)``, ``x (B, I)`` -> new ``h (B, H)``."""
        n_h = self.hidden_features
        xi = add_bias(x @ self.input_kernel[...], self.input_bias[...])
        hh = h @ self.hidden_kernel[...]
        r = jax.nn.sigmoid(xi[:, :n_h] + hh[:, :n_h])
        z = jax.nn.sigmoid(xi[:, n_h : 2 * n_h] + hh[:, n_h : 2 * n_h])
        n = jnp.tanh(xi[:, 2 * n_h :] + r * add_bias(hh[:, 2 * n_h :], self.hidden_bias[...]))
        return (1.0 - z) * n + z * h
