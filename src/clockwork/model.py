"""``CWVAE``: conv encoder, hierarchy of cells and conv decoder, with its loss."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from clockwork.cells import GRUCell, RSSMCell
from clockwork.config import CWVAEConfig
from clockwork.hierarchy import Hierarchy, parse_use_obs
from clockwork.hierarchy.hierarchy import Rollout, UseObs
from clockwork._util import map_chunks
from clockwork.losses import elbo_from_nll, reconstruction_nll
from clockwork.nets import FRAME_SIZE, ConvDecoder, ConvEncoder


def build_cells(config: CWVAEConfig, embed_size: int, rngs: nnx.Rngs) -> list:
    """One cell per level from the config's per-level fields."""
    kinds = config.per_level("cell")
    stoch, det, hidden = (config.per_level(n) for n in ("stoch_size", "det_size", "hidden_size"))

    def feature(level: int) -> int:
        return det[level] + (stoch[level] if kinds[level] == "rssm" else 0)

    cells = []
    for level in range(config.levels):
        top = level + 1 == config.levels
        context = feature(level) if top else feature(level + 1)
        if level == 0:
            context += config.action_size
        if kinds[level] == "rssm":
            cell = RSSMCell(
                embed_size, context, stoch_size=stoch[level], det_size=det[level],
                hidden_size=hidden[level], min_stddev=config.min_stddev,
                stddev_shift=config.stddev_shift, rngs=rngs,
            )
        else:
            cell = GRUCell(embed_size, context, det_size=det[level], hidden_size=hidden[level],
                           rngs=rngs)
        cells.append(cell)
    return cells


class CWVAE(nnx.Module):
    """The Clockwork VAE of SPEC.md.

    >>> model = CWVAE(CWVAEConfig.preset("mmnist", levels=2, temporal_factor=2), rngs=nnx.Rngs(0))
    >>> frames = jnp.zeros((1, 4, 64, 64, 1))
    >>> loss, metrics = model.loss(frames, jax.random.key(0))
    >>> model.open_loop(frames, 2, jax.random.key(1)).shape
    (1, 2, 64, 64, 1)
    """

    def __init__(self, config: CWVAEConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, CWVAEConfig):
            raise TypeError(f"config must be a CWVAEConfig, got {type(config).__name__}")
        self.config = config
        clock = config.clock
        self.encoder = ConvEncoder(
            clock, channels=config.channels, channel_mult=config.channel_mult,
            filters=config.filters, dense_layers=config.enc_dense_layers,
            dense_embed_size=config.enc_dense_embed_size, conv_impl=config.conv_impl, rngs=rngs,
        )
        cells = build_cells(config, self.encoder.embed_size, rngs)
        self.hierarchy = Hierarchy(
            cells, clock, action_size=config.action_size, remat=config.remat
        )
        self.decoder = ConvDecoder(
            cells[0].feature_size, channels=config.channels, channel_mult=config.channel_mult,
            filters=config.filters, conv_impl=config.conv_impl, rngs=rngs,
        )

    def check_frames(self, frames: jax.Array, name: str = "frames") -> None:
        """Raise unless ``frames`` is a float array ``(B, T, 64, 64, C)`` with this C."""
        shape = getattr(frames, "shape", None)
        c = self.config.channels
        if shape is None or len(shape) != 5 or tuple(shape[2:]) != (FRAME_SIZE, FRAME_SIZE, c):
            raise ValueError(f"{name} must have shape (B, T, 64, 64, {c}), got {shape}")
        if not jnp.issubdtype(frames.dtype, jnp.floating):
            raise TypeError(
                f"{name} must be floats in [0, 1], got dtype {frames.dtype} "
                "(convert uint8 video with x.astype(float32) / 255)"
            )

    def _check_actions(self, actions: jax.Array | None, batch: int, frames: int) -> None:
        if self.config.action_size and actions is None:
            raise ValueError(f"this model takes actions of size {self.config.action_size}")
        if actions is not None and actions.shape != (batch, frames, self.config.action_size):
            raise ValueError(
                f"actions must have shape {(batch, frames, self.config.action_size)}, "
                f"got {actions.shape}"
            )

    def observe(
        self,
        frames: jax.Array,
        key: jax.Array,
        *,
        use_obs: UseObs = True,
        actions: jax.Array | None = None,
    ) -> Rollout:
        """Encode ``(B, T, 64, 64, C)`` frames and unroll the posterior."""
        self.check_frames(frames)
        self._check_actions(actions, frames.shape[0], frames.shape[1])
        embeds = self.encoder(frames, chunk=self.config.conv_chunk, remat=self.config.remat)
        return self.hierarchy.observe(embeds, key, use_obs=use_obs, actions=actions)

    def loss(
        self, frames: jax.Array, key: jax.Array, *, actions: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Negative ELBO per frame (SPEC section 6) and its metrics.

        Args:
          frames: ``(B, T, 64, 64, C)`` floats in ``[0, 1]``.
          key: PRNG key for the posterior samples.
          actions: ``(B, T, action_size)`` when the model takes actions.
        """
        cfg = self.config
        chunk = cfg.conv_chunk
        rollout = self.observe(frames, key, actions=actions)
        features = rollout.posteriors[0].feature
        if chunk is None:
            nll = jnp.mean(reconstruction_nll(frames, self.decoder(features), cfg.dec_stddev))
        else:
            def frame_nll(decoder: ConvDecoder, args: tuple[jax.Array, jax.Array]) -> jax.Array:
                feature, frame = args
                return reconstruction_nll(frame, decoder(feature), cfg.dec_stddev)

            flat = (features.reshape(-1, features.shape[-1]), frames.reshape(-1, *frames.shape[2:]))
            nll = map_chunks(frame_nll, self.decoder, flat, chunk, remat=cfg.remat)
            nll = jnp.sum(nll) / frames.shape[0]
        return elbo_from_nll(
            nll, frames.shape[1], rollout.posteriors, rollout.priors, beta=cfg.beta,
            free_nats=cfg.free_nats, kl_grad_post_perc=cfg.kl_grad_post_perc,
        )

    def open_loop(
        self,
        frames: jax.Array,
        context: int,
        key: jax.Array,
        *,
        use_obs: UseObs = True,
        actions: jax.Array | None = None,
    ) -> jax.Array:
        """Predict frames ``context .. T-1`` from the first ``context`` (SPEC section 8).

        Args:
          frames: ``(B, T, 64, 64, C)``; only the first ``context`` frames are read.
          context: number of context frames, a multiple of the top period, ``<= T``.
          key: PRNG key.
          use_obs: per-level observation flags for the context, e.g. ``"TTF"``.
          actions: ``(B, T, action_size)`` when the model takes actions.
        Returns:
          ``(B, T - context, 64, 64, C)`` decoded means of level 0's prior.
        """
        self.check_frames(frames)
        total = frames.shape[1]
        top = self.hierarchy.clock.periods[-1]
        if isinstance(context, bool) or not isinstance(context, int):
            raise TypeError(f"context must be an int, got {context!r}")
        if context < 0 or context % top:
            raise ValueError(f"context={context} must be a non-negative multiple of the top period {top}")
        if context > total:
            raise ValueError(f"context={context} is longer than the sequence of {total} frames")
        parse_use_obs(use_obs, self.hierarchy.levels)
        self._check_actions(actions, frames.shape[0], total)
        embeds = self.encoder(frames[:, :context])
        _, imagined = self.hierarchy.open_loop(
            embeds, total - context, key, use_obs=use_obs, actions=actions
        )
        return self.decode(imagined.priors[0].feature)

    def decode(self, features: jax.Array) -> jax.Array:
        """Decoded means ``(..., 64, 64, C)`` of level 0's ``(..., F)`` features.

        Runs the decoder over ``conv_chunk`` frames at a time (all at once when it is
        ``None``), which bounds its memory and keeps each layer's work in cache.
        """
        chunk = self.config.conv_chunk
        if chunk is None:
            return self.decoder(features)
        flat = features.reshape(-1, features.shape[-1])
        out = map_chunks(lambda decoder, f: decoder(f), self.decoder, flat, chunk)
        return out.reshape(*features.shape[:-1], *out.shape[1:])

    def open_loop_chunks(
        self,
        context_frames: jax.Array,
        horizon: int,
        key: jax.Array,
        *,
        use_obs: UseObs = True,
        chunk: int | None = None,
    ) -> Iterator[jax.Array]:
        """:meth:`open_loop` in chunks, for horizons whose frames do not fit at once.

        Observes ``context_frames`` ``(B, ctx, 64, 64, C)`` (``ctx`` a multiple of the top
        period), then yields ``(B, <= chunk, 64, 64, C)`` predictions until ``horizon``
        frames are out. Each chunk is imagined from the last states of the previous one
        and decoded at once, so memory does not grow with the horizon; the concatenated
        chunks equal ``open_loop(frames, ctx, key, use_obs=use_obs)`` for the same key.
        ``chunk`` (default: the top period) must be a multiple of the top period.
        Models with actions are not supported here.
        """
        self.check_frames(context_frames, "context_frames")
        if self.config.action_size:
            raise ValueError("open_loop_chunks does not take actions; use open_loop")
        top = self.hierarchy.clock.periods[-1]
        chunk = top if chunk is None else chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk % top:
            raise ValueError(f"chunk={chunk} must be a positive multiple of the top period {top}")
        if context_frames.shape[1] % top:
            raise ValueError(
                f"context of {context_frames.shape[1]} frames is not a multiple of the top "
                f"period {top}"
            )
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
            raise ValueError(f"horizon must be a non-negative int, got {horizon!r}")
        flags = parse_use_obs(use_obs, self.hierarchy.levels)
        graphdef, params = nnx.split(self)
        k_obs, k_img = jax.random.split(key)
        states = _observe_last(graphdef, params, context_frames, k_obs, flags)
        for start in range(0, horizon, chunk):
            states, frames = _imagine_decode(graphdef, params, states, k_img, start, chunk)
            yield frames[:, : min(chunk, horizon - start)]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _observe_last(graphdef, params, frames, key, use_obs):
    model = nnx.merge(graphdef, params)
    embeds = model.encoder(frames)
    return model.hierarchy.observe(embeds, key, use_obs=use_obs).last


@functools.partial(jax.jit, static_argnums=(0, 5))
def _imagine_decode(graphdef, params, states, key, start, frames):
    model = nnx.merge(graphdef, params)
    rollout = model.hierarchy.imagine(states, frames, key, start=start)
    return rollout.last, model.decode(rollout.priors[0].feature)
