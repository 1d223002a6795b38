"""Layers shared by the built-in cells: the fused GRU and LSTM and the default initialiser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clockwork import _checks
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
        _checks.integer("in_features", in_features)
        h = _checks.integer("hidden_features", hidden_features)
        _checks.instance("rngs", rngs, nnx.Rngs)
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


class LSTM(nnx.Module):
    """An LSTM layer fused into two matrix products (TF's ``LSTMCell`` arithmetic).

    ``i, f, g, o = split(W_x x + b + W_h h)``, ``c' = sigmoid(f + forget_bias) * c +
    sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``. Parameters: ``input_kernel
    (I, 4H)`` (Glorot), ``bias (4H)`` (zeros), ``hidden_kernel (H, 4H)`` (orthogonal per
    gate), gates in the order ``i, f, g, o``.
    """

    def __init__(self, in_features: int, hidden_features: int, *, forget_bias: float = 1.0,
                 rngs: nnx.Rngs):
        _checks.integer("in_features", in_features)
        h = _checks.integer("hidden_features", hidden_features)
        self.hidden_features = h
        self.forget_bias = _checks.number("forget_bias", forget_bias)
        _checks.instance("rngs", rngs, nnx.Rngs)
        self.input_kernel = nnx.Param(glorot(rngs.params(), (in_features, 4 * h)))
        self.bias = nnx.Param(jnp.zeros((4 * h,)))
        ortho = nnx.initializers.orthogonal()
        self.hidden_kernel = nnx.Param(
            jnp.concatenate([ortho(rngs.params(), (h, h)) for _ in range(4)], axis=1)
        )

    def project(self, x: jax.Array) -> jax.Array:
        """The carry-independent part of the gates: ``(..., I) -> (..., 4H)``."""
        return add_bias(x @ self.input_kernel[...], self.bias[...])

    def step(self, cell: jax.Array, hidden: jax.Array, projected: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
        """One step from projected inputs ``(B, 4H)``: new ``(cell, hidden)``, each ``(B, H)``."""
        gates = projected + hidden @ self.hidden_kernel[...]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        cell = jax.nn.sigmoid(f + self.forget_bias) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        return cell, jax.nn.sigmoid(o) * jnp.tanh(cell)

    def __call__(self, cell: jax.Array, hidden: jax.Array, x: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        """One step: ``cell, hidden (B, H)``, ``x (B, I)`` -> new ``(cell, hidden)``."""
        return self.step(cell, hidden, self.project(x))
