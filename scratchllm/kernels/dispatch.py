"""The ops as the model, the trainer and the benchmarks call them: the textbook's names and signatures, each
running the first registered implementation that supports its inputs (``registry.py``), else the textbook
in ``scratchllm/ops/``. Inputs are checked here exactly as the textbook checks them, before anything runs.

    from scratchllm.kernels.dispatch import layernorm_forward     # fast where it can be
    from scratchllm.ops import layernorm_forward                  # the textbook, always

``dispatched(fn)`` maps a textbook function (or a ``functools.partial`` of one, as the ``OPS`` registry binds
options) to its dispatched counterpart, and leaves a function without one as it is.
"""

from __future__ import annotations

import functools

from .. import ops
from ..ops import attention as attention_op
from ..ops import attention_blocked as attention_blocked_op
from ..ops import cross_entropy as cross_entropy_op
from ..ops import embedding as embedding_op
from ..ops import flash_attention as flash_attention_op
from ..ops import gelu as gelu_op
from ..ops import layernorm as layernorm_op
from ..ops import linear as linear_op
from ..ops import softmax as softmax_op
from ..ops._checks import check_dout
from .registry import pick, pick_backward


def layernorm_forward(x, w, b, eps=1e-5):
    layernorm_op.check_inputs(x, w, b)
    impl = pick("layernorm", x, w, b)
    return (impl.forward if impl else ops.layernorm_forward)(x, w, b, eps)


def layernorm_backward(dout, cache):
    check_dout(dout, cache[0].shape)
    impl = pick_backward("layernorm", dout, cache)
    return (impl.backward if impl else ops.layernorm_backward)(dout, cache)


def gelu_forward(x, approximate="tanh"):
    gelu_op.check_inputs(x, approximate)
    impl = pick("gelu", x, approximate=approximate)
    return (impl.forward if impl else ops.gelu_forward)(x, approximate)


def gelu_backward(dout, cache):
    check_dout(dout, cache[0].shape)
    impl = pick_backward("gelu", dout, cache)
    return (impl.backward if impl else ops.gelu_backward)(dout, cache)


def softmax_forward(x, axis=-1):
    softmax_op.check_inputs(x, axis)
    impl = pick("softmax", x, axis=axis)
    return (impl.forward if impl else ops.softmax_forward)(x, axis)


def softmax_backward(dout, cache):
    check_dout(dout, cache[0].shape)
    impl = pick_backward("softmax", dout, cache)
    return (impl.backward if impl else ops.softmax_backward)(dout, cache)


def cross_entropy_forward(logits, targets, ignore_index=-1):
    cross_entropy_op.check_inputs(logits, targets, ignore_index)
    impl = pick("cross_entropy", logits, targets, ignore_index=ignore_index)
    return (impl.forward if impl else ops.cross_entropy_forward)(logits, targets, ignore_index)


def cross_entropy_backward(dout, cache):
    cross_entropy_op.check_dout(dout)
    impl = pick_backward("cross_entropy", dout, cache)
    return (impl.backward if impl else ops.cross_entropy_backward)(dout, cache)


def embedding_forward(idx, table):
    embedding_op.check_inputs(idx, table)
    impl = pick("embedding", idx, table)
    return (impl.forward if impl else ops.embedding_forward)(idx, table)


def embedding_backward(dout, cache):
    idx, (V, C), _ = cache
    check_dout(dout, idx.shape + (C,))
    impl = pick_backward("embedding", dout, cache)
    return (impl.backward if impl else ops.embedding_backward)(dout, cache)


def linear_forward(x, w, b=None):
    linear_op.check_inputs(x, w, b)
    impl = pick("linear", x, w, b)
    return (impl.forward if impl else ops.linear_forward)(x, w, b)


def linear_backward(dout, cache, dw_out=None):
    """``ops.linear_backward``, and ``dw_out``: an array (Cin, Cout) of w's dtype to write dw into, which is then
    returned as dw (GPT passes views of its flat gradient buffer: no copy afterwards); None: a new array."""
    x, w, _ = cache
    check_dout(dout, x.shape[:-1] + (w.shape[1],))
    if dw_out is not None and (not hasattr(dw_out, "shape") or dw_out.shape != w.shape or dw_out.dtype != w.dtype):
        raise ValueError(f"dw_out must be an array of shape {w.shape} and dtype {w.dtype}; got "
                         f"{getattr(dw_out, 'shape', type(dw_out).__name__)} {getattr(dw_out, 'dtype', '')}".rstrip())
    impl = pick_backward("linear", dout, cache)
    if impl:
        return impl.backward(dout, cache, dw_out=dw_out)  # linear's implementations write into dw_out
    dx, dw, db = ops.linear_backward(dout, cache)
    if dw_out is not None:
        dw_out[...] = dw
        dw = dw_out
    return dx, dw, db


def attention_forward(q, k, v, causal=True, dropout=0.0, rng=None):
    attention_op.check_inputs(q, k, v, causal, dropout, rng)
    impl = pick("attention", q, k, v, causal=causal, dropout=dropout, rng=rng)
    return (impl.forward if impl else ops.attention_forward)(q, k, v, causal, dropout, rng)


def attention_backward(dout, cache):
    check_dout(dout, cache[0].shape)
    impl = pick_backward("attention", dout, cache)
    return (impl.backward if impl else ops.attention_backward)(dout, cache)


def attention_blocked_forward(q, k, v, dropout=0.0, rng=None, block=64):
    attention_blocked_op.check_inputs(q, k, v, dropout, rng, block)
    impl = pick("attention_blocked", q, k, v, dropout=dropout, rng=rng, block=block)
    return (impl.forward if impl else ops.attention_blocked_forward)(q, k, v, dropout, rng, block)


def attention_blocked_backward(dout, cache, out=None):
    """``ops.attention_blocked_backward``, and ``out``: three arrays (dq, dk, dv) of the gradients' shapes and q's
    dtype, of any layout, apart from each other and from dout, to write the gradients into (then returned): GPT
    passes the three (B, H, T, D) views of the (B, T, 3, H, D) array its qkv projection's backward reads."""
    q, k, v = cache[:3]
    check_dout(dout, q.shape)
    if out is not None:
        _check_out(out, (q, k, v))
    impl = pick_backward("attention_blocked", dout, cache)
    if impl:
        return impl.backward(dout, cache, out=out)  # the blocked implementations write into out
    grads = ops.attention_blocked_backward(dout, cache)
    if out is None:
        return grads
    for o, g in zip(out, grads):
        o[...] = g
    return tuple(out)


def flash_attention_forward(q, k, v, causal=True, block_q=64, block_k=64):
    flash_attention_op.check_inputs(q, k, v, causal, block_q, block_k)
    impl = pick("flash_attention", q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    return (impl.forward if impl else ops.flash_attention_forward)(q, k, v, causal, block_q, block_k)


def flash_attention_backward(dout, cache, out=None):
    """``ops.flash_attention_backward``, and ``out`` as ``attention_blocked_backward``'s: (dq, dk, dv) written
    there (GPT's views of its qkv gradient) and returned."""
    q, k, v = cache[:3]
    check_dout(dout, q.shape)
    if out is not None:
        _check_out(out, (q, k, v))
    impl = pick_backward("flash_attention", dout, cache)
    grads = (impl.backward if impl else ops.flash_attention_backward)(dout, cache)
    if out is None:
        return grads
    for o, g in zip(out, grads):
        o[...] = g
    return tuple(out)


def _check_out(out, arrays):
    q = arrays[0]
    if len(out) != 3 or any(getattr(o, "shape", None) != a.shape or getattr(o, "dtype", None) != q.dtype
                            for o, a in zip(out, arrays)):
        raise ValueError(f"out must be three arrays (dq, dk, dv) of shapes {tuple(a.shape for a in arrays)} and "
                         f"dtype {q.dtype}")


# the textbook function -> the one here that dispatches it
DISPATCHED = {
    ops.layernorm_forward: layernorm_forward, ops.layernorm_backward: layernorm_backward,
    ops.gelu_forward: gelu_forward, ops.gelu_backward: gelu_backward,
    ops.softmax_forward: softmax_forward, ops.softmax_backward: softmax_backward,
    ops.cross_entropy_forward: cross_entropy_forward, ops.cross_entropy_backward: cross_entropy_backward,
    ops.embedding_forward: embedding_forward, ops.embedding_backward: embedding_backward,
    ops.linear_forward: linear_forward, ops.linear_backward: linear_backward,
    ops.attention_forward: attention_forward, ops.attention_backward: attention_backward,
    ops.attention_blocked_forward: attention_blocked_forward,
    ops.attention_blocked_backward: attention_blocked_backward,
    ops.flash_attention_forward: flash_attention_forward, ops.flash_attention_backward: flash_attention_backward,
}


for _textbook, _fast in DISPATCHED.items():  # help() on a dispatched op shows the textbook's Math
    _fast.__doc__ = _fast.__doc__ or _textbook.__doc__


def bind_like(entry, fn):
    """``fn`` bound as the registry entry ``entry`` binds its forward (a partial's arguments, a wrapper's
    ``.rebind``), else ``fn`` itself: the same options for another implementation of the op."""
    if isinstance(entry, functools.partial):
        return functools.partial(fn, *entry.args, **entry.keywords)
    if hasattr(entry, "rebind"):
        return entry.rebind(fn)
    return fn


def dispatched(fn):
    """The dispatched counterpart of a textbook ``fn`` (a partial keeps its bound arguments, a registry wrapper
    with ``.rebind`` its binding), else ``fn``."""
    if isinstance(fn, functools.partial):
        inner = DISPATCHED.get(fn.func)
        return bind_like(fn, inner) if inner else fn
    if hasattr(fn, "rebind") and getattr(fn, "__wrapped__", None) in DISPATCHED:
        return bind_like(fn, DISPATCHED[fn.__wrapped__])
    return DISPATCHED.get(fn, fn)
