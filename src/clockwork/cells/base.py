"""The cell protocol, latent-state pytrees and the explicit scan over a cell.

A cell is one step of one level of the hierarchy. Every cell speaks the same protocol:

* ``feature_size``, ``context_size``, ``embed_size``: sizes of its output feature, of the
  context it reads from the level above and of the embedding it reads from the encoder;
* ``initial_state(batch_size, dtype)``: the zero carry;
* ``cell(state, embed, context, key, use_obs=...) -> (state, StepOutput(prior, posterior))``:
  one step. ``use_obs`` is static; when it is ``False`` the posterior is the prior and the
  embedding is not read.

A cell may also offer a sequence fast path, used by :func:`unroll` when present:
``prepare(embeds, contexts, keys, use_obs=...)`` computes everything that does not depend
on the carry for a whole sequence at once (input projections, noise; ``keys`` holds one
key per step), and ``step(state, inputs, use_obs=...)`` consumes one time slice of it.
``cell(state, e, c, key)`` must equal ``step(state, prepare(e[:, None], c[:, None],
key[None])[:, 0])``.

Step ``t`` of an unroll uses the key ``fold_in(key, start + t)``, so the randomness of a
step depends only on the sequence key and the step's absolute index: an unroll split into
chunks (each given its ``start``) equals the unsplit one.

Under ``clockwork.parallel``'s training step the scan of a cell with the fast path runs on
each shard of the batch (``jax.shard_map``), so no collective runs inside it; its noise
comes from ``prepare``, outside the scan, and does not depend on the mesh.

States are pytrees with a ``feature`` property (what the level passes down and what the
decoder reads) and ``kl(prior)`` / ``entropy()`` methods reduced over the latent axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import DTypeLike

from clockwork._util import per_shard
from clockwork.losses.kl import gaussian_entropy, gaussian_kl


@struct.dataclass
class GaussianState:
    """Latent state of a stochastic cell; every field is ``(..., size)``.

    ``sample``, ``mean`` and ``stddev`` have the stochastic size ``S``; ``det_state``
    and ``det_out`` the deterministic size ``D``.
    """

    sample: jax.Array
    det_state: jax.Array
    det_out: jax.Array
    mean: jax.Array
    stddev: jax.Array

    @property
    def feature(self) -> jax.Array:
        """``concat(sample, det_out)``: ``(..., S + D)``."""
        return jnp.concatenate([self.sample, self.det_out], axis=-1)

    def kl(self, prior: GaussianState) -> jax.Array:
        """``KL(self || prior)`` summed over the latent axis: ``(...)``."""
        return gaussian_kl(self.mean, self.stddev, prior.mean, prior.stddev)

    def entropy(self) -> jax.Array:
        """Entropy of ``Normal(mean, stddev)`` summed over the latent axis: ``(...)``."""
        return gaussian_entropy(self.stddev)


@struct.dataclass
class DeterministicState:
    """State of a deterministic cell: no latent, so its KL and entropy are zero."""

    det_state: jax.Array
    det_out: jax.Array

    @property
    def feature(self) -> jax.Array:
        """``det_out``: ``(..., D)``."""
        return self.det_out

    def kl(self, prior: DeterministicState) -> jax.Array:
        del prior
        return jnp.zeros(self.det_out.shape[:-1], self.det_out.dtype)

    def entropy(self) -> jax.Array:
        return jnp.zeros(self.det_out.shape[:-1], self.det_out.dtype)


class StepOutput(NamedTuple):
    """What one step emits: the prior and the posterior (the prior when not observing)."""

    prior: Any
    posterior: Any


@runtime_checkable
class Cell(Protocol):
    """The protocol every cell follows (see the module docstring)."""

    feature_size: int
    context_size: int
    embed_size: int

    def initial_state(self, batch_size: int, dtype: DTypeLike = jnp.float32) -> Any: ...

    def __call__(
        self,
        state: Any,
        embed: jax.Array | None,
        context: jax.Array,
        key: jax.Array,
        *,
        use_obs: bool,
    ) -> tuple[Any, StepOutput]: ...


def _time_major(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)


def step_keys(key: jax.Array, start: int | jax.Array, steps: int) -> jax.Array:
    """``(steps,)`` keys: ``fold_in(key, start + t)`` for ``t < steps``."""
    return jax.vmap(lambda t: jax.random.fold_in(key, t))(start + jnp.arange(steps))


def unroll(
    cell: Cell,
    state: Any,
    embeds: jax.Array | None,
    contexts: jax.Array,
    key: jax.Array,
    *,
    use_obs: bool,
    start: int | jax.Array = 0,
    remat: bool = False,
) -> tuple[Any, StepOutput]:
    """Scan ``cell`` over a sequence with ``jax.lax.scan``.

    Equals a loop of ``cell(state, embeds[:, t], contexts[:, t], fold_in(key, start + t))``.

    Args:
      cell: any :class:`Cell`; its ``prepare``/``step`` fast path is used if it has one.
      state: the carry before the first step, ``(B, ...)`` leaves.
      embeds: ``(B, N, embed_size)``, or ``None`` when ``use_obs`` is ``False``.
      contexts: ``(B, N, context_size)``.
      key: PRNG key of the sequence.
      use_obs: static; whether the posterior reads the embeddings.
      start: absolute index of the first step (for chunked unrolls).
      remat: recompute each step's activations in the backward pass (``jax.checkpoint``
        on the scan body), keeping only the carries.
    Returns:
      The last state and the per-step ``StepOutput`` with ``(B, N, ...)`` leaves.
    """
    if use_obs and embeds is None:
        raise ValueError("use_obs=True needs embeddings")
    steps = contexts.shape[1]
    if embeds is not None and embeds.shape[1] != steps:
        raise ValueError(f"embeddings have {embeds.shape[1]} steps but contexts have {steps}")
    if not use_obs:
        embeds = None
    keys = step_keys(key, start, steps)

    fast = hasattr(cell, "prepare") and hasattr(cell, "step")
    if fast:
        inputs = _time_major(cell.prepare(embeds, contexts, keys, use_obs=use_obs))
    else:
        inputs = (None if embeds is None else jnp.swapaxes(embeds, 0, 1), _time_major(contexts), keys)

    def scan(cell: Any, state: Any, inputs: Any) -> tuple[Any, Any]:
        def body(carry, x):
            if fast:
                carry, out = cell.step(carry, x, use_obs=use_obs)
            else:
                embed, context, k = x
                carry, out = cell(carry, embed, context, k, use_obs=use_obs)
            # Without observations the posterior is the prior: stack it once.
            return carry, (out if use_obs else out.prior)

        return jax.lax.scan(jax.checkpoint(body) if remat else body, state, inputs, length=steps)

    if fast:
        # The noise comes from `prepare`, so the scan may run on each shard of the batch.
        last, outputs = per_shard(scan, cell, (state, inputs), (0, 1), (0, 1))
    else:
        last, outputs = scan(cell, state, inputs)
    outputs = _time_major(outputs)
    return last, (outputs if use_obs else StepOutput(outputs, outputs))
