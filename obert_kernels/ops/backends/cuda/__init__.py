"""The CUDA backend: launchers for the compiled kernels of csrc/ (``obert_kernels._C``).

The extension binds raw device pointers and a stream handle (csrc/README.md says why),
so everything a C++ binding built on torch headers would check is checked here first:
device, dtype, contiguity, shapes — with the shared wording of ``ops.checks`` — and a
backend that cannot serve a call says why (``reasons``) instead of failing inside the
kernel. Kernels run on the current torch stream of the tensors' device. The C++ side
re-checks pointers and sizes and raises ValueError/RuntimeError itself.

F⁻¹ may be dense (num_blocks, B, B) or packed (num_blocks, B(B+1)/2): the kernels read
and write both, float32 only.
"""
from __future__ import annotations


import torch

from ...patterns import Pattern
from ... import checks
from .. import optional_extension
from ...dispatch import register
from ...packed import is_packed, unpack_upper
from ...blocks import check_groups
from ..torch.update import obs_update_torch

extension, _IMPORT_ERROR = optional_extension("obert_kernels._C")

__all__ = ["register_all", "available", "status", "AUTO_PREFERS_CUDA"]

BUILD_HINT = (
    "build it with `OBERT_KERNELS_BUILD_CUDA=1 pip install -e .` (or `pip install .`) on a machine with nvcc "
    "and the CUDA runtime (headers + libcudart)"
)

# backend="auto" tries Triton before CUDA (PREFERENCE in ops/dispatch.py, issue 10 item 7):
# the CUDA kernels' __global__ code has never run anywhere (no GPU was available when they
# were written), while the Triton kernels' programs run in CI under the interpreter. CUDA
# stays available by name (backend="cuda"), and auto takes it only for a call Triton cannot
# serve. Which is correct and faster per op is NOT MEASURED: a GPU benchmark
# (bench/gpu_suite.py, being written) decides later — CUDA and Triton on the same GPU,
# Woodbury at d = 8.5e7, B = 50, m = 1024, and scores/update at BERT-base size. Then either
# reorder PREFERENCE, or set an op to False here to keep auto off CUDA for it altogether
# (an explicit backend="cuda" still runs it).
AUTO_PREFERS_CUDA = {"woodbury_update": True, "obs_scores": True, "obs_update": True, "sequential_order": True}

_UPDATE_MODES = {"obs": 0, "joint": 1, "none": 2}

# F⁻¹ rows each thread of the Woodbury kernel holds: 0 = the kernel's default (2 for
# 32 < B ≤ 64, else 1), or 1, or 2 (32 < B ≤ 64 only). A benchmark knob
# (bench/bench_cuda_gpu.py --rows): the default is not measured yet (csrc/obk_math.cuh).
WOODBURY_ROWS = 0


def available() -> bool:
    """The extension is built and a CUDA device is visible."""
    return extension is not None and extension.device_count()[0] > 0


def status() -> str:
    """One line on the extension: not built (and how to build it), no device, or ready."""
    if extension is None:
        return f"the CUDA extension obert_kernels._C is not built ({_IMPORT_ERROR}); {BUILD_HINT}"
    count, error = extension.device_count()
    if count == 0:
        return f"no CUDA device: the CUDA runtime reports {error or 'no devices'} (extension built for {extension.compiled_archs})"
    return (f"CUDA extension ready: {count} device(s), runtime {extension.runtime_version()}, driver {extension.driver_version()}, "
            f"built for {extension.compiled_archs}")


# ---- reasons -------------------------------------------------------------------------
def _common_reasons(finv: torch.Tensor, tensors: dict) -> list[str]:
    if extension is None:
        return [f"the CUDA extension obert_kernels._C is not built ({_IMPORT_ERROR}); {BUILD_HINT}"]
    if not torch.cuda.is_available():
        return ["no CUDA device (torch.cuda.is_available() is False)"]
    if finv.device.type != "cuda":
        return [f"finv is on {finv.device}: the CUDA kernels need CUDA tensors"]
    out = []
    if finv.dtype != torch.float32:
        out.append(f"the CUDA kernels are float32 only, finv is {finv.dtype} (use backend='torch' for float64)")
    if not finv.is_contiguous():
        out.append("finv must be contiguous for the CUDA kernels (it is updated in place)")
    for name, t in tensors.items():
        if t is not None and t.device != finv.device:
            out.append(f"{name} is on {t.device} but finv is on {finv.device}")
    return out


def _woodbury_reasons(finv, grads, **_) -> list[str]:
    out = _common_reasons(finv, {"grads": grads})
    if not out:
        B = checks.block_dims(finv)[1]
        if B > extension.woodbury_max_block_size():
            out.append(f"the CUDA Woodbury kernel keeps a block's rows in registers: B ≤ {extension.woodbury_max_block_size()}, got {B}")
    return out


def _group_reasons(pattern: Pattern) -> list[str]:
    if pattern.group_size > 8:
        return [f"the CUDA kernels handle groups of up to 8 weights, pattern {pattern.name} has {pattern.group_size}"]
    return []


def _scores_reasons(finv, weight, pattern, return_factors=False, **_) -> list[str]:
    out = _common_reasons(finv, {"weight": weight}) or _group_reasons(pattern)
    if return_factors:  # the Triton and torch backends write them (ops/scores.py)
        out.append("the CUDA scoring kernel does not write the per-candidate factors (return_factors=True)")
    return out


def _update_reasons(finv, weight, pattern, update, **_) -> list[str]:
    out = _common_reasons(finv, {"weight": weight}) or _group_reasons(pattern)
    if not out and update == "joint":
        B = checks.block_dims(finv)[1]
        with torch.cuda.device(finv.device):
            limit = extension.joint_max_block_size()
        if B > limit:
            out.append(f"update='joint' keeps the |P|×|P| system in shared memory: B ≤ {limit} on this device, got {B}")
    return out


def _sequential_reasons(finv, weight, pattern, **_) -> list[str]:
    if extension is not None and not hasattr(extension, "sequential_order"):
        return [f"the built CUDA extension predates csrc/sequential.cu: rebuild it ({BUILD_HINT})"]
    out = _common_reasons(finv, {"weight": weight}) or _group_reasons(pattern)
    if not out:
        B = checks.block_dims(finv)[1]
        unit = pattern.group_size if pattern.kind == "block" else 1
        need = extension.sequential_smem(B, unit)
        have = torch.cuda.get_device_properties(finv.device).shared_memory_per_block_optin
        if need > have:
            out.append(f"sequential_order keeps a B×B block in shared memory: {need} bytes at B={B}, the device has {have}")
    return out


def _auto_reasons(op: str):
    def reasons(**_call) -> list[str]:
        return [] if AUTO_PREFERS_CUDA[op] else [f"auto prefers Triton for {op} (AUTO_PREFERS_CUDA)"]

    return reasons


# ---- launchers -----------------------------------------------------------------------
def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def woodbury_update_cuda(finv: torch.Tensor, grads: torch.Tensor, num_grads: int) -> torch.Tensor:
    """Fused Woodbury update (csrc/woodbury.cu), in place on finv (dense or packed float32).

    grads: (k, d) rows or block-major (num_blocks, k, B), any float dtype (converted to
    float32; the kernel reads either layout through strides, needing only the last dim
    contiguous).
    """
    nb, B = checks.block_dims(finv)
    g = grads if grads.dim() == 2 or grads.dim() == 3 else grads.unsqueeze(0)
    g = g.to(torch.float32)
    if g.stride(-1) != 1:
        g = g.contiguous()
    if g.dim() == 3:  # (nb, k, B)
        k, stride_block, stride_grad, d_valid = g.shape[1], g.stride(0), g.stride(1), nb * B
    else:  # (k, d): block b's coordinate j of gradient t at t·stride + b·B + j
        k, stride_block, stride_grad, d_valid = g.shape[0], B, g.stride(0), g.shape[1]
    with torch.cuda.device(finv.device):
        extension.woodbury_update(finv.data_ptr(), nb, B, is_packed(finv), g.data_ptr(), stride_block, stride_grad,
                           d_valid, k, float(num_grads), WOODBURY_ROWS, _stream(finv.device))
    return finv


_SUBSET_BITS: dict = {}


def _subset_bits(pattern: Pattern, device: torch.device) -> torch.Tensor:
    """(C,) int32: member bitmask of each N-subset, in Pattern.subsets order (cached per device)."""
    key = (pattern.name, str(device))
    if key not in _SUBSET_BITS:
        bits = [sum(1 << i for i in subset) for subset in pattern.subsets]
        _SUBSET_BITS[key] = torch.tensor(bits, dtype=torch.int32, device=device)
    return _SUBSET_BITS[key]


def obs_scores_cuda(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None) -> torch.Tensor:
    """Scores (csrc/scores.cu): (d,), (d/4,) or (d/M, C(M,N)) float32, as obs_scores_torch."""
    nb, B = checks.block_dims(finv)
    d, g = weight.numel(), pattern.group_size
    groups = d if g == 1 else check_groups(d, pattern)
    w = weight.detach().reshape(-1).to(torch.float32).contiguous()
    p = None if pruned is None else pruned.reshape(-1).contiguous()
    if pattern.is_nm:
        bits = _subset_bits(pattern, finv.device)
        out = torch.empty(groups, bits.numel(), dtype=torch.float32, device=finv.device)
    else:
        bits, out = None, torch.empty(groups, dtype=torch.float32, device=finv.device)
    with torch.cuda.device(finv.device):
        extension.obs_scores(w.data_ptr(), 0 if p is None else p.data_ptr(), finv.data_ptr(), nb, B, is_packed(finv), d, g,
                      pattern.n_prune, 0 if bits is None else bits.data_ptr(), 0 if bits is None else bits.numel(),
                      out.data_ptr(), _stream(finv.device))
    return out


def obs_update_cuda(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern, update: str) -> torch.Tensor:
    """Weight update and scatter (csrc/update.cu), in place on weight (computed in float32).

    A block whose joint system is not positive definite in float32 (rare: F⁻¹_PP of an
    SPD F⁻¹ is SPD in exact arithmetic) is left untouched by the kernel and redone on the
    torch backend, which falls back to a general solve — the same answer as backend="torch".
    """
    nb, B = checks.block_dims(finv)
    d = weight.numel()
    # a float32 work copy, written back with copy_ (as the torch backend does): autograd's
    # version counter sees the change, which a raw-pointer write into weight would hide
    w = weight.detach().reshape(-1).to(torch.float32, copy=True).contiguous()
    m = prune_mask.reshape(-1).contiguous()
    failed = torch.zeros(nb, dtype=torch.int32, device=finv.device)
    with torch.cuda.device(finv.device):
        extension.obs_update(w.data_ptr(), m.data_ptr(), finv.data_ptr(), nb, B, is_packed(finv), d, pattern.group_size,
                      _UPDATE_MODES[update], failed.data_ptr(), _stream(finv.device))
    if update == "joint":
        for b in torch.nonzero(failed).flatten().tolist():  # one sync; the list is almost always empty
            lo, hi = b * B, min((b + 1) * B, d)
            block = unpack_upper(finv[b : b + 1], B) if is_packed(finv) else finv[b : b + 1]
            obs_update_torch(w[lo:hi], block, m[lo:hi], pattern, update)
    with torch.no_grad():
        weight.copy_(w.reshape(weight.shape))
    return weight


def sequential_order_cuda(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None):
    """Greedy order and cumulative losses (csrc/sequential.cu; ops/backends/torch/sequential.py), float32; finv
    dense or packed, read only. Returns (order (num_blocks, U) int64, cumloss (num_blocks, U) float32)."""
    nb, B = checks.block_dims(finv)
    unit = pattern.group_size if pattern.kind == "block" else 1
    m, n = (pattern.group_size, pattern.n_prune) if pattern.is_nm else (0, 0)
    w = weight.detach().reshape(-1).to(torch.float32).contiguous()
    p = None if pruned is None else pruned.reshape(-1).contiguous()
    order = torch.full((nb, B // unit), -1, dtype=torch.int64, device=finv.device)
    cum = torch.full((nb, B // unit), float("inf"), dtype=torch.float32, device=finv.device)
    with torch.cuda.device(finv.device):
        extension.sequential_order(w.data_ptr(), 0 if p is None else p.data_ptr(), finv.data_ptr(), nb, B, is_packed(finv),
                            weight.numel(), unit, m, n, order.data_ptr(), cum.data_ptr(), _stream(finv.device))
    return order, cum


def register_all() -> None:
    """Register the CUDA ops; each says why it cannot serve a call (not built, no device, …)."""
    register("woodbury_update", "cuda", woodbury_update_cuda, _woodbury_reasons, _auto_reasons("woodbury_update"), packed=True)
    register("obs_scores", "cuda", obs_scores_cuda, _scores_reasons, _auto_reasons("obs_scores"), packed=True)
    register("obs_update", "cuda", obs_update_cuda, _update_reasons, _auto_reasons("obs_update"), packed=True)
    register("sequential_order", "cuda", sequential_order_cuda, _sequential_reasons, _auto_reasons("sequential_order"),
             packed=True)
