"""``CWVAE``: an encoder, a hierarchy of cells and a decoder, with its loss.

The model is built from its parts, each replaceable by a module of one's own:

* an **encoder** with a ``frame_shape`` ``(H, W, C)`` attribute, mapping frames
  ``(B, T, H, W, C)`` to one embedding per level, ``(B, ceil(T / P_l), E_l)``; it is
  called as ``encoder(frames, chunk=..., remat=...)``, and may use or ignore these two
  speed hints (the conv encoder runs its stack over ``chunk`` frames at a time);
* a ``Hierarchy`` of cells on a clock;
* a **decoder** mapping level 0's features ``(N, F)`` to frame means ``(N, H, W, C)``.

``CWVAE.from_config`` builds the paper's conv nets and a hierarchy of registered
cells from a ``ModelConfig``; ``build_hierarchy`` is its
hierarchy half.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from clockwork import _checks
from clockwork import cells as cells_lib
from clockwork._util import map_chunks
from clockwork.config import LossConfig, ModelConfig, SpeedConfig
from clockwork.hierarchy import Clock, Hierarchy, parse_use_obs
from clockwork.hierarchy.hierarchy import Rollout, UseObs
from clockwork.losses.elbo import PerLevel, elbo_from_nll, reconstruction_nll
from clockwork.nets import ConvDecoder, ConvEncoder


def build_hierarchy(
    cells: Sequence[tuple[str, Mapping[str, Any]]],
    clock: Clock,
    *,
    embed_size: int,
    action_size: int = 0,
    remat: bool = False,
    rngs: nnx.Rngs,
) -> Hierarchy:
    """A hierarchy of cells made by ``clockwork.cells.make``, one per level.

    Each cell's context size is the feature size of the cell above it (plus
    ``action_size`` at level 0); the top cell's is its own feature size, so that the
    top level reads zeros of that size. Feature sizes come from the cells themselves
    (``clockwork.cells.feature_size``). Cells are built fastest level first.

    Args:
      cells: ``(name, options)`` per level, fastest first (``ModelConfig.cells()``).
      clock: the levels' clock.
      embed_size: the size of every level's embedding.
    """
    if len(cells) != clock.levels:
        raise ValueError(f"{len(cells)} cells for a clock of {clock.levels} levels")
    features = []
    for level, (name, options) in enumerate(cells):
        try:
            features.append(cells_lib.feature_size(name, embed_size=embed_size, **options))
        except (TypeError, ValueError) as e:
            raise type(e)(f"cells[{level}]: {e}") from e
    built = []
    for level, (name, options) in enumerate(cells):
        context = features[min(level + 1, len(cells) - 1)] + (action_size if level == 0 else 0)
        built.append(cells_lib.make(name, embed_size=embed_size, context_size=context,
                                    rngs=rngs, **options))
    return Hierarchy(built, clock, action_size=action_size, remat=remat)


class CWVAE(nnx.Module):
    """The Clockwork VAE (docs/model.md): encoder, hierarchy and decoder.

    Args:
      encoder: frames ``(B, T, H, W, C)`` to per-level embeddings; has ``frame_shape``.
      hierarchy: the cells on their clock.
      decoder: features ``(N, F)`` to frame means ``(N, H, W, C)``.
      dec_stddev: the decoder's fixed stddev.
      beta: the per-level KL weights.
      free_nats: per-sequence free nats (TF code).
      kl_grad_post_perc: the JAX port's KL balancing.
      free_bits: per-step free bits (DreamerV3).
      kl_balance: DreamerV3's KL balancing ``(dyn, rep)``. All six are the loss's
        options, as in ``LossConfig`` (docs/model.md#loss).
      conv_chunk: the loss runs the encoder and the decoder (with the likelihood) over
        this many frames at a time, and predictions are decoded so (``None``: all at
        once): bounded memory, the same numbers. The open loop encodes its context at once.
      remat: recompute each chunk in the backward pass.

    Every part is checked when the model is built, abstractly: the embeddings must fit
    the cells and the decoder's frames the encoder's. Every method checks its arguments
    (``check_frames``, keys, lengths, ``use_obs``) and raises a ``TypeError`` or
    ``ValueError`` naming the argument.

    Examples:
      >>> from clockwork.config import preset
      >>> p = preset("mmnist")
      >>> model = CWVAE.from_config(p.model.replace(levels=2, temporal_factor=2), rngs=nnx.Rngs(0))
      >>> frames = jnp.zeros((1, 4, 64, 64, 1))
      >>> loss, metrics = model.loss(frames, jax.random.key(0))
      >>> model.open_loop(frames[:, :2], 2, jax.random.key(1)).shape
      (1, 2, 64, 64, 1)
    """

    def __init__(
        self,
        encoder: nnx.Module,
        hierarchy: Hierarchy,
        decoder: nnx.Module,
        *,
        dec_stddev: float = 1.0,
        beta: PerLevel = None,
        free_nats: PerLevel = None,
        kl_grad_post_perc: float | None = None,
        free_bits: PerLevel = None,
        kl_balance: tuple[float, float] | None = None,
        conv_chunk: int | None = 50,
        remat: bool = False,
    ):
        _checks.instance("hierarchy", hierarchy, Hierarchy)
        loss = LossConfig(dec_stddev, beta, free_nats, kl_grad_post_perc, free_bits,
                          kl_balance)  # validates
        loss.check_levels(hierarchy.levels)
        if conv_chunk is not None:
            _checks.integer("conv_chunk", conv_chunk)
        _checks.flag("remat", remat)
        _check_parts(encoder, hierarchy, decoder)
        self.encoder = encoder
        self.hierarchy = hierarchy
        self.decoder = decoder
        self.dec_stddev = loss.dec_stddev
        self.beta = loss.beta
        self.free_nats = loss.free_nats
        self.kl_grad_post_perc = loss.kl_grad_post_perc
        self.free_bits = loss.free_bits
        self.kl_balance = loss.kl_balance
        self.conv_chunk = conv_chunk
        self.remat = remat

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        *,
        loss: LossConfig | None = None,
        speed: SpeedConfig | None = None,
        rngs: nnx.Rngs,
    ) -> CWVAE:
        """The paper's conv encoder and decoder around a hierarchy of ``config.cells()``.

        Parameters are drawn in the order encoder, cells from the fastest level up,
        decoder.
        """
        _checks.instance("config", config, ModelConfig)
        loss = LossConfig() if loss is None else _checks.instance("loss", loss, LossConfig)
        speed = SpeedConfig() if speed is None else _checks.instance("speed", speed, SpeedConfig)
        _checks.instance("rngs", rngs, nnx.Rngs)
        clock = config.clock
        encoder = ConvEncoder(
            clock, frame_size=config.frame_size, channels=config.channels, channel_mult=config.channel_mult,
            filters=config.filters, dense_layers=config.enc_dense_layers,
            dense_embed_size=config.enc_dense_embed_size, conv_impl=speed.conv_impl,
            conv_product_dtype=speed.conv_product_dtype, rngs=rngs,
        )
        hierarchy = build_hierarchy(
            config.cells(), clock, embed_size=encoder.embed_size,
            action_size=config.action_size, remat=speed.remat, rngs=rngs,
        )
        decoder = ConvDecoder(
            hierarchy.cells[0].feature_size, frame_size=config.frame_size, channels=config.channels,
            channel_mult=config.channel_mult, filters=config.filters,
            conv_impl=speed.conv_impl, conv_product_dtype=speed.conv_product_dtype, rngs=rngs,
        )
        return cls(
            encoder, hierarchy, decoder, dec_stddev=loss.dec_stddev, beta=loss.beta,
            free_nats=loss.free_nats, kl_grad_post_perc=loss.kl_grad_post_perc,
            free_bits=loss.free_bits, kl_balance=loss.kl_balance,
            conv_chunk=speed.conv_chunk, remat=speed.remat,
        )

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the frames the model reads and writes."""
        return tuple(self.encoder.frame_shape)

    def check_frames(self, frames: Any, name: str = "frames", *, min_frames: int = 0) -> None:
        """Raise unless ``frames`` is a float array ``(B, T, H, W, C)`` of this model with
        ``B >= 1`` and ``T >= min_frames``, all finite when it is concrete (not traced).

        Raises:
          TypeError: not an array, or not floats.
          ValueError: another shape, or (a concrete array) NaN or infinite values.
        """
        shape = _checks.float_array(
            name, frames, ("B", "T", *self.frame_shape), what="floats in [0, 1]",
            hint=" (convert uint8 video with x.astype(float32) / 255)",
        )
        if shape[0] < 1 or shape[1] < min_frames:
            need = f"B >= 1 sequences of T >= {min_frames} frames" if min_frames else "B >= 1 sequences"
            raise ValueError(f"{name} must hold {need}, got shape {shape}")
        _checks.finite(name, frames)

    def _check_actions(self, actions: jax.Array | None, batch: int, frames: int) -> None:
        size = self.hierarchy.action_size
        if size and actions is None:
            raise ValueError(f"this model takes actions of size {size}")
        if actions is not None and getattr(actions, "shape", None) != (batch, frames, size):
            raise ValueError(
                f"actions must have shape {(batch, frames, size)}, got {getattr(actions, 'shape', actions)}"
            )

    def noise(
        self, key: jax.Array, batch_size: int, frames: int, dtype: Any = jnp.float32
    ) -> tuple[Any, ...]:
        """The noise of an observation of ``frames`` frames under ``key``
        (``Hierarchy.noise``): ``loss(x, key) == loss(x, noise=noise(key, B, T))``."""
        return self.hierarchy.noise(key, frames, batch_size, dtype=dtype)

    def observe(
        self,
        frames: jax.Array,
        key: jax.Array | None = None,
        *,
        noise: Sequence[Any] | None = None,
        use_obs: UseObs = True,
        actions: jax.Array | None = None,
    ) -> Rollout:
        """Encode ``(B, T, H, W, C)`` frames and unroll the posterior (``key`` or ``noise``)."""
        self.check_frames(frames, min_frames=1)
        if key is not None:
            _checks.prng_key("key", key)
        parse_use_obs(use_obs, self.hierarchy.levels)
        self._check_actions(actions, frames.shape[0], frames.shape[1])
        embeds = self.encoder(frames, chunk=self.conv_chunk, remat=self.remat)
        return self.hierarchy.observe(embeds, key, noise=noise, use_obs=use_obs, actions=actions)

    def loss(
        self,
        frames: jax.Array,
        key: jax.Array | None = None,
        *,
        noise: Sequence[Any] | None = None,
        actions: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Negative ELBO per frame (docs/model.md#loss) and its metrics.

        Args:
          frames: ``(B, T, H, W, C)`` floats in ``[0, 1]``.
          key: PRNG key for the posterior samples; or give ``noise`` from ``noise``.
          actions: ``(B, T, action_size)`` when the model takes actions.
        """
        rollout = self.observe(frames, key, noise=noise, actions=actions)
        features = rollout.posteriors[0].feature
        chunk = self.conv_chunk
        if chunk is None:
            nll = jnp.mean(reconstruction_nll(frames, self.decode(features), self.dec_stddev))
        else:
            stddev = self.dec_stddev

            def frame_nll(decoder: nnx.Module, args: tuple[jax.Array, jax.Array]) -> jax.Array:
                feature, frame = args
                return reconstruction_nll(frame, decoder(feature), stddev)

            flat = (features.reshape(-1, features.shape[-1]), frames.reshape(-1, *frames.shape[2:]))
            nll = map_chunks(frame_nll, self.decoder, flat, chunk, remat=self.remat)
            nll = jnp.sum(nll) / frames.shape[0]
        return elbo_from_nll(
            nll, frames.shape[1], rollout.posteriors, rollout.priors, beta=self.beta,
            free_nats=self.free_nats, kl_grad_post_perc=self.kl_grad_post_perc,
            free_bits=self.free_bits, kl_balance=self.kl_balance,
        )

    def decode(self, features: jax.Array) -> jax.Array:
        """Decoded means ``(..., H, W, C)`` of level 0's ``(..., F)`` features, over
        ``conv_chunk`` frames at a time."""
        _checks.float_array("features", features, (..., self.hierarchy.cells[0].feature_size))
        chunk = self.conv_chunk
        flat = features.reshape(-1, features.shape[-1])
        if chunk is None:
            out = self.decoder(flat)
        else:
            out = map_chunks(lambda decoder, f: decoder(f), self.decoder, flat, chunk)
        return out.reshape(*features.shape[:-1], *out.shape[1:])

    def open_loop(
        self,
        context: jax.Array,
        horizon: int,
        key: jax.Array,
        *,
        use_obs: UseObs = True,
        actions: jax.Array | None = None,
        chunk: int | None = None,
    ) -> jax.Array | Iterator[jax.Array]:
        """Predict ``horizon`` frames after the ``context`` frames (docs/model.md#open-loop-prediction).

        Observes ``context`` (its length a multiple of the top period), then imagines from
        the last states and decodes level 0's prior features.

        Args:
          context: ``(B, ctx, H, W, C)`` floats in ``[0, 1]``.
          horizon: frames to predict.
          key: PRNG key.
          use_obs: per-level observation flags for the context, e.g. ``"TTF"``.
          actions: ``(B, ctx + horizon, action_size)`` when the model takes actions.
          chunk: ``None`` returns all predictions ``(B, horizon, H, W, C)`` at once (and
            may run under ``jax.jit``). A positive multiple of the top period returns an
            iterator of ``(B, <= chunk, H, W, C)`` predictions instead, each imagined from
            the last states of the one before and decoded at once, so memory does not
            grow with the horizon; their concatenation equals the whole prediction for
            the same key. The iterator runs its own compiled steps.
        """
        self.check_frames(context, "context")
        clock = self.hierarchy.clock
        ctx = clock.check_top_multiple(context.shape[1], "context length")
        _checks.integer("horizon", horizon, 0)
        _checks.prng_key("key", key)
        flags = parse_use_obs(use_obs, self.hierarchy.levels)
        self._check_actions(actions, context.shape[0], ctx + horizon)
        if chunk is not None:
            clock.check_top_multiple(_checks.integer("chunk", chunk), "chunk")
            return self._open_loop_chunks(context, horizon, key, flags, actions, chunk)
        embeds = self.encoder(context, chunk=None, remat=False)
        _, imagined = self.hierarchy.open_loop(
            embeds, horizon, key, use_obs=flags, actions=actions
        )
        return self.decode(imagined.priors[0].feature)

    def _open_loop_chunks(
        self, context: jax.Array, horizon: int, key: jax.Array, flags: tuple[bool, ...],
        actions: jax.Array | None, chunk: int,
    ) -> Iterator[jax.Array]:
        ctx = context.shape[1]
        graphdef, params = nnx.split(self)
        k_obs, k_img = jax.random.split(key)
        seen = None if actions is None else actions[:, :ctx]
        states = _observe_last(graphdef, params, context, k_obs, flags, seen)
        for start in range(0, horizon, chunk):
            future = None
            if actions is not None:
                future = actions[:, ctx + start : ctx + start + chunk]
                future = jnp.pad(future, [(0, 0), (0, chunk - future.shape[1]), (0, 0)])
            states, frames = _imagine_decode(graphdef, params, states, k_img, start, chunk, future)
            yield frames[:, : min(chunk, horizon - start)]


def _check_parts(encoder: Any, hierarchy: Hierarchy, decoder: Any) -> None:
    """Abstract runs of the encoder and decoder against the hierarchy's cells."""
    shape = getattr(encoder, "frame_shape", None)
    if shape is None or len(tuple(shape)) != 3:
        raise TypeError(f"the encoder ({type(encoder).__name__}) needs a frame_shape (H, W, C) attribute")
    clock = hierarchy.clock
    frames = jax.ShapeDtypeStruct((1, clock.top_period, *shape), jnp.float32)
    try:
        embeds = jax.eval_shape(lambda x: encoder(x, chunk=None, remat=False), frames)
    except Exception as e:  # noqa: BLE001 -- re-raised naming the part
        raise TypeError(f"the encoder ({type(encoder).__name__}) failed on frames {frames.shape}: {e}") from e
    if not isinstance(embeds, (list, tuple)) or len(embeds) != hierarchy.levels:
        raise ValueError(f"the encoder must return one embedding per level ({hierarchy.levels}), "
                         f"got {jax.tree.map(lambda x: x.shape, embeds)}")
    for level, (e, n) in enumerate(zip(embeds, clock.num_steps(clock.top_period))):
        want = (1, n, hierarchy.cells[level].embed_size)
        if tuple(e.shape) != want:
            raise ValueError(f"the encoder's embedding of level {level} has shape {tuple(e.shape)} "
                             f"for {clock.top_period} frames, but cells[{level}] reads {want}")
    feature = jax.ShapeDtypeStruct((1, hierarchy.cells[0].feature_size), jnp.float32)
    try:
        out = jax.eval_shape(decoder, feature)
    except Exception as e:  # noqa: BLE001 -- re-raised naming the part
        raise TypeError(f"the decoder ({type(decoder).__name__}) failed on level 0's features "
                        f"{feature.shape}: {e}") from e
    if getattr(out, "shape", None) != (1, *shape):
        raise ValueError(f"the decoder maps features {feature.shape} to {getattr(out, 'shape', out)}, "
                         f"expected frames {(1, *shape)}")


@functools.partial(jax.jit, static_argnums=(0, 4))
def _observe_last(graphdef, params, frames, key, use_obs, actions):
    model = nnx.merge(graphdef, params)
    embeds = model.encoder(frames, chunk=None, remat=False)
    return model.hierarchy.observe(embeds, key, use_obs=use_obs, actions=actions).last


@functools.partial(jax.jit, static_argnums=(0, 5))
def _imagine_decode(graphdef, params, states, key, start, frames, actions):
    model = nnx.merge(graphdef, params)
    rollout = model.hierarchy.imagine(states, frames, key, start=start, actions=actions)
    return rollout.last, model.decode(rollout.priors[0].feature)
