"""Cells: one step of one level of the hierarchy, all speaking ``Cell``.

The protocol is documented in ``clockwork.cells.base`` and in
docs/write_your_own_cell.md; any object that follows it plugs into every level of a
``Hierarchy`` and of a ``CWVAE``.
"""

from clockwork.cells.base import (
    Cell,
    DeterministicState,
    GaussianState,
    StepOutput,
    check_cell,
    draw_noise,
    has_fast_path,
    step_keys,
    unroll,
)
from clockwork.cells.categorical import CategoricalInputs, CategoricalRSSMCell, CategoricalState
from clockwork.cells.gru import GRUCell
from clockwork.cells.layers import GRU, LSTM
from clockwork.cells.lstm import LSTMCell, LSTMState
from clockwork.cells.mdn import MDNCarry, MDNInputs, MDNNoise, MDNPosterior, MDNRNNCell, MixtureState
from clockwork.cells.registry import feature_size, make, register, registered, resolve, unregister
from clockwork.cells.rssm import RSSMCell, RSSMInputs

__all__ = [
    "LSTM",
    "CategoricalInputs",
    "CategoricalRSSMCell",
    "CategoricalState",
    "Cell",
    "DeterministicState",
    "GRU",
    "GRUCell",
    "GaussianState",
    "LSTMCell",
    "LSTMState",
    "MDNCarry",
    "MDNInputs",
    "MDNNoise",
    "MDNPosterior",
    "MDNRNNCell",
    "MixtureState",
    "RSSMCell",
    "RSSMInputs",
    "StepOutput",
    "check_cell",
    "draw_noise",
    "feature_size",
    "has_fast_path",
    "make",
    "register",
    "registered",
    "resolve",
    "step_keys",
    "unregister",
    "unroll",
]
