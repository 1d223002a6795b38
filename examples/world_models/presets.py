"""The sizes of a World Models run: ``smoke`` (a minute or two, for the test suite),
``small`` (about an hour on 2 cores) and ``paper`` (the original's)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CollectPreset:
    """The random rollouts of the ``collect`` stage.

    Attributes:
      rollouts: episodes to collect.
      max_steps: steps per episode at most (CarRacing-v3 ends an episode at 1,000).
      shard_episodes: episodes per shard file.
      workers: processes that run episodes side by side.
      hold: each random action is held for 1 to ``hold`` steps (drawn per action).
      seed: the first episode's seed; episode ``i`` is seeded with ``seed + i``.
    """

    rollouts: int
    max_steps: int
    shard_episodes: int
    workers: int
    hold: int = 8
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class VaePreset:
    """The ``train-vae`` stage (the original's values unless said).

    Attributes:
      latent_size: z's size (32).
      filters: channels of the first conv layer (32; then 64, 128, 256).
      kl_tolerance: the KL term is at least ``kl_tolerance * latent_size`` nats per
        frame (0.5), so the latents keep some information instead of collapsing.
      batch_size: frames per step (100).
      lr: Adam's learning rate (1e-4).
      steps: training steps.
      ckpt_every: steps between saved states (a rerun resumes from the last).
      seed: parameters, batches and noise.
    """

    latent_size: int = 32
    filters: int = 32
    kl_tolerance: float = 0.5
    batch_size: int = 100
    lr: float = 1e-4
    steps: int = 1000
    ckpt_every: int = 100
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MdnRnnPreset:
    """The ``train-mdnrnn`` stage (the original's values unless said).

    Attributes:
      hidden_size: the LSTM's size (256).
      mixtures: Gaussians per latent dimension (5).
      seq_len: steps per training window, cut at random from the episodes (the original
        trained on whole 1,000-step episodes).
      batch_size: windows per step.
      lr: Adam's learning rate (1e-3).
      grad_clip: gradients clipped to this global norm (1.0).
      steps: training steps.
      ckpt_every: steps between saved states.
      seed: parameters, windows and latent samples.
    """

    hidden_size: int = 256
    mixtures: int = 5
    seq_len: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    grad_clip: float = 1.0
    steps: int = 1000
    ckpt_every: int = 100
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ControllerPreset:
    """The ``train-controller`` and ``evaluate`` stages.

    Attributes:
      population: CMA-ES candidates per generation (64 in the original).
      rollouts: episodes per candidate, the score being their mean (16).
      generations: generations of CMA-ES.
      sigma: CMA-ES's initial step size (0.1).
      max_steps: steps per real episode at most (1,000).
      workers: processes that run real episodes side by side.
      temperature: the dream's sampling temperature (1.15, the original's for Doom).
      dream_steps: steps per dreamed episode.
      eval_episodes: real episodes of the ``evaluate`` stage (100 in the paper).
      patience: a real training episode ends after this many steps in a row without a
        new track tile, scored as if none followed (each step left costs 0.1); ``None``
        (the original): episodes run to the end. Evaluation never cuts.
      seed: CMA-ES and the episodes' seeds.
    """

    population: int = 64
    rollouts: int = 16
    generations: int = 100
    sigma: float = 0.1
    max_steps: int = 1000
    workers: int = 2
    temperature: float = 1.15
    dream_steps: int = 1000
    eval_episodes: int = 100
    patience: int | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Preset:
    """Every stage's sizes."""

    collect: CollectPreset
    vae: VaePreset
    mdnrnn: MdnRnnPreset
    controller: ControllerPreset


PRESETS = {
    "smoke": Preset(CollectPreset(rollouts=4, max_steps=40, shard_episodes=2, workers=2),
                    VaePreset(filters=4, batch_size=8, steps=6, ckpt_every=3),
                    MdnRnnPreset(hidden_size=16, mixtures=2, seq_len=10, batch_size=4, steps=6,
                                 ckpt_every=3),
                    ControllerPreset(population=4, rollouts=1, generations=2, max_steps=30,
                                     dream_steps=30, eval_episodes=2)),
    "small": Preset(CollectPreset(rollouts=200, max_steps=500, shard_episodes=10, workers=2),
                    VaePreset(steps=3000, ckpt_every=250),
                    MdnRnnPreset(steps=2000, ckpt_every=250),
                    ControllerPreset(population=16, rollouts=2, generations=20, max_steps=500,
                                     dream_steps=500, eval_episodes=20, patience=100)),
    "paper": Preset(CollectPreset(rollouts=10_000, max_steps=1000, shard_episodes=100, workers=2),
                    VaePreset(steps=10 * 10_000 * 1000 // 100, ckpt_every=5000),  # 10 epochs
                    MdnRnnPreset(seq_len=999, batch_size=100, steps=20_000, ckpt_every=1000),
                    ControllerPreset()),
}
