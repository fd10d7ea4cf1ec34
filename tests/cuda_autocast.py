"""CUDA autocast's casting rules, run on the CPU: so CI catches what only a GPU showed.

CPU and CUDA autocast cast different ops. On CUDA, softmax, layer_norm, sum, pow, softplus, ...
run in fp32 (and return fp32) while matmuls and convolutions return bf16 / fp16; CPU autocast
leaves softmax and layer_norm in the low dtype. Code that is fine under CPU autocast can then
meet bf16 and fp32 tensors in one op on a GPU (issue 22: bf16 logits scattered with fp32 softmax
gates in `TokenRouter.forward`).

`cuda_autocast_on_cpu` installs, for as long as it is active, Python kernels on the AutocastCPU
dispatch key that apply CUDA's policy to every op CUDA autocast handles, and plain fall-throughs
for the ops only CPU autocast handles, then enables CPU autocast. The kernels sit where the real
ones sit (above autograd: the casts are differentiable, composite ops are cast as a whole, the
ops inside them are not cast again), so a model sees the dtypes it would see on a GPU. What it
does not emulate: CUDA's kernels themselves (their accumulation order), and the cast cache
(a speed matter only).

`POLICY` is CUDA's table (aten/src/ATen/autocast_mode.h, the AT_FORALL_* lists, plus the ops the
installed torch adds); `test_cuda_autocast.py` checks that it names exactly the ops the
installed torch registers for AutocastCUDA, so a torch upgrade that changes the table fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_LOWER = """_convolution _convolution.deprecated conv1d conv2d conv3d conv_tbc conv_transpose1d
conv_transpose2d.input conv_transpose3d.input convolution cudnn_convolution
cudnn_convolution_transpose prelu addmm addmv addr matmul einsum mm mv linalg_vecdot linear addbmm
baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell
gru_cell rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention
scaled_dot_product_attention"""
_FP32 = """acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan
pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm group_norm
rms_norm frobenius_norm.dim nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss
cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div l1_loss smooth_l1_loss
huber_loss mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss
triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm
logsumexp upsample_nearest1d _upsample_nearest_exact1d upsample_nearest2d
_upsample_nearest_exact2d upsample_nearest3d _upsample_nearest_exact3d upsample_linear1d
upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d upsample_bicubic2d
_upsample_bicubic2d_aa
norm.Scalar norm.ScalarOpt_dim"""  # norm: CUDA appends dtype=fp32; casting the input to fp32
#                                    gives the same output dtype
_FP32_SET_OPT_DTYPE = """prod prod.dim_int softmax.int log_softmax.int cumprod cumsum
linalg_vector_norm linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList"""
_PROMOTE = "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot " \
           "scatter_add"

POLICY: dict[str, str] = {
    **{f"aten::{n}": "lower" for n in _LOWER.split()},
    **{f"aten::{n}": "fp32" for n in _FP32.split()},
    **{f"aten::{n}": "fp32_set_opt_dtype" for n in _FP32_SET_OPT_DTYPE.split()},
    **{f"aten::{n}": "promote" for n in _PROMOTE.split()},
    "aten::binary_cross_entropy": "banned",
}

_AUTOCAST_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _eligible(x: Any) -> bool:
    """What autocast casts: floating CPU tensors other than fp64."""
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64


def _map(args: Any, fn: Any) -> Any:
    if isinstance(args, (list, tuple)):
        return type(args)(_map(a, fn) for a in args)
    return fn(args) if _eligible(args) else args


def _walk(args: Any) -> Iterator[torch.Tensor]:
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _walk(a)
        elif _eligible(a):
            yield a


def _kernel(op: Any, policy: str, low: torch.dtype) -> Any:
    """A Python AutocastCPU kernel that casts like AutocastCUDA's kernel for `op`."""
    names = [a.name for a in op._schema.arguments]
    dtype_at = names.index("dtype") if "dtype" in names else len(names)

    def call(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_KEYS):
            if policy == "banned":
                raise RuntimeError(f"{op.name()} is unsafe to autocast (CUDA autocast refuses it)")
            if policy in ("lower", "fp32"):
                to = low if policy == "lower" else torch.float32
                args, kwargs = _map(args, lambda t: t.to(to)), \
                    {k: _map(v, lambda t: t.to(to)) for k, v in kwargs.items()}
            elif policy == "fp32_set_opt_dtype":  # an unset dtype argument becomes fp32
                if args and _eligible(args[0]):
                    if len(args) > dtype_at and args[dtype_at] is None:
                        args = (*args[:dtype_at], torch.float32, *args[dtype_at + 1:])
                    elif len(args) <= dtype_at and kwargs.get("dtype") is None:
                        kwargs = {**kwargs, "dtype": torch.float32}
            elif policy == "promote":
                found = {t.dtype for t in _walk([*args, *kwargs.values()])}
                to = torch.float32 if torch.float32 in found else low
                args = _map(args, lambda t: t.to(to))
            return op(*args, **kwargs)

    return call


def _overload(name: str) -> Any:
    base, _, overload = name.removeprefix("aten::").partition(".")
    packet = getattr(torch.ops.aten, base)
    return getattr(packet, overload or "default")


@contextlib.contextmanager
def cuda_rules_on_cpu(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """CUDA's casting rules on the AutocastCPU key, without enabling autocast: for code that
    enters and leaves autocast itself and must meet the same rules throughout (a training step
    whose activation checkpoints recompute the forward, under the forward's autocast state,
    during the backward pass)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        cpu_only = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCPU"))
        for name in sorted(cpu_only - set(POLICY)):  # CUDA leaves these to their own dtypes
            lib.impl(name.removeprefix("aten::"), torch.library.fallthrough_kernel,
                     "AutocastCPU")
        for name, policy in POLICY.items():
            lib.impl(name.removeprefix("aten::"), _kernel(_overload(name), policy, dtype),
                     "AutocastCPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def cuda_autocast_on_cpu(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """CPU autocast to `dtype` with CUDA autocast's per-op casting rules (module doc)."""
    with cuda_rules_on_cpu(dtype), torch.autocast("cpu", dtype=dtype):
        yield
