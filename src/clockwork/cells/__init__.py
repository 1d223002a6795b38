"""Cells: one step of one level of the hierarchy, all speaking :class:`Cell`."""

from clockwork.cells.base import Cell, DeterministicState, GaussianState, StepOutput, step_keys, unroll
from clockwork.cells.gru import GRU, GRUCell
from clockwork.cells.rssm import RSSMCell, RSSMInputs

__all__ = [
    "Cell",
    "DeterministicState",
    "GRU",
    "GRUCell",
    "GaussianState",
    "RSSMCell",
    "RSSMInputs",
    "StepOutput",
    "step_keys",
    "unroll",
]
