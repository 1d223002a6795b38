"""Orbax checkpoints of a run: the train state and the input pipeline's position.

A checkpoint ``<run>/checkpoints/<step>/`` holds two items: ``state`` (the
:class:`~clockwork.training.TrainState`: step, parameters, optimiser state and the PRNG key
as raw key data) and ``pipeline`` (the pipeline position, JSON). Orbax writes each into a
temporary folder and renames it when complete, so a run killed while saving leaves the
previous checkpoints intact.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import TYPE_CHECKING, Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers

from clockwork import CWVAE
from clockwork.training import TrainState, init_train_state, make_optimizer

if TYPE_CHECKING:
    from run_config import RunConfig

CHECKPOINT_DIR = "checkpoints"


def manager(
    directory: str | pathlib.Path, *, keep: int = 1, keep_every: int = 0, read_only: bool = False
) -> ocp.CheckpointManager:
    """Keeps the ``keep`` latest checkpoints and every one at a multiple of ``keep_every``."""
    policies: list[Any] = [checkpoint_managers.LatestN(keep)]
    if keep_every:
        policies.append(checkpoint_managers.EveryNSteps(keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(mgr: ocp.CheckpointManager, state: TrainState, pipeline: dict[str, int]) -> None:
    """Writes checkpoint ``state.step`` (blocks until it is on disk)."""
    stored = state.replace(key=jax.random.key_data(state.key))
    mgr.save(
        int(state.step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(stored), pipeline=ocp.args.JsonSave(pipeline)
        ),
    )


def build_model(config: RunConfig, key: int | jax.Array = 0) -> CWVAE:
    """The run's model (its ``model``, ``loss`` and ``speed`` sections), the parameters
    drawn from ``nnx.Rngs(key)``."""
    return CWVAE.from_config(config.model, loss=config.loss, speed=config.speed,
                             rngs=nnx.Rngs(key))


def abstract_state(config: RunConfig) -> tuple[nnx.GraphDef, TrainState]:
    """The model's graph and the shapes of its train state, computing nothing."""
    optimizer = make_optimizer(**dataclasses.asdict(config.optim))

    def create() -> TrainState:
        return init_train_state(build_model(config), optimizer, jax.random.key(0))[1]

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(config)))
    return graphdef, jax.eval_shape(create)


def restore(
    mgr: ocp.CheckpointManager, step: int, abstract: TrainState, sharding: Any = None
) -> tuple[TrainState, dict[str, int]]:
    """Checkpoint ``step`` as a train state shaped like ``abstract`` and a pipeline state.

    ``sharding`` places the restored state: one ``jax.sharding.Sharding`` for every leaf
    or a tree of them shaped like ``abstract`` (``clockwork.parallel.param_shardings``).
    Any mesh works, whatever the mesh the checkpoint was written from; without it the
    arrays go where Orbax puts them by default.
    """
    target = abstract.replace(key=jax.eval_shape(jax.random.key_data, abstract.key))
    if sharding is None:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    else:
        if isinstance(sharding, jax.sharding.Sharding):
            sharding = jax.tree.map(lambda _: sharding, target)
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, sharding
        )
    restored = mgr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), pipeline=ocp.args.JsonRestore()
        ),
    )
    state = restored.state.replace(key=jax.random.wrap_key_data(restored.state.key))
    return state, dict(restored.pipeline)
