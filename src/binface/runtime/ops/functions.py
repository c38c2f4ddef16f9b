"""The element-wise and reduction functions of the runtime, each declared once.

An IR ``unary`` / ``binary`` / ``reduce`` node names its function in
``attrs["fn"]``. Each entry here says which ATen ops capture maps to it, how the
packed engine computes it (numpy, float32 in and out) and how the LCE builder
writes it in TensorFlow (``tf`` is the module, passed in: nothing here imports
TensorFlow). Adding a function is one entry here; ``tests/test_op_table.py``
checks every entry against PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from binface.runtime import kernels as K

_F32 = np.float32


@dataclass(frozen=True)
class Unary:
    """``y = f(x)``: ATen op names, numpy function, TensorFlow function ``tf(tf, x)``.

    ``tf`` is None when LCE export refuses the function; ``lce_refusal`` says why.
    """

    aten: tuple[str, ...]
    np: Callable[[np.ndarray], np.ndarray]
    tf: Callable[[Any, Any], Any] | None
    lce_refusal: str = ""


@dataclass(frozen=True)
class Binary:
    """``y = f(a, b)`` with numpy broadcasting; ``tf(tf, a, b)``."""

    aten: tuple[str, ...]
    np: Callable[[np.ndarray, np.ndarray], np.ndarray]
    tf: Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class Reduce:
    """A reduction over axes: ``np(x, axis=, keepdims=)``; ``tf(tf, x, axes, keepdims)``."""

    aten: tuple[str, ...]
    np: Callable[..., np.ndarray]
    tf: Callable[[Any, Any, list, bool], Any]


def _sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


def _gelu(x):
    return _F32(0.5) * x * (_F32(1) + K.erf(x * _F32(1 / math.sqrt(2))))


def _gelu_tanh(x):
    return _F32(0.5) * x * (_F32(1) + np.tanh(
        _F32(math.sqrt(2 / math.pi)) * (x + _F32(0.044715) * x * x * x)))


UNARY: dict[str, Unary] = {
    "relu": Unary(("relu",), lambda x: np.maximum(x, _F32(0)), lambda tf, z: tf.nn.relu(z)),
    "relu6": Unary(("relu6",), lambda x: np.clip(x, _F32(0), _F32(6)),
                   lambda tf, z: tf.nn.relu6(z)),
    "sigmoid": Unary(("sigmoid",), _sigmoid, lambda tf, z: tf.sigmoid(z)),
    "tanh": Unary(("tanh",), np.tanh, lambda tf, z: tf.tanh(z)),
    "silu": Unary(("silu",), lambda x: x * _sigmoid(x), lambda tf, z: z * tf.sigmoid(z)),
    # aten.gelu(approximate="tanh") is "gelu_tanh" (the converter reads the argument);
    # this TF form converts to TFLite's GELU op (tf.nn.gelu needs an Erfc custom op)
    "gelu": Unary(("gelu",), _gelu,
                  lambda tf, z: z * 0.5 * (1.0 + tf.math.erf(z * 0.7071067811865476))),
    "gelu_tanh": Unary((), _gelu_tanh, lambda tf, z: tf.nn.gelu(z, approximate=True)),
    "hardswish": Unary(("hardswish",),
                       lambda x: x * np.clip(x + _F32(3), _F32(0), _F32(6)) / _F32(6),
                       lambda tf, z: z * tf.nn.relu6(z + 3.0) / 6.0),
    "hardsigmoid": Unary(("hardsigmoid",),
                         lambda x: np.clip(x + _F32(3), _F32(0), _F32(6)) / _F32(6),
                         lambda tf, z: tf.nn.relu6(z + 3.0) / 6.0),
    "neg": Unary(("neg",), np.negative, lambda tf, z: tf.negative(z)),
    "exp": Unary(("exp",), np.exp, lambda tf, z: tf.exp(z)),
    "sqrt": Unary(("sqrt",), np.sqrt, lambda tf, z: tf.sqrt(z)),
    "rsqrt": Unary(("rsqrt",), lambda x: _F32(1) / np.sqrt(x), lambda tf, z: tf.math.rsqrt(z)),
    "abs": Unary(("abs",), np.abs, lambda tf, z: tf.abs(z)),
    "erf": Unary(("erf",), K.erf, None, "TFLite has no erf kernel (the converter writes a "
                 "custom 'Erf' op that LCE's interpreter cannot run)"),
    "reciprocal": Unary(("reciprocal",), lambda x: _F32(1) / x, lambda tf, z: 1.0 / z),
    "log": Unary(("log",), np.log, lambda tf, z: tf.math.log(z)),
    "sin": Unary(("sin",), np.sin, lambda tf, z: tf.sin(z)),
    "cos": Unary(("cos",), np.cos, lambda tf, z: tf.cos(z)),
    "sign_raw": Unary(("sign",), np.sign, lambda tf, z: tf.sign(z)),
    "mish": Unary(("mish",), lambda x: x * np.tanh(np.logaddexp(_F32(0), x)),
                  lambda tf, z: z * tf.tanh(tf.math.softplus(z))),
}

BINARY: dict[str, Binary] = {
    "add": Binary(("add",), np.add, lambda tf, a, b: tf.add(a, b)),
    # aten.rsub(a, b) is sub(b, a): the converter swaps the operands
    "sub": Binary(("sub", "rsub"), np.subtract, lambda tf, a, b: tf.subtract(a, b)),
    "mul": Binary(("mul",), np.multiply, lambda tf, a, b: tf.multiply(a, b)),
    "div": Binary(("div",), np.true_divide, lambda tf, a, b: tf.divide(a, b)),
    "pow": Binary(("pow",), np.power, lambda tf, a, b: tf.pow(a, b)),
    "maximum": Binary(("maximum",), np.maximum, lambda tf, a, b: tf.maximum(a, b)),
    "minimum": Binary(("minimum",), np.minimum, lambda tf, a, b: tf.minimum(a, b)),
}

REDUCE: dict[str, Reduce] = {
    "mean": Reduce(("mean",), np.mean,
                   lambda tf, x, axes, kd: tf.reduce_mean(x, axis=axes, keepdims=kd)),
    "sum": Reduce(("sum",), np.sum,
                  lambda tf, x, axes, kd: tf.reduce_sum(x, axis=axes, keepdims=kd)),
    "amax": Reduce(("amax",), np.max,
                   lambda tf, x, axes, kd: tf.reduce_max(x, axis=axes, keepdims=kd)),
    "amin": Reduce(("amin",), np.min,
                   lambda tf, x, axes, kd: tf.reduce_min(x, axis=axes, keepdims=kd)),
}


def by_aten(table: dict) -> dict[str, str]:
    """ATen op name -> function name, for the capture converters."""
    return {a: name for name, entry in table.items() for a in entry.aten}
