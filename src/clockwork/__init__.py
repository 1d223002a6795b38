"""clockwork: the Clockwork VAE as composable JAX/Flax components."""

__version__ = "0.1.0"
