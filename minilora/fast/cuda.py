"""Fused CuPy kernels for the fast layer: GELU's forward and backward, the AdamW update.

On a GPU the fast pairs' in-place sequences are one kernel launch and one pass over memory per
line (GELU's forward: nine). Each kernel here is the same equations in one pass, each element
computed by one thread in the array's own dtype (float32 or float64):

    gelu_forward:   t = tanh(√(2/π) (x + 0.044715 x³)),   y = ½ x (1 + t)
    gelu_backward:  dx = dout · (½(1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²))
    adamw_update:   θ ← (1 − lr·wd) θ;  m ← β₁ m + (1−β₁) g;  v ← β₂ v + (1−β₂) g²;
                    θ ← θ − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)

They run only when ``USE_FUSED`` is True (off by default: no GPU has run them yet, docs/gpu.md)
and the arrays are CuPy float32/float64 (``fused(*arrays)``); everything else takes the fast
pairs' plain lines. ``tests/test_gpu_check.py`` (``test_cupy_fused_*``, on a GPU) holds them
equal to the reference pairs, and ``minilora.device_parity`` compares them with NumPy.
The kernels are compiled by CuPy on first use (once per dtype, then cached on disk).
"""
from __future__ import annotations

from .. import backend
from ..backend import dtype_name, namespace
from ..functional.activations import GELU_C, GELU_K

USE_FUSED = False  # the switch: True runs the kernels below on CuPy float32/float64 arrays
_kernels: dict = {}


def fused(*arrays) -> bool:
    """True if the fused kernels apply: switched on, CuPy arrays, one dtype, float32 or float64."""
    if not USE_FUSED:
        return False
    xp = namespace(*arrays)
    if not getattr(xp, "__name__", "").startswith("cupy"):
        return False
    dtypes = {dtype_name(a) for a in arrays}
    return len(dtypes) == 1 and dtypes <= {"float32", "float64"}


def kernel(name: str):
    """The CuPy ``ElementwiseKernel`` ``name``, built once (CuPy compiles it per dtype)."""
    if name not in _kernels:
        cp = backend.cupy_or_none()
        if cp is None:
            raise RuntimeError("minilora.fast.cuda: the fused kernels need CuPy and a usable GPU")
        _kernels[name] = cp.ElementwiseKernel(*_SOURCES[name], name=f"minilora_{name}")
    return _kernels[name]


_SOURCES = {
    "gelu_forward": (
        "T x", "T t, T y",
        f"""
        T tanh_arg = (T){GELU_C!r} * (x + (T){GELU_K!r} * x * x * x);
        t = tanh(tanh_arg);
        y = (T)0.5 * x * ((T)1 + t);
        """),
    "gelu_backward": (
        "T dout, T x, T t", "T dx",
        f"""
        T sech2 = (T)1 - t * t;
        T dtanh_arg = (T){GELU_C!r} * ((T)1 + (T){3 * GELU_K!r} * x * x);
        T local_grad = (T)0.5 * ((T)1 + t) + (T)0.5 * x * sech2 * dtanh_arg;
        dx = dout * local_grad;
        """),
    "adamw_update": (
        "T g, T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T step, T rsqrt_c2",
        "T p, T m, T v",
        """
        p = p * decay;
        m = beta1 * m + one_minus_beta1 * g;
        v = beta2 * v + one_minus_beta2 * (g * g);
        p = p - step * (m / (sqrt(v) * rsqrt_c2 + eps));
        """),
}


def gelu_forward(x):
    """``(t, y)`` of GELU in one pass."""
    xp = namespace(x)
    t, y = xp.empty_like(x), xp.empty_like(x)
    kernel("gelu_forward")(x, t, y)
    return t, y


def gelu_backward(dout, x, t):
    """dx of GELU in one pass."""
    return kernel("gelu_backward")(dout, x, t)


def adamw_update(p, g, m, v, decay, beta1, beta2, eps, step, rsqrt_c2) -> None:
    """p, m and v updated in place in one pass (scalars as ``fast.optim.adamw_update`` folds them,
    each rounded once to p's dtype, as the in-place lines round them)."""
    s = p.dtype.type
    kernel("adamw_update")(g, s(decay), s(beta1), s(1.0 - beta1), s(beta2), s(1.0 - beta2), s(eps), s(step),
                           s(rsqrt_c2), p, m, v)
