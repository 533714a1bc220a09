"""The CPU loops of `audio.resample`: resampy 0.2.2's arithmetic, reordered only across output samples and
clips, never across the taps of one output sample.

Each output sample is a float32 that its taps are added to in turn, left wing from the centre outward, then
the right wing: `acc = float32(float64(acc) + weight * float64(x))`, the weight `win[o] + eta * delta[o]` in
float64, a multiply and an add, never fused. What makes these loops fast is independence: one sample's taps
are a chain of dependent adds, so each kernel keeps several chains in flight, output samples of one clip
(`one_clip`, numba) or the same output samples of several clips side by side in vector registers (`clips`).
docs/design.md, "The resampling kernels", has the measurements.

`one_clip` and `tap_weights` are numba loops (resampy's own tool), compiled on first use (about 2 s) and
cached on disk (numba's `cache=True`: next to this file, or numba's user cache folder where this folder is
read-only, or `NUMBA_CACHE_DIR`); where no folder is writable they are compiled in each process instead.
`clips` is written in LLVM's IR and compiled with llvmlite (numba's own compiler library) on its first
call, in ≈ 0.1 s: numba's vectoriser kept the running sums in memory and checked at every tap whether the
arrays overlap, which numba cannot rule out; the IR states it (`noalias`) and holds the sums of
CLIPS_OUTPUTS output samples x CLIPS_GROUP clips in registers.
"""

from __future__ import annotations

import ctypes
import functools

import numba
import numpy as np

LANES = 16  # output samples `one_clip` computes together: 16 independent chains of adds
assert LANES & (LANES - 1) == 0  # `clips` finds a sample's block and lane with a shift and a mask


def _compiled(function):
    options = {"nogil": True, "error_model": "numpy", "boundscheck": False}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # numba found no writable folder to cache in
        return numba.njit(cache=False, **options)(function)


@_compiled
def one_clip(x, base, weights, shifts, y):
    """x: (n_pad,) float32, the clip with zeros around it; base[t]: x's index of output sample t's centre;
    weights: (blocks, taps, LANES) float64, 0 for a tap a sample does not have (adding 0 changes nothing);
    shifts[j]: tap j's source sample relative to the centre; y: (blocks * LANES,) float32, written."""
    blocks, taps, _ = weights.shape
    acc = np.zeros(LANES, np.float32)
    for b in range(blocks):
        t0 = b * LANES
        for k in range(LANES):
            acc[k] = 0.0
        for j in range(taps):
            s = shifts[j]
            for k in range(LANES):
                acc[k] = np.float32(np.float64(acc[k]) + weights[b, j, k] * np.float64(x[base[t0 + k] + s]))
        for k in range(LANES):
            y[t0 + k] = acc[k]


CLIPS_GROUP = 8  # clips one vector holds (`clips` takes a multiple of it)
CLIPS_OUTPUTS = 8  # output samples `clips` computes together for each group of clips: 8 chains of adds


def _clips_ir(outputs: int = CLIPS_OUTPUTS, group: int = CLIPS_GROUP) -> str:
    """LLVM IR of `clips`: for each run of `outputs` output samples t (the last one repeated past the end),
    for each group of `group` clips g, the running sums acc[i] (float32 x group) over the taps j in order:
    acc[i] = fptrunc(fpext(acc[i]) + weight(t_i, j) * fpext(x[base[t_i] + shifts[j], g .. g + group])),
    stored to y[t_i, g .. g + group]."""
    vf, vd = f"<{group} x float>", f"<{group} x double>"
    lines = [
        "define void @clips(ptr noalias nocapture readonly %x, i64 %columns, ptr noalias nocapture readonly %base,",
        "                   ptr noalias nocapture readonly %weights, i64 %taps,",
        "                   ptr noalias nocapture readonly %shifts, ptr noalias nocapture %y, i64 %n_out) {",
        "entry:",
        "  %last = sub i64 %n_out, 1",
        "  br label %samples",
        "samples:",
        "  %t = phi i64 [0, %entry], [%t.next, %samples.end]",
    ]
    for i in range(outputs):  # output sample t_i, its block b_i and lane k_i in the weights' layout
        lines += [
            f"  %t{i}.raw = add i64 %t, {i}",
            f"  %t{i}.in = icmp slt i64 %t{i}.raw, %n_out",
            f"  %t{i} = select i1 %t{i}.in, i64 %t{i}.raw, i64 %last",
            f"  %b{i} = lshr i64 %t{i}, {LANES.bit_length() - 1}",
            f"  %k{i} = and i64 %t{i}, {LANES - 1}",
            f"  %centre{i}.at = getelementptr i64, ptr %base, i64 %t{i}",
            f"  %centre{i} = load i64, ptr %centre{i}.at",
            f"  %w{i}.block = mul i64 %b{i}, %taps",
            f"  %w{i}.row = mul i64 %w{i}.block, {LANES}",
            f"  %w{i}.first = add i64 %w{i}.row, %k{i}",
            f"  %y{i}.row = mul i64 %t{i}, %columns",
        ]
    lines += ["  br label %groups", "groups:", "  %g = phi i64 [0, %samples], [%g.next, %taps.end]",
              "  br label %tap", "tap:", "  %j = phi i64 [0, %groups], [%j.next, %tap]"]
    lines += [f"  %acc{i} = phi {vf} [zeroinitializer, %groups], [%acc{i}.next, %tap]" for i in range(outputs)]
    lines += ["  %shift.at = getelementptr i64, ptr %shifts, i64 %j", "  %shift = load i64, ptr %shift.at",
              f"  %j.lanes = mul i64 %j, {LANES}"]
    for i in range(outputs):
        lines += [
            f"  %w{i}.index = add i64 %w{i}.first, %j.lanes",
            f"  %w{i}.at = getelementptr double, ptr %weights, i64 %w{i}.index",
            f"  %w{i} = load double, ptr %w{i}.at",
            f"  %w{i}.one = insertelement {vd} poison, double %w{i}, i32 0",
            f"  %w{i}.all = shufflevector {vd} %w{i}.one, {vd} poison, <{group} x i32> zeroinitializer",
            f"  %r{i} = add i64 %centre{i}, %shift",
            f"  %r{i}.row = mul i64 %r{i}, %columns",
            f"  %r{i}.index = add i64 %r{i}.row, %g",
            f"  %x{i}.at = getelementptr float, ptr %x, i64 %r{i}.index",
            f"  %x{i} = load {vf}, ptr %x{i}.at, align 4",
            f"  %x{i}.wide = fpext {vf} %x{i} to {vd}",
            f"  %acc{i}.wide = fpext {vf} %acc{i} to {vd}",
            f"  %term{i} = fmul {vd} %w{i}.all, %x{i}.wide",
            f"  %sum{i} = fadd {vd} %acc{i}.wide, %term{i}",
            f"  %acc{i}.next = fptrunc {vd} %sum{i} to {vf}",
        ]
    lines += ["  %j.next = add i64 %j, 1", "  %j.more = icmp slt i64 %j.next, %taps",
              "  br i1 %j.more, label %tap, label %taps.end", "taps.end:"]
    for i in range(outputs):
        lines += [f"  %y{i}.index = add i64 %y{i}.row, %g", f"  %y{i}.at = getelementptr float, ptr %y, i64 %y{i}.index",
                  f"  store {vf} %acc{i}.next, ptr %y{i}.at, align 4"]
    lines += [f"  %g.next = add i64 %g, {group}", "  %g.more = icmp slt i64 %g.next, %columns",
              "  br i1 %g.more, label %groups, label %samples.end", "samples.end:",
              f"  %t.next = add i64 %t, {outputs}", "  %t.more = icmp slt i64 %t.next, %n_out",
              "  br i1 %t.more, label %samples, label %done", "done:", "  ret void", "}"]
    return "\n".join(lines)


@functools.cache
def _clips_kernel():
    """`clips`' machine code for this CPU (llvmlite's MCJIT) as a ctypes function, and the engine that owns it."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
    module = llvm.parse_assembly(_clips_ir())
    module.verify()
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    function = ctypes.CFUNCTYPE(None, pointer, integer, pointer, pointer, integer, pointer, pointer, integer)(
        engine.get_function_address("clips"))
    return function, engine


def clips(x, base, weights, shifts, y):
    """x: (n_pad, B) float32, B clips side by side with zeros above and below, B a multiple of CLIPS_GROUP;
    base, weights, shifts as for `one_clip`; y: (n_out, B) float32, written (n_out <= blocks * LANES). Runs on
    the calling thread without the GIL (ctypes lets it go)."""
    n_out, columns = y.shape
    blocks, taps, lanes = weights.shape
    if (x.dtype != np.float32 or y.dtype != np.float32 or weights.dtype != np.float64 or base.dtype != np.int64
            or shifts.dtype != np.int64 or not all(a.flags.c_contiguous for a in (x, base, weights, shifts, y))):
        raise ValueError("clips wants C-contiguous float32 x and y, float64 weights, int64 base and shifts")
    if (x.ndim != 2 or x.shape[1] != columns or columns % CLIPS_GROUP or lanes != LANES or shifts.shape != (taps,)
            or not 0 < n_out <= min(blocks * LANES, base.shape[0])):
        raise ValueError(f"clips: x {x.shape}, y {y.shape}, weights {weights.shape}, shifts {shifts.shape}, "
                         f"base {base.shape} do not fit (clips a multiple of {CLIPS_GROUP})")
    if not taps or not columns:
        y[...] = 0.0
        return
    function, _ = _clips_kernel()
    function(x.ctypes.data, columns, base.ctypes.data, weights.ctypes.data, taps, shifts.ctypes.data,
             y.ctypes.data, n_out)


@_compiled
def tap_weights(window, delta, offset, eta, taps, step, first, count, out):
    """Fill out[b, first + i, k] (output sample t = b * LANES + k, its i-th tap of one wing) with resampy's
    `window[o] + eta[t] * delta[o]`, o = offset[t] + i * step, for i < min(taps[t], count): the float64
    multiply and add of resampy 0.2.2, unfused; the rest of `out` is left as it is (zeros: taps a sample
    lacks). window and delta end with an extra 0 entry, as in `audio.resample._dense`."""
    last = window.shape[0] - 1
    for t in range(offset.shape[0]):
        b = t // LANES
        k = t % LANES
        n = min(taps[t], count)
        for i in range(n):
            o = min(offset[t] + i * step, last)
            out[b, first + i, k] = window[o] + eta[t] * delta[o]
