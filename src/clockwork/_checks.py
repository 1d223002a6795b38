"""The argument rules of the public functions and constructors, one function per rule.

Every check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a
value out of range, with the message ``"<name> must be <expected>, got <what it got>"``,
``name`` being the argument as the caller wrote it (``frames``, ``key``,
``factors[1]``). The checks read Python values, shapes and dtypes only, so inside
``jax.jit`` they run once, at trace time, and add no operation to the program; the one
check of array values, ``finite``, reads concrete arrays only and does nothing for
tracers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from types import EllipsisType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Dim = int | str | EllipsisType
"""A dimension of an expected shape: a size, a name (any size) or ``...`` (any axes)."""


def describe(value: Any) -> str:
    """A short account of ``value`` for a message: an array's shape and dtype, else its
    ``repr`` (cut to 60 characters) and type."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``."""
    kind = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {kind}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) between
    ``low`` and ``high`` (excluded when ``low_open``/``high_open``)."""
    if low is not None and high is not None:
        where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        where = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        where = f" {'<' if high_open else '<='} {high:g}"
    else:
        where = ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{where}, got {describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        raise ValueError(f"{name} must be a number{where}, got {value!r}")
    return float(value)


def scalar(name: str, value: Any, **bounds: Any) -> Any:
    """``value`` if it is a JAX array (a tracer under ``jax.jit``; unchecked) or passes
    ``number(name, value, **bounds)``: for arguments that may be traced."""
    if isinstance(value, jax.Array):
        return value
    number(name, value, **bounds)
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``numpy.bool_`` too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {describe(value)}")
    return bool(value)


def choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    """``value`` if it is one of ``options``."""
    if not any(value == option and type(value) is type(option) for option in options):
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def instance(name: str, value: Any, cls: type) -> Any:
    """``value`` if it is an instance of ``cls``."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
    return value


def sequence(name: str, value: Any, what: str) -> Sequence[Any]:
    """``value`` if it is a sequence (a list or a tuple, not a string) of ``what``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of {what}, got {describe(value)}")
    return value


def prng_key(name: str, value: Any) -> Any:
    """``value`` if it is one PRNG key: a typed key of shape ``()`` (``jax.random.key``)
    or a raw ``uint32`` key of shape ``(2,)`` (``jax.random.PRNGKey``)."""
    dtype = getattr(value, "dtype", None)
    shape = tuple(getattr(value, "shape", ()))
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype is not None and not typed and dtype == np.uint32 and shape[-1:] == (2,)
    if not (typed or raw):
        raise TypeError(f"{name} must be a PRNG key (jax.random.key(seed)), got {describe(value)}")
    if shape != (() if typed else (2,)):
        raise ValueError(f"{name} must be a single PRNG key (jax.random.key(seed)), got "
                         f"{describe(value)}; split keys are used one at a time")
    return value


def _pattern(shape: Sequence[Dim]) -> str:
    parts = ["..." if d is Ellipsis else str(d) for d in shape]
    return f"({', '.join(parts)}{',' if len(parts) == 1 else ''})"


def array(name: str, value: Any, shape: Sequence[Dim] | None = None) -> tuple[int, ...]:
    """The shape of ``value`` if it is an array (a JAX or NumPy array, a tracer, a
    ``jax.ShapeDtypeStruct``) of ``shape``: an ``int`` is a size, a ``str`` names a
    dimension of any size and one ``...`` stands for any number of axes."""
    want = "" if shape is None else f" of shape {_pattern(shape)}"
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise TypeError(f"{name} must be an array{want}, got {describe(value)}")
    got = tuple(value.shape)
    if shape is None:
        return got
    shape = tuple(shape)
    cut = shape.index(Ellipsis) if Ellipsis in shape else len(shape)
    head, tail = shape[:cut], shape[cut + 1:]
    fits = len(got) == len(shape) if cut == len(shape) else len(got) >= len(head) + len(tail)
    sizes = got[:len(head)] + (got[len(got) - len(tail):] if tail else ())
    if not fits or any(isinstance(d, int) and d != s for d, s in zip(head + tail, sizes)):
        raise ValueError(f"{name} must have shape {_pattern(shape)}, got {got}")
    return got


def float_array(
    name: str,
    value: Any,
    shape: Sequence[Dim] | None = None,
    *,
    what: str = "a float array",
    hint: str = "",
) -> tuple[int, ...]:
    """``array(name, value, shape)`` with a floating dtype (the message says ``what``
    was expected and ends with ``hint``)."""
    got = array(name, value, shape)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must be {what}, got dtype {value.dtype}{hint}")
    return got


def same_shape(name: str, value: Any, other_name: str, other: Any) -> None:
    """Raise unless the arrays ``value`` and ``other`` have one shape."""
    if array(name, value) != array(other_name, other):
        raise ValueError(f"{name} must have the shape of {other_name} {tuple(other.shape)}, "
                         f"got {tuple(value.shape)}")


def finite(name: str, value: Any) -> None:
    """Raise unless a concrete float array holds only finite values.

    Does nothing for tracers (inside ``jax.jit``, ``jax.grad``, ...: it adds no
    operation), for abstract values and for integer arrays. A JAX array is reduced
    where it lives; only a bool comes back to the host.
    """
    concrete = isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer)
    if not concrete or not jnp.issubdtype(value.dtype, jnp.inexact):
        return
    if isinstance(value, np.ndarray):
        ok = bool(np.isfinite(value).all())
    else:  # evaluated now, also for a constant seen while tracing
        with jax.ensure_compile_time_eval():
            ok = bool(jnp.isfinite(value).all())
    if not ok:
        bad = ~np.isfinite(np.asarray(value))
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {int(bad.sum())} NaN or infinite "
                         f"value(s), the first at index {first}")
