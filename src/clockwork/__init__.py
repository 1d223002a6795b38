"""clockwork: the Clockwork VAE as composable JAX/Flax components.

Import the whole model (``CWVAE``) or any piece of it: cells
(``clockwork.cells``), the clock and hierarchy (``clockwork.hierarchy``), the conv
networks (``clockwork.nets``) and the losses (``clockwork.losses``).
"""

from clockwork.cells import GRUCell, RSSMCell
from clockwork.config import (
    PRESETS,
    LossConfig,
    ModelConfig,
    OptimConfig,
    Preset,
    SpeedConfig,
    preset,
)
from clockwork.hierarchy import Clock, Hierarchy
from clockwork.model import CWVAE, build_hierarchy
from clockwork.nets import ConvDecoder, ConvEncoder

__version__ = "0.1.0"

__all__ = [
    "CWVAE",
    "PRESETS",
    "Clock",
    "ConvDecoder",
    "ConvEncoder",
    "GRUCell",
    "Hierarchy",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "Preset",
    "RSSMCell",
    "SpeedConfig",
    "build_hierarchy",
    "preset",
]
