"""The clock and the top-down hierarchy of cells."""

from clockwork.hierarchy.clock import Clock
from clockwork.hierarchy.hierarchy import Hierarchy, Rollout, parse_use_obs

__all__ = ["Clock", "Hierarchy", "Rollout", "parse_use_obs"]
