"""The cell protocol, latent-state pytrees and the explicit scan over a cell.

A cell is one step of one level of the hierarchy (docs/write_your_own_cell.md). It has:

* ``feature_size``, ``context_size``, ``embed_size``: the sizes of its output feature,
  of the context it reads from the level above and of the embedding it reads from the
  encoder (``feature_size`` must not depend on ``context_size``);
* ``initial_state(batch_size, dtype)``: the carry before the first step, ``(B, ...)``
  leaves;
* ``cell(state, embed, context, noise, *, use_obs) -> (state, StepOutput(prior,
  posterior))``: one step. ``use_obs`` is static; when it is ``False`` the posterior is
  the prior and ``embed`` is ``None``. The returned state has the structure, shapes and
  dtypes of ``initial_state``.

and optionally:

* ``noise(key, batch_size, dtype)``: the standard noise of one step, ``(B, ...)``
  leaves (a cell without it draws none and receives ``None``). All of a cell's
  randomness comes from here: the unroll draws every step's noise before its scan, so
  the scan is a deterministic function of its inputs, row by row, and may run on each
  device's rows of the batch with the same numbers as on one device;
* the sequence fast path ``prepare(embeds, contexts, noise, *, use_obs)``, which
  computes everything that does not depend on the carry for a whole sequence at once
  (``(B, N, ...)`` in and out), and ``step(state, inputs, *, use_obs)``, which consumes
  one time slice of it. ``cell(state, e, c, n)`` must equal ``step(state, prepare(e[:,
  None], c[:, None], n[:, None])[:, 0])``.

Step ``t`` of an unroll draws its noise from ``fold_in(key, start + t)``, so a step's
randomness depends only on the sequence key and the step's absolute index: an unroll
split into chunks (each given its ``start``) equals the unsplit one.

States are pytrees with a ``feature`` property ``(..., feature_size)`` (what the level
passes down and the decoder reads) and ``kl(prior)`` reduced over the latent axis;
``entropy()`` is optional (the loss reports it where a state has it).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import DTypeLike

from clockwork import _checks
from clockwork.losses.kl import gaussian_entropy, gaussian_kl

REQUIRED = ("feature_size", "context_size", "embed_size", "initial_state", "__call__")
"""The attributes every cell has (see the module docstring)."""


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
        noise: Any,
        *,
        use_obs: bool,
    ) -> tuple[Any, StepOutput]: ...


def has_fast_path(cell: Any) -> bool:
    """Whether ``cell`` offers ``prepare`` and ``step``."""
    return hasattr(cell, "prepare") and hasattr(cell, "step")


def _time_major(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)


def step_keys(key: jax.Array, start: int | jax.Array, steps: int) -> jax.Array:
    """``(steps,)`` keys: ``fold_in(key, start + t)`` for ``t < steps``."""
    _checks.prng_key("key", key)
    _checks.integer("steps", steps, 0)
    return jax.vmap(lambda t: jax.random.fold_in(key, t))(start + jnp.arange(steps))


def draw_noise(
    cell: Cell,
    key: jax.Array,
    batch_size: int,
    steps: int,
    *,
    start: int | jax.Array = 0,
    dtype: DTypeLike = jnp.float32,
) -> Any:
    """The noise of ``steps`` steps of ``cell``: ``(B, steps, ...)`` leaves, or ``None``.

    Step ``t``'s noise is ``cell.noise(fold_in(key, start + t), batch_size, dtype)``.

    Examples:
      >>> from flax import nnx
      >>> from clockwork.cells import RSSMCell
      >>> cell = RSSMCell(4, 3, stoch_size=2, det_size=5, hidden_size=6, rngs=nnx.Rngs(0))
      >>> draw_noise(cell, jax.random.key(0), 8, 10).shape
      (8, 10, 2, 2)
    """
    _checks.prng_key("key", key)
    _checks.integer("batch_size", batch_size)
    _checks.integer("steps", steps, 0)
    if not hasattr(cell, "noise"):
        return None
    keys = step_keys(key, start, steps)
    return jax.vmap(lambda k: cell.noise(k, batch_size, dtype), out_axes=1)(keys)


def unroll(
    cell: Cell,
    state: Any,
    embeds: jax.Array | None,
    contexts: jax.Array,
    noise: Any,
    *,
    use_obs: bool,
    remat: bool = False,
) -> tuple[Any, StepOutput]:
    """Scan ``cell`` over a sequence with ``jax.lax.scan``.

    Equals a loop of ``cell(state, embeds[:, t], contexts[:, t], noise[:, t])``; with
    ``noise = draw_noise(cell, key, B, N)`` it is the cell's unroll under ``key``. It
    is a deterministic function of its arguments that treats batch rows independently,
    so it may run on each device's rows of the batch.

    Args:
      cell: any ``Cell``; its ``prepare``/``step`` fast path is used if it has one.
      state: the carry before the first step, ``(B, ...)`` leaves.
      embeds: ``(B, N, embed_size)``, or ``None`` when ``use_obs`` is ``False``.
      contexts: ``(B, N, context_size)``.
      noise: ``(B, N, ...)`` leaves from ``draw_noise``, or ``None``.
      use_obs: static; whether the posterior reads the embeddings.
      remat: recompute each step's activations in the backward pass (``jax.checkpoint``
        on the scan body), keeping only the carries.
    Returns:
      The last state and the per-step ``StepOutput`` with ``(B, N, ...)`` leaves.
    """
    _checks.flag("use_obs", use_obs)
    _checks.flag("remat", remat)
    if use_obs and embeds is None:
        raise ValueError("use_obs=True needs embeddings")
    batch, steps, _ = _checks.array("contexts", contexts, ("B", "N", cell.context_size))
    if embeds is not None:
        _checks.array("embeds", embeds, (batch, steps, cell.embed_size))
    for leaf in jax.tree.leaves(noise):
        if leaf.shape[:2] != contexts.shape[:2]:
            raise ValueError(
                f"noise has leading shape {leaf.shape[:2]}, expected {contexts.shape[:2]}"
            )
    if not use_obs:
        embeds = None

    fast = has_fast_path(cell)
    if fast:
        inputs = _time_major(cell.prepare(embeds, contexts, noise, use_obs=use_obs))
    else:
        inputs = _time_major((embeds, contexts, noise))

    def body(carry, x):
        if fast:
            carry, out = cell.step(carry, x, use_obs=use_obs)
        else:
            carry, out = cell(carry, *x, use_obs=use_obs)
        # Without observations the posterior is the prior: stack it once.
        return carry, (out if use_obs else out.prior)

    last, outputs = jax.lax.scan(
        jax.checkpoint(body) if remat else body, state, inputs, length=steps
    )
    outputs = _time_major(outputs)
    return last, (outputs if use_obs else StepOutput(outputs, outputs))


def check_cell(cell: Any, name: str = "cell", batch_size: int = 2) -> None:
    """Raise a ``TypeError`` or ``ValueError`` naming ``name`` unless ``cell`` follows
    the protocol.

    Checks the attributes, then runs one step of each path abstractly
    (``jax.eval_shape``: nothing is computed) with and without observations: the new
    state must have the structure, shapes and dtypes of ``initial_state``, the prior and
    posterior must have a ``feature`` of ``(B, feature_size)`` and ``kl(prior)`` of
    ``(B,)``, and the fast path (if any) must return what ``__call__`` returns.
    """
    _checks.integer("batch_size", batch_size)
    missing = [a for a in REQUIRED if not hasattr(cell, a)]
    if missing:
        raise TypeError(
            f"{name} ({type(cell).__name__}) does not follow the Cell protocol: it has no "
            f"{', '.join(missing)}"
        )
    if hasattr(cell, "prepare") != hasattr(cell, "step"):
        have, lack = ("prepare", "step") if hasattr(cell, "prepare") else ("step", "prepare")
        raise TypeError(f"{name} has {have} but no {lack}: the fast path needs both")
    for size in ("feature_size", "context_size", "embed_size"):
        value = getattr(cell, size)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"{name}.{size} must be a non-negative int, got {value!r}")
    b = batch_size

    def run(what: str, fn: Any, *args: Any) -> Any:
        try:
            return jax.eval_shape(fn, *args)
        except Exception as e:  # noqa: BLE001 -- re-raised with the cell's name
            raise TypeError(f"{name} ({type(cell).__name__}): {what} failed: {e}") from e

    state = run("initial_state(batch_size)", lambda: cell.initial_state(b, jnp.float32))
    noise = None
    if hasattr(cell, "noise"):
        noise = run("noise(key, batch_size, dtype)",
                    lambda k: cell.noise(k, b, jnp.float32), jax.random.key(0))
        for leaf in jax.tree.leaves(noise):
            if leaf.shape[:1] != (b,):
                raise ValueError(f"{name}.noise returned a leaf of shape {leaf.shape}; "
                                 f"every leaf must be (batch_size, ...) = ({b}, ...)")
    embed = jax.ShapeDtypeStruct((b, cell.embed_size), jnp.float32)
    context = jax.ShapeDtypeStruct((b, cell.context_size), jnp.float32)
    structure = jax.tree.structure(state)
    shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(state)]
    for use_obs in (True, False):
        call = f"a step with use_obs={use_obs}"
        new, out = run(call, lambda s, e, c, n: cell(s, e, c, n, use_obs=use_obs),
                       state, embed if use_obs else None, context, noise)
        if jax.tree.structure(new) != structure or [(x.shape, x.dtype) for x in jax.tree.leaves(new)] != shapes:
            raise ValueError(
                f"{name}: {call} returned a state {_describe(new)}, but initial_state gives "
                f"{_describe(state)}; a step must keep the carry's structure, shapes and dtypes"
            )
        if not (hasattr(out, "prior") and hasattr(out, "posterior")):
            raise TypeError(f"{name}: {call} must return (state, StepOutput(prior, posterior)), "
                            f"got {type(out).__name__} as the output")
        for part in ("prior", "posterior"):
            s = getattr(out, part)
            for attr in ("feature", "kl"):
                if attr not in dir(s):  # dir() does not evaluate properties
                    raise TypeError(f"{name}: the {part} ({type(s).__name__}) has no {attr!r}")
            feature = run(f"the {part}'s feature", lambda s: s.feature, s)
            if feature.shape != (b, cell.feature_size):
                raise ValueError(f"{name}: the {part}'s feature has shape {feature.shape}, "
                                 f"expected (batch, feature_size) = {(b, cell.feature_size)}")
        kl = run("posterior.kl(prior)", lambda q, p: q.kl(p), out.posterior, out.prior)
        if kl.shape != (b,):
            raise ValueError(f"{name}: posterior.kl(prior) has shape {kl.shape}, expected "
                             f"(batch,) = {(b,)}")
        if has_fast_path(cell):
            def fast(s, e, c, n):
                inputs = cell.prepare(
                    None if e is None else e[:, None], c[:, None],
                    jax.tree.map(lambda x: x[:, None], n), use_obs=use_obs,
                )
                return cell.step(s, jax.tree.map(lambda x: x[:, 0], inputs), use_obs=use_obs)

            got = run(f"prepare and step with use_obs={use_obs}", fast, state,
                      embed if use_obs else None, context, noise)
            if _describe(got) != _describe((new, out)):
                raise ValueError(f"{name}: prepare + step return {_describe(got)}, but a step "
                                 f"returns {_describe((new, out))}")


def _describe(tree: Any) -> str:
    leaves = ", ".join(f"{tuple(x.shape)} {x.dtype}" for x in jax.tree.leaves(tree))
    return f"{jax.tree.structure(tree)} with leaves [{leaves}]"
