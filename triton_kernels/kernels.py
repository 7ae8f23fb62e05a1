"""The softiou kernels in Triton. They mirror csrc/softiou_math.h function by function (the names
in the comments) and are tested against the same reference (softiou_cuda.reference).

pixel_kernel     multiclass: a program owns a [BLOCK_C, BLOCK_M] tile (all classes of BLOCK_M
                 pixels of one sample) and loops over its chunk of pixels; softmax over axis 0.
row_kernel       binary / multilabel: elementwise over a (sample, class) row.
reduce_kernel    the fixed-order second stage over the programs' partial sums.
finalize_kernel  the finalize step (csrc/finalize.h): from the partial sums to the loss and the
                 coefficients of its gradient, in one program.
counts_kernel    the hard counts (tp, fp, tn, fn; SPEC section 11), where asked and the
                 statistics pass cannot count them (a multiclass input of probabilities with a
                 dense target, which row_kernel reads a class at a time); elsewhere pixel_kernel
                 and row_kernel count them in the statistics pass itself (COUNT).

The gradient kernels read the gradient of the loss with respect to I and P of each pair as
``go * coef`` (softiou_math.h: pair_gradient).

Deterministic: the forward accumulates elementwise into a register tile across its loop and
reduces it once at the end; the partials are added in program order by reduce_kernel. No float
atomics: only the hard counts add with atomics, integers, exact in any order.
Invalid values (class index out of range, dense target outside [0, 1], negative weight,
probability input outside [0, 1]) make the statistics NaN: Triton has no always-on device assert.
"""

import triton
import triton.language as tl


@triton.jit
def _intersection(p, y, USE_MIN: tl.constexpr):  # softiou_math.h: intersection
    if USE_MIN:
        return tl.where(p > y, y, p)
    else:
        return p * y


@triton.jit
def _intersection_dp(p, y, USE_MIN: tl.constexpr):  # softiou_math.h: intersection_dp
    if USE_MIN:
        return tl.where(p < y, 1.0, tl.where(p > y, 0.0, 0.5))
    else:
        return y


@triton.jit
def _power_term(v, SQUARED: tl.constexpr):  # softiou_math.h: power_term
    if SQUARED:
        return v * v
    else:
        return v


@triton.jit
def _grad_p(p, y, gI, gP, USE_MIN: tl.constexpr, SQUARED: tl.constexpr):  # softiou_math.h: grad_p
    if SQUARED:
        return gI * _intersection_dp(p, y, USE_MIN) + 2.0 * p * gP
    else:
        return gI * _intersection_dp(p, y, USE_MIN) + gP


@triton.jit
def _outside_unit_interval(v):  # softiou_math.h: outside_unit_interval
    return (v < 0) | (v > 1)


@triton.jit
def _pair_gradient(coef_ptr, go_ptr, n, c, kn, kc, kk, gon, goc, mask, HAS_GO: tl.constexpr,
                   ACC: tl.constexpr):  # softiou_math.h: pair_gradient
    k = coef_ptr + n * kn + c * kc
    gI = tl.load(k, mask=mask, other=0.0).to(ACC)
    gP = tl.load(k + kk, mask=mask, other=0.0).to(ACC)
    if HAS_GO:
        go = tl.load(go_ptr + n * gon + c * goc, mask=mask, other=0.0).to(ACC)
        gI = go * gI
        gP = go * gP
    return gI, gP


@triton.jit
def _ce_gradient(ce_ptr, go_ptr, n, ce_sn, gon, HAS_GO: tl.constexpr,
                 ACC: tl.constexpr):  # softiou_math.h: ce_gradient
    g = tl.load(ce_ptr + n * ce_sn).to(ACC)
    if HAS_GO:
        g = g * tl.load(go_ptr + n * gon).to(ACC)
    return g


@triton.jit
def _class_map_keep(t, mask, C, ignore, HAS_IGNORE: tl.constexpr):
    """The class map's values counted (SPEC section 11): loaded, in [0, C), not ignored."""
    keep = mask & (t >= 0) & (t < C)
    if HAS_IGNORE:
        keep = keep & (t != ignore)
    return keep


@triton.jit
def _hard_classes(x, t, mask2, mmask, C, ignore, CLASS_MAP: tl.constexpr,
                  HAS_IGNORE: tl.constexpr, ACC: tl.constexpr):
    """Multiclass, SPEC section 11 on a loaded [BLOCK_C, BLOCK_M] tile (as
    csrc/cuda/kernels_counts.cu): per pixel (keep, predicted class, target class), [BLOCK_M].
    x: the raw input; t: the class map [BLOCK_M] or the dense target's tile; mask2, mmask: the
    elements and pixels loaded (any `other`). tl.argmax's ties go to the lowest index: torch.argmax's
    first maximal class, of the input and of a dense target (a bool target cannot hold -inf)."""
    pred = tl.argmax(tl.where(mask2, x, float("-inf")), axis=0, tie_break_left=True)
    if CLASS_MAP:
        keep = _class_map_keep(t, mmask, C, ignore, HAS_IGNORE)
        true = t.to(tl.int32)  # (in range where kept)
    else:
        keep = mmask
        true = tl.argmax(tl.where(mask2, t.to(ACC), float("-inf")), axis=0, tie_break_left=True)
    return keep, pred.to(tl.int32), true.to(tl.int32)


@triton.jit
def _add_class_counts(tp, predicted, target, kept, x, t, mask2, mmask, C, ignore,
                      CLASS_MAP: tl.constexpr, HAS_IGNORE: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_C: tl.constexpr, FLAT: tl.constexpr = False):
    """The multiclass totals (int64 [BLOCK_C]: tp, predicted, target, kept) plus one tile's
    (_hard_classes), through histograms of the pixels' classes."""
    keep, pred, true = _hard_classes(x, t, mask2, mmask, C, ignore, CLASS_MAP, HAS_IGNORE, ACC)
    if FLAT:  # tl.histogram takes one axis of pixels
        keep = tl.reshape(keep, [keep.numel])
        pred = tl.reshape(pred, [pred.numel])
        true = tl.reshape(true, [true.numel])
    tp += tl.histogram(true, BLOCK_C, mask=keep & (pred == true)).to(tl.int64)
    predicted += tl.histogram(pred, BLOCK_C, mask=keep).to(tl.int64)
    target += tl.histogram(true, BLOCK_C, mask=keep).to(tl.int64)
    kept += tl.sum(keep.to(tl.int64), axis=0)
    return tp, predicted, target, kept


@triton.jit
def _hard_elements(x, t, c, mask, thr, C, ignore, CLASS_MAP: tl.constexpr,
                   INT_TARGET: tl.constexpr, HAS_IGNORE: tl.constexpr, ACC: tl.constexpr):
    """Binary and multilabel, SPEC section 11 per loaded element (as
    csrc/cuda/kernels_counts.cu): (keep, pred, true), booleans. x: the raw input (pred: x > thr,
    thr in input space); t: the class map's values broadcast against c (the classes of x's
    elements; true: t == c), or the target's elements (an integer's 1, y > 0.5)."""
    pred = x > thr
    if CLASS_MAP:
        keep = _class_map_keep(t, mask, C, ignore, HAS_IGNORE)
        true = c == t
    elif INT_TARGET:
        keep = mask & ((t == 0) | (t == 1))
        if HAS_IGNORE:
            keep = keep & (t != ignore)
        true = t == 1
    else:
        tv = t.to(ACC)
        keep = mask
        if HAS_IGNORE:
            keep = keep & (tv != ignore)
        true = tv > 0.5
    return keep, pred, true


@triton.jit
def _count_code(keep, pred, true):
    """An element's (tp, predicted, target, kept) as the 8-bit fields of one int32. The kernels
    add an element's codes over at most COUNT_FOLD < 128 tiles (configs.COUNT_FOLD) before they
    fold them into int64 totals: no field carries into the next, nor into the sign bit."""
    code = (pred & true).to(tl.int32) + (pred.to(tl.int32) << 8) + (true.to(tl.int32) << 16) \
        + (1 << 24)
    return tl.where(keep, code, 0)


@triton.jit
def _field(code, field: tl.constexpr, AXIS: tl.constexpr):
    return tl.sum(((code >> (8 * field)) & 255).to(tl.int64), axis=AXIS)


@triton.jit
def _fold_codes(code, tp, predicted, target, kept, AXIS: tl.constexpr):
    """The totals plus the codes' fields, summed over AXIS (the elements of a class)."""
    return (tp + _field(code, 0, AXIS), predicted + _field(code, 1, AXIS),
            target + _field(code, 2, AXIS), kept + _field(code, 3, AXIS))


@triton.jit
def _add_codes(code, tp, predicted, target, kept, keep, pred, true, tile,
               COUNT_FOLD: tl.constexpr, AXIS: tl.constexpr):
    """One tile's elements added to the codes; after every COUNT_FOLD tiles (tile: its index in
    the program) the codes folded into the totals and cleared."""
    code += _count_code(keep, pred, true)
    if tile % COUNT_FOLD == COUNT_FOLD - 1:
        tp, predicted, target, kept = _fold_codes(code, tp, predicted, target, kept, AXIS)
        code = tl.zeros_like(code)
    return code, tp, predicted, target, kept


@triton.jit
def _add_counts(out, tp, predicted, true, kept, mask):
    """(tp, fp, tn, fn) from the totals, added to out[0:4] (int64, zeroed by the caller: integer
    additions, exact in any order)."""
    tl.atomic_add(out + 0, tp, mask=mask)
    tl.atomic_add(out + 1, predicted - tp, mask=mask)
    tl.atomic_add(out + 2, kept - predicted - true + tp, mask=mask)
    tl.atomic_add(out + 3, true - tp, mask=mask)


@triton.jit
def _classes(v, IN_THREAD: tl.constexpr):
    """A per-class value [BLOCK_C] broadcast against the pixel kernel's tile."""
    if IN_THREAD:
        return v[:, None, None]
    else:
        return v[:, None]


@triton.jit
def _pixels(v, IN_THREAD: tl.constexpr):
    """A per-pixel value ([BLOCK_M], or [BLOCK_R, V] IN_THREAD) broadcast against the tile."""
    if IN_THREAD:
        return v[None, :, :]
    else:
        return v[None, :]


@triton.jit
def _sum_v(v, AXIS: tl.constexpr, IN_THREAD: tl.constexpr):
    """The tile's values ([BLOCK_C, BLOCK_R, V], AXIS 2) or the per-pixel ones ([BLOCK_R, V],
    AXIS 1) summed over the V pixels of a thread, in-thread; as they are in the other layout."""
    if IN_THREAD:
        return tl.sum(v, axis=AXIS)
    else:
        return v


@triton.jit
def _pixel_sum(v, IN_THREAD: tl.constexpr):
    """The sum of a per-pixel accumulator."""
    if IN_THREAD:
        return tl.sum(tl.sum(v, axis=1), axis=0)
    else:
        return tl.sum(v, axis=0)


@triton.jit
def _per_pixel(ptr, m, mmask, c, IN_THREAD: tl.constexpr):
    """A per-pixel input (the class map, the weight) at pixel offsets m. IN_THREAD: loaded
    through a pointer of the tile's own shape, class row 0 alone unmasked, so that Triton's
    layout pass gives it the input's layout: no conversion between layouts (shared memory and a
    barrier pair) is left in the loop, and with the class rows in-thread and C a constant the
    other rows are constant zeros, folded away."""
    if IN_THREAD:
        row0 = c[:, None, None] == 0
        return tl.sum(tl.load(ptr + m[None, :, :] + c[:, None, None] * 0,
                              mask=mmask[None, :, :] & row0, other=0), axis=0)
    else:
        return tl.load(ptr + m, mask=mmask, other=0)


@triton.jit
def pixel_kernel(x_ptr, t_ptr, w_ptr, coef_ptr, go_ptr, out_ptr, gx_ptr, cw_ptr, ce_ptr,
                 counts_ptr, C, M, chunk, n_chunks,
                 sxn, sxc, sxm, stn, stc, stm, swn, swm, sgn, sgc, sgm,
                 kn, kc, kk, gon, goc, ce_sn,
                 sharp_hi, sharp_lo, ignore, ls_hi, ls_lo, pw_hi, pw_lo, thr_hi, thr_lo,
                 FWD: tl.constexpr, COUNT: tl.constexpr, COUNT_FOLD: tl.constexpr,
                 MULTICLASS: tl.constexpr,
                 CLASS_MAP: tl.constexpr, HAS_W: tl.constexpr,
                 HAS_IGNORE: tl.constexpr, SOFTMAX: tl.constexpr, FROM_LOGITS: tl.constexpr,
                 USE_MIN: tl.constexpr, HAS_GO: tl.constexpr, CE: tl.constexpr,
                 HAS_CW: tl.constexpr, SQUARED: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, V: tl.constexpr,
                 IN_THREAD: tl.constexpr, CLASSES: tl.constexpr):
    """Forward: the partial sums of program pid at out[pid * (3C + 2)]: I, P, Y per class, then
    the cross-entropy's numerator and denominator (CE); COUNT: the hard counts added to
    counts[n] (MULTICLASS: argmax; else a multilabel class map, x > thr). Backward: the
    gradient, with the cross-entropy term's (CE).

    A program loops over its chunk of pixels in tiles of all classes of BLOCK_M = BLOCK_R * V
    pixels, in one of two layouts (configs.pixel_config):
    - [BLOCK_C, BLOCK_M] (V = 1): Triton's layout pass spreads a tile of a few thousand
      elements over lanes and warps as it sees fit, the classes too: a class reduction may go
      through shared memory;
    - IN_THREAD, [BLOCK_C, BLOCK_R, V] with BLOCK_R = 32 * num_warps: the layout pass gives the
      V contiguous pixels to one thread (one load per class), the lanes and warps to BLOCK_R,
      and leaves the classes in each thread, so that the softmax's class reductions are
      in-thread; C = CLASSES is then a constant, so that the padded classes' code folds away.
    The forward adds each tile, summed over V, into [BLOCK_C, BLOCK_R] accumulators and sums
    them over the pixels at the end."""
    BLOCK_M: tl.constexpr = BLOCK_R * V
    if IN_THREAD:
        C = CLASSES
    pid = tl.program_id(0)
    n = (pid // n_chunks).to(tl.int64)
    k = (pid % n_chunks).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    c64 = c.to(tl.int64)
    if IN_THREAD:
        off = (tl.arange(0, BLOCK_R)[:, None] * V + tl.arange(0, V)[None, :]).to(tl.int64)
    else:
        off = tl.arange(0, BLOCK_M).to(tl.int64)
    m_begin = k * chunk
    m_end = tl.minimum(m_begin + chunk, M)
    accI = tl.zeros([BLOCK_C, BLOCK_R], ACC)
    accP = tl.zeros([BLOCK_C, BLOCK_R], ACC)
    accY = tl.zeros([BLOCK_C, BLOCK_R], ACC)
    ce_num = tl.zeros(off.shape, ACC)
    ce_den = tl.zeros(off.shape, ACC)
    nbad = tl.zeros([BLOCK_R], tl.int32)  # one per row of the tile (_sum_v)
    sharp = _from_bits(sharp_hi, sharp_lo, ACC)
    if COUNT:  # (MULTICLASS: histograms of the pixels' classes; else per-element codes)
        thr = _from_bits(thr_hi, thr_lo, ACC)
        code = tl.zeros([BLOCK_C, BLOCK_M], tl.int32)
        n_tp = tl.zeros([BLOCK_C], tl.int64)
        n_pred = tl.zeros([BLOCK_C], tl.int64)
        n_true = tl.zeros([BLOCK_C], tl.int64)
        n_kept = tl.zeros([BLOCK_C], tl.int64)
    if CE:  # the cross-entropy term's class weights and label smoothing
        ls = _from_bits(ls_hi, ls_lo, ACC)
        if HAS_CW:
            cwv = tl.load(cw_ptr + c64, mask=cmask, other=0.0).to(ACC)
        else:
            cwv = tl.where(cmask, 1.0, 0.0).to(ACC)
        cw_total = tl.sum(cwv, axis=0)
    if not FWD:
        gI, gP = _pair_gradient(coef_ptr, go_ptr, n, c64, kn, kc, kk, gon, goc, cmask, HAS_GO,
                                ACC)
        if CE:
            gce = _ce_gradient(ce_ptr, go_ptr, n, ce_sn, gon, HAS_GO, ACC)
    for m0 in range(m_begin, m_end, BLOCK_M):
        m = m0 + off
        mmask = m < m_end
        cc = _classes(c64, IN_THREAD)
        mask2 = _classes(cmask, IN_THREAD) & _pixels(mmask, IN_THREAD)
        x = tl.load(x_ptr + n * sxn + cc * sxc + _pixels(m, IN_THREAD) * sxm, mask=mask2,
                    other=0.0).to(ACC)
        if not FROM_LOGITS:
            nbad += _sum_v(tl.sum((_outside_unit_interval(x) & mask2).to(tl.int32), axis=0), 1,
                           IN_THREAD)
        # probabilities (softmax_arg, softmax_shift, softmax_exp, softmax_inv_sum)
        if SOFTMAX:
            if FROM_LOGITS:
                l = sharp * x
            else:
                l = sharp * tl.log(x)
            l = tl.where(_classes(cmask, IN_THREAD), l, float("-inf"))
            mx = tl.max(l, axis=0)
            mx = tl.where(mx == float("-inf"), 0.0, mx)  # softmax_shift
            d = l - _pixels(mx, IN_THREAD)  # (<= 0)
            if CE and FWD and IN_THREAD:  # the cross-entropy's CD (below)
                CD = tl.sum(tl.where(_classes(cmask, IN_THREAD), _classes(cwv, IN_THREAD) * d,
                                     0.0), axis=0)
            e = tl.exp(d)  # softmax_exp
            s = tl.sum(e, axis=0)
            inv = tl.where(s == 0, 0.0, 1.0 / s)
            p = e * _pixels(inv, IN_THREAD)
        else:
            p = x
        # target and validity
        if CLASS_MAP:
            t = _per_pixel(t_ptr + n * stn, m * stm, mmask, c, IN_THREAD)
            if IN_THREAD and t.dtype.primitive_bitwidth < 64:
                t = t.to(tl.int32)  # (32-bit comparisons with the classes: fewer registers)
            else:
                t = t.to(tl.int64)
            valid = mmask
            if HAS_IGNORE:
                valid = valid & (t != ignore)
            nbad += _sum_v((valid & ((t < 0) | (t >= C))).to(tl.int32), 1, IN_THREAD)
            if IN_THREAD:
                y = (_pixels(t, IN_THREAD) == _classes(c, IN_THREAD)).to(ACC)
            else:
                y = (_pixels(t, IN_THREAD) == cc).to(ACC)
            v2 = _pixels(valid, IN_THREAD) & _classes(cmask, IN_THREAD)
        else:
            y = tl.load(t_ptr + n * stn + cc * stc + _pixels(m, IN_THREAD) * stm, mask=mask2,
                        other=0).to(ACC)
            nbad += _sum_v(tl.sum((_outside_unit_interval(y) & mask2).to(tl.int32), axis=0), 1,
                           IN_THREAD)
            valid = mmask
            v2 = mask2
        if HAS_W:
            w = _per_pixel(w_ptr + n * swn, m * swm, mmask, c, IN_THREAD).to(ACC)
            nbad += _sum_v((w < 0).to(tl.int32), 1, IN_THREAD)
        else:
            w = tl.full(off.shape, 1.0, ACC)
        ww = _pixels(w, IN_THREAD)
        if CE and not (FWD and IN_THREAD):
            # softiou_math.h: the term's weights q_k = c_k ((1 - eps) y_k + eps / C)
            q = tl.where(v2, _classes(cwv, IN_THREAD) * ((1.0 - ls) * y + ls / C), 0.0)
        if COUNT:
            if CLASS_MAP:
                tc = t
            else:
                tc = y
            if MULTICLASS:
                n_tp, n_pred, n_true, n_kept = _add_class_counts(
                    n_tp, n_pred, n_true, n_kept, x, tc, mask2, mmask, C, ignore, CLASS_MAP,
                    HAS_IGNORE, ACC, BLOCK_C, IN_THREAD)
            else:  # a multilabel class map: x > thr per element
                keep, pred, true = _hard_elements(x, _pixels(tc, IN_THREAD), cc, mask2, thr, C,
                                                  ignore, True, False, HAS_IGNORE, ACC)
                if IN_THREAD:  # the codes as [BLOCK_C, BLOCK_M]
                    keep = tl.reshape(keep, [BLOCK_C, BLOCK_M])
                    pred = tl.reshape(pred, [BLOCK_C, BLOCK_M])
                    true = tl.reshape(true, [BLOCK_C, BLOCK_M])
                code, n_tp, n_pred, n_true, n_kept = _add_codes(
                    code, n_tp, n_pred, n_true, n_kept, keep, pred, true,
                    (m0 - m_begin) // BLOCK_M, COUNT_FOLD, 1)
        if FWD:
            accI += _sum_v(tl.where(v2, ww * _intersection(p, y, USE_MIN), 0.0), 2, IN_THREAD)
            accP += _sum_v(tl.where(v2, ww * _power_term(p, SQUARED), 0.0), 2, IN_THREAD)
            accY += _sum_v(tl.where(v2, ww * _power_term(y, SQUARED), 0.0), 2, IN_THREAD)
            if CE and IN_THREAD:
                # the cross-entropy of a pixel, l = sum_k q_k (lse - l_k) = Q log S -
                # sum_k q_k d_k (d_k = l_k - shift <= 0): two sums of non-negative terms (no
                # cancellation), through sums over the pixel's classes rather than a tile of
                # q_k, which with l_k would be held beside p_k: CY = sum c_k y_k,
                # CYD = sum c_k y_k d_k, CD = sum c_k d_k and W = sum c_k (a kept pixel: every
                # class); Q = (1 - eps) CY + eps W / C and sum q_k d_k = (1 - eps) CYD +
                # eps CD / C. CD is formed with the softmax, before the exp, so that d_k dies
                # with it; a class map's CY = c_t and CYD = c_t d_t, with x_t loaded again
                # (the tile's own lines, in L1): picked from the tile, the class comparisons
                # would be held across the exp (a hundred registers). A dense target's sums
                # would hold d_k beside p_k: that pass takes the other layout.
                tl.static_assert(CLASS_MAP, "a dense target's cross-entropy forward takes the "
                                 "other layout (configs.pixel_config)")
                kt = _class_map_keep(t, mmask, C, ignore, HAS_IGNORE)
                tt = tl.where(kt, t, 0).to(tl.int64)
                xt = _per_pixel(x_ptr + n * sxn, tt * sxc + m * sxm, kt, c,
                                IN_THREAD).to(ACC)
                if FROM_LOGITS:
                    lt = sharp * xt
                else:
                    lt = sharp * tl.log(xt)
                if HAS_CW:
                    CY = _per_pixel(cw_ptr, tt, kt, c, IN_THREAD).to(ACC)
                else:
                    CY = tl.where(kt, 1.0, 0.0).to(ACC)
                CYD = CY * tl.where(kt, lt - mx, 0.0)
                Q = (1.0 - ls) * CY + cw_total * (ls / C)
                ell = Q * tl.log(s) - ((1.0 - ls) * CYD + CD * (ls / C))
            elif CE:  # l = sum_k q_k (lse - l_k)
                lse = mx + tl.log(s)
                ell = tl.sum(tl.where(v2, q * (_pixels(lse, IN_THREAD) - l), 0.0), axis=0)
            if CE:  # denominator: w c_t (class map) or w (dense)
                ce_num += tl.where(valid, w * ell, 0.0)
                if CLASS_MAP:
                    if not IN_THREAD:
                        CY = tl.sum(tl.where(v2, _classes(cwv, IN_THREAD) * y, 0.0), axis=0)
                    ce_den += tl.where(valid, w * CY, 0.0)
                else:
                    ce_den += tl.where(valid, w, 0.0)
        else:
            # grad_p, then the softmax backward with softmax_arg_dx
            g = tl.where(v2, ww * _grad_p(p, y, _classes(gI, IN_THREAD), _classes(gP, IN_THREAD),
                                          USE_MIN, SQUARED), 0.0)
            if SOFTMAX:
                dot = tl.sum(p * g, axis=0)
                if FROM_LOGITS:
                    dx = sharp * p * (g - _pixels(dot, IN_THREAD))
                else:
                    fac = tl.where(x > 0, sharp / x, 0.0)
                    dx = fac * p * (g - _pixels(dot, IN_THREAD))
            else:
                dx = g
            if CE:  # + a gce w (Q p_k - q_k)
                Q = tl.sum(q, axis=0)
                dx += sharp * gce * tl.where(v2, ww * (_pixels(Q, IN_THREAD) * p - q), 0.0)
            tl.store(gx_ptr + n * sgn + cc * sgc + _pixels(m, IN_THREAD) * sgm,
                     dx.to(gx_ptr.dtype.element_ty), mask=mask2)
    if FWD:
        I = tl.sum(accI, axis=1)
        P = tl.sum(accP, axis=1)
        Y = tl.sum(accY, axis=1)
        P = tl.where(tl.sum(nbad, axis=0) > 0, float("nan"), P)
        row = out_ptr + pid.to(tl.int64) * (C * 3 + 2)
        tl.store(row + c64 * 3, I, mask=cmask)
        tl.store(row + c64 * 3 + 1, P, mask=cmask)
        tl.store(row + c64 * 3 + 2, Y, mask=cmask)
        tl.store(row + C * 3, _pixel_sum(ce_num, IN_THREAD))
        tl.store(row + C * 3 + 1, _pixel_sum(ce_den, IN_THREAD))
        if COUNT:
            if not MULTICLASS:
                n_tp, n_pred, n_true, n_kept = _fold_codes(code, n_tp, n_pred, n_true, n_kept, 1)
            _add_counts(counts_ptr + (n * C + c64) * 4, n_tp, n_pred, n_true, n_kept, cmask)


@triton.jit
def row_kernel(x_ptr, t_ptr, w_ptr, coef_ptr, go_ptr, out_ptr, gx_ptr, cw_ptr, ce_ptr,
               counts_ptr, C, M, chunk, n_chunks,
               sxn, sxc, sxm, stn, stc, stm, swn, swm, sgn, sgc, sgm,
               kn, kc, kk, gon, goc, ce_sn,
               sharp_hi, sharp_lo, ignore, ls_hi, ls_lo, pw_hi, pw_lo, thr_hi, thr_lo,
               FWD: tl.constexpr, COUNT: tl.constexpr, COUNT_FOLD: tl.constexpr,
               INT_TARGET: tl.constexpr, CLASS_MAP: tl.constexpr,
               HAS_W: tl.constexpr, HAS_IGNORE: tl.constexpr, SIGMOID: tl.constexpr,
               FROM_LOGITS: tl.constexpr, USE_MIN: tl.constexpr, HAS_GO: tl.constexpr,
               CE: tl.constexpr, HAS_CW: tl.constexpr, SQUARED: tl.constexpr,
               ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Forward: the partial sums of program pid at out[pid * 5]: I, P, Y, then the binary
    cross-entropy's numerator and denominator (CE); COUNT: the hard counts (x > thr) added to
    counts[n, c] (binary and multilabel only). CLASS_MAP: a multilabel class map [N, M],
    y = [t == c] (SPEC section 10)."""
    pid = tl.program_id(0)
    r = (pid // n_chunks).to(tl.int64)
    k = (pid % n_chunks).to(tl.int64)
    n = r // C
    c = r % C
    m_begin = k * chunk
    m_end = tl.minimum(m_begin + chunk, M)
    accI = tl.zeros([BLOCK], ACC)
    accP = tl.zeros([BLOCK], ACC)
    accY = tl.zeros([BLOCK], ACC)
    ce_num = tl.zeros([BLOCK], ACC)
    ce_den = tl.zeros([BLOCK], ACC)
    nbad = tl.zeros([BLOCK], tl.int32)
    sharp = _from_bits(sharp_hi, sharp_lo, ACC)
    if COUNT:
        thr = _from_bits(thr_hi, thr_lo, ACC)
        code = tl.zeros([BLOCK], tl.int32)
        n_tp = tl.zeros([], tl.int64)
        n_pred = tl.zeros([], tl.int64)
        n_true = tl.zeros([], tl.int64)
        n_kept = tl.zeros([], tl.int64)
    if CE:
        if HAS_CW:
            cw = tl.load(cw_ptr + c).to(ACC)
        else:
            cw = 1.0
        pw = _from_bits(pw_hi, pw_lo, ACC)  # the binary cross-entropy's pos_weight
    if not FWD:
        gI, gP = _pair_gradient(coef_ptr, go_ptr, n, c, kn, kc, kk, gon, goc, True, HAS_GO, ACC)
        if CE:
            gce = _ce_gradient(ce_ptr, go_ptr, n, ce_sn, gon, HAS_GO, ACC)
    for m0 in range(m_begin, m_end, BLOCK):
        m = m0 + tl.arange(0, BLOCK).to(tl.int64)
        mm = m < m_end
        x = tl.load(x_ptr + n * sxn + c * sxc + m * sxm, mask=mm, other=0.0).to(ACC)
        if not FROM_LOGITS:
            nbad += (_outside_unit_interval(x) & mm).to(tl.int32)
        # probabilities (sigmoid_arg, sigmoid_and_slope, sigmoid_arg_dx)
        if SIGMOID:
            if FROM_LOGITS:
                z = sharp * x
            else:
                z = sharp * (tl.log(x) - tl.log(1.0 - x))
            e = tl.exp(-tl.abs(z))
            inv = 1.0 / (1.0 + e)
            p = tl.where(z < 0, e * inv, inv)
            if FROM_LOGITS:
                dp_dx = e * inv * inv * sharp
            else:
                d = x * (1.0 - x)
                dp_dx = e * inv * inv * tl.where(d > 0, sharp / d, 0.0)
        else:
            p = x
            dp_dx = tl.full([BLOCK], 1.0, ACC)
        if CLASS_MAP:
            t = tl.load(t_ptr + n * stn + m * stm, mask=mm, other=0).to(tl.int64)
            valid = mm
            if HAS_IGNORE:
                valid = valid & (t != ignore)
            nbad += (valid & ((t < 0) | (t >= C))).to(tl.int32)
            y = tl.where(valid & (t == c), 1.0, 0.0).to(ACC)
        elif INT_TARGET:
            t = tl.load(t_ptr + n * stn + c * stc + m * stm, mask=mm, other=0).to(tl.int64)
            valid = mm
            if HAS_IGNORE:
                valid = valid & (t != ignore)
            nbad += (valid & (t != 0) & (t != 1)).to(tl.int32)
            y = tl.where(valid, t, 0).to(ACC)
        else:
            y = tl.load(t_ptr + n * stn + c * stc + m * stm, mask=mm, other=0).to(ACC)
            t = y  # as loaded (the counts' target)
            valid = mm
            if HAS_IGNORE:  # per element (SPEC section 10)
                valid = valid & (y != ignore)
                y = tl.where(valid, y, 0.0)
            nbad += (_outside_unit_interval(y) & mm).to(tl.int32)
        if HAS_W:
            w = tl.load(w_ptr + n * swn + m * swm, mask=mm, other=0.0).to(ACC)
            nbad += (w < 0).to(tl.int32)
        else:
            w = tl.full([BLOCK], 1.0, ACC)
        if COUNT:
            keep, pred, true = _hard_elements(x, t, c, mm, thr, C, ignore, CLASS_MAP, INT_TARGET,
                                              HAS_IGNORE, ACC)
            code, n_tp, n_pred, n_true, n_kept = _add_codes(
                code, n_tp, n_pred, n_true, n_kept, keep, pred, true, (m0 - m_begin) // BLOCK,
                COUNT_FOLD, 0)
        if FWD:
            accI += tl.where(valid, w * _intersection(p, y, USE_MIN), 0.0)
            accP += tl.where(valid, w * _power_term(p, SQUARED), 0.0)
            accY += tl.where(valid, w * _power_term(y, SQUARED), 0.0)
            if CE:  # softiou_math.h: bce_with_logits; denominator the kept elements
                lw = 1.0 + (pw - 1.0) * y  # bce_log_weight
                bce = lw * (tl.where(z > 0, z, 0.0) + tl.log(1.0 + e)) - pw * y * z
                ce_num += tl.where(valid, w * cw * bce, 0.0)
                ce_den += tl.where(valid, 1.0, 0.0)
        else:
            g = tl.where(valid, w * _grad_p(p, y, gI, gP, USE_MIN, SQUARED), 0.0)
            dx = g * dp_dx
            if CE:  # + a gce w c (lw p - pw y): bce_with_logits_dz
                dz = (1.0 + (pw - 1.0) * y) * p - pw * y
                dx += sharp * gce * tl.where(valid, w * cw * dz, 0.0)
            tl.store(gx_ptr + n * sgn + c * sgc + m * sgm, dx.to(gx_ptr.dtype.element_ty),
                     mask=mm)
    if FWD:
        I = tl.sum(accI, axis=0)
        P = tl.sum(accP, axis=0)
        Y = tl.sum(accY, axis=0)
        P = tl.where(tl.sum(nbad, axis=0) > 0, float("nan"), P)
        base = out_ptr + pid.to(tl.int64) * 5
        tl.store(base, I)
        tl.store(base + 1, P)
        tl.store(base + 2, Y)
        tl.store(base + 3, tl.sum(ce_num, axis=0))
        tl.store(base + 4, tl.sum(ce_den, axis=0))
        if COUNT:
            n_tp, n_pred, n_true, n_kept = _fold_codes(code, n_tp, n_pred, n_true, n_kept, 0)
            _add_counts(counts_ptr + (n * C + c) * 4, n_tp, n_pred, n_true, n_kept, None)


@triton.jit
def reduce_kernel(part_ptr, out_ptr, ce_out_ptr, inner, row, n_chunks, n_out, ce_per_sample,
                  ce_stride, ce_off, CE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                  CE_BLOCK: tl.constexpr):
    """The second stage, one launch. Programs o < n_out: out[o, i] = sum_k
    part[(o * n_chunks + k) * row + i], i < inner, for k = 0, 1, ... in order. Programs
    n_out + n: the cross-entropy's (numerator, denominator) of sample n, its ce_per_sample
    partial entries (zeros without the term, CE false)."""
    o = tl.program_id(0).to(tl.int64)
    if o < n_out:
        i = tl.arange(0, BLOCK)
        mask = i < inner
        acc = tl.load(part_ptr + o * n_chunks * row + i, mask=mask, other=0.0)
        for k in range(1, n_chunks):
            acc += tl.load(part_ptr + (o * n_chunks + k) * row + i, mask=mask, other=0.0)
        tl.store(out_ptr + o * inner + i, acc, mask=mask)
    else:
        n = o - n_out
        if CE:
            num, den = _ce_sums(part_ptr, n * ce_per_sample, ce_per_sample, ce_stride, ce_off,
                                ACC, CE_BLOCK)
        else:
            num = tl.zeros([], ACC)
            den = tl.zeros([], ACC)
        tl.store(ce_out_ptr + n * 2, num)
        tl.store(ce_out_ptr + n * 2 + 1, den)


@triton.jit
def _ce_sums(part_ptr, first, count, stride, off, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """The cross-entropy's (numerator, denominator) of partial entries first .. first+count-1,
    at part[i * stride + off + (0, 1)], added in a fixed order."""
    num = tl.zeros([BLOCK], ACC)
    den = tl.zeros([BLOCK], ACC)
    for i0 in range(0, count, BLOCK):
        i = first + i0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = i0 + tl.arange(0, BLOCK) < count
        num += tl.load(part_ptr + i * stride + off, mask=mask, other=0.0).to(ACC)
        den += tl.load(part_ptr + i * stride + off + 1, mask=mask, other=0.0).to(ACC)
    return tl.sum(num, axis=0), tl.sum(den, axis=0)


@triton.jit
def counts_kernel(x_ptr, t_ptr, out_ptr, C, M, chunk, n_chunks, sxn, sxc, sxm, stn, stc, stm,
                  thr_hi, thr_lo, ignore, MULTICLASS: tl.constexpr, CLASS_MAP: tl.constexpr,
                  INT_TARGET: tl.constexpr, HAS_IGNORE: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    """The hard counts of SPEC section 11: program (n, k) counts the pixels of chunk k of sample
    n and adds its [C, 4] (tp, fp, tn, fn) to out[n] (int64, zeroed by the caller: integer
    additions, exact in any order). The prediction is the first maximal class of the raw input
    (multiclass) or x > thr (thr: the input-space threshold); the target a class map's class, an
    integer element's 1, a dense target's first maximal class (multiclass) or y > 0.5."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // n_chunks
    m0 = (pid % n_chunks) * chunk
    cs = tl.arange(0, BLOCK_C)
    cmask = cs < C
    thr = _from_bits(thr_hi, thr_lo, ACC)
    tp = tl.zeros([BLOCK_C], tl.int64)
    predicted = tl.zeros([BLOCK_C], tl.int64)
    target = tl.zeros([BLOCK_C], tl.int64)
    kept = tl.zeros([BLOCK_C], tl.int64)
    for i in range(0, chunk, BLOCK_M):
        ms = m0 + i + tl.arange(0, BLOCK_M).to(tl.int64)
        mmask = (ms < M) & (i + tl.arange(0, BLOCK_M) < chunk)
        mask2 = cmask[:, None] & mmask[None, :]
        x = tl.load(x_ptr + n * sxn + cs[:, None] * sxc + ms[None, :] * sxm, mask=mask2,
                    other=float("-inf")).to(ACC)
        if CLASS_MAP:
            t = tl.load(t_ptr + n * stn + ms * stm, mask=mmask, other=-1).to(tl.int64)
        elif INT_TARGET:
            t = tl.load(t_ptr + n * stn + cs[:, None] * stc + ms[None, :] * stm, mask=mask2,
                        other=-1).to(tl.int64)
        else:
            t = tl.load(t_ptr + n * stn + cs[:, None] * stc + ms[None, :] * stm, mask=mask2,
                        other=0)
        if MULTICLASS:
            tp, predicted, target, kept = _add_class_counts(tp, predicted, target, kept, x, t,
                                                            mask2, mmask, C, ignore, CLASS_MAP,
                                                            HAS_IGNORE, ACC, BLOCK_C)
        else:
            if CLASS_MAP:  # a multilabel class map
                t = t[None, :]
            keep, pred, true = _hard_elements(x, t, cs[:, None], mask2, thr, C, ignore,
                                              CLASS_MAP, INT_TARGET, HAS_IGNORE, ACC)
            tp += tl.sum((keep & pred & true).to(tl.int64), axis=1)
            predicted += tl.sum((keep & pred).to(tl.int64), axis=1)
            target += tl.sum((keep & true).to(tl.int64), axis=1)
            kept += tl.sum(keep.to(tl.int64), axis=1)
    _add_counts(out_ptr + (n * C + cs) * 4, tp, predicted, target, kept, cmask)


# ---------------------------------------------------------------------------------------------
# The finalize step (csrc/finalize.h)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _from_bits(hi, lo, ACC: tl.constexpr):
    """An option passed as the bits of its float64 value in two int32 halves (Triton passes
    Python floats as float32; Inductor's user-kernel codegen in torch 2.11 fails on Python int
    arguments beyond 32 bits), in the accumulation dtype. (+ a zero tensor: Triton specialises an
    int argument equal to 1 as a constant.)"""
    h = (hi + tl.zeros([], tl.int32)).to(tl.int64)
    l = (lo + tl.zeros([], tl.int32)).to(tl.uint32, bitcast=True).to(tl.int64)
    return ((h << 32) | l).to(tl.float64, bitcast=True).to(ACC)


@triton.jit
def _score_terms(num, den, gamma, eps, tiny, LOG_LOSS: tl.constexpr,
                 GAMMA_ONE: tl.constexpr):  # finalize.h: score_terms
    both_zero = (num == 0.0) & (den == 0.0)
    den_c = tl.where(den < eps, eps, den)
    score = tl.where(both_zero, 1.0, num / den_c)
    if LOG_LOSS:
        sc = tl.where(score < eps, eps, score)
        loss = -tl.log(sc)
        d_score = tl.where(score < eps, 0.0, -1.0 / sc)
    else:
        loss = 1.0 - score
        d_score = tl.full(score.shape, -1.0, score.dtype)
    if not GAMMA_ONE:  # loss^gamma, with a zero derivative where the loss is 0
        lc = tl.where(loss < tiny, tiny, loss)
        d = tl.where((loss > 0.0) & (loss >= tiny), gamma * tl.exp((gamma - 1.0) * tl.log(lc)),
                     0.0)
        loss = tl.where(loss > 0.0, tl.exp(gamma * tl.log(lc)), 0.0)
        d_score = d_score * d
    g_num = tl.where(both_zero, 0.0, d_score / den_c)
    g_den = tl.where(both_zero | (den < eps), 0.0, -(d_score * score) / den_c)
    return loss, g_num, g_den


@triton.jit
def _pair_terms(I, P, Y, alpha, beta, gamma, smooth, smooth_dr, eps, tiny, METRIC: tl.constexpr,
                LOG_LOSS: tl.constexpr, GAMMA_ONE: tl.constexpr,
                ABSENT_ZERO: tl.constexpr):  # finalize.h: pair_terms
    if METRIC == 1:  # dice
        num = 2.0 * I + smooth
        den = P + Y + smooth_dr
        num_I = 2.0
        den_I = 0.0
        den_P = 1.0
        den_Y = 1.0
    elif METRIC == 2:  # tversky
        num = I + smooth
        den = I + alpha * (P - I) + beta * (Y - I) + smooth_dr
        num_I = 1.0
        den_I = 1.0 - alpha - beta
        den_P = alpha
        den_Y = beta
    else:  # jaccard
        num = I + smooth
        den = P + Y - I + smooth_dr
        num_I = 1.0
        den_I = -1.0
        den_P = 1.0
        den_Y = 1.0
    loss, g_num, g_den = _score_terms(num, den, gamma, eps, tiny, LOG_LOSS, GAMMA_ONE)
    dI = g_num * num_I + g_den * den_I
    dP = g_den * den_P
    dY = g_den * den_Y
    if ABSENT_ZERO:  # absent="zero": an absent class's pair has loss 0
        present = Y > 0.0
        loss = tl.where(present, loss, 0.0)
        dI = tl.where(present, dI, 0.0)
        dP = tl.where(present, dP, 0.0)
        dY = tl.where(present, dY, 0.0)
    return loss, dI, dP, dY


@triton.jit
def _generalized_weight(Y, W_TYPE: tl.constexpr):  # finalize.h: generalized_weight (float32)
    y = Y.to(tl.float32)
    if W_TYPE == 2:  # uniform
        return tl.full(y.shape, 1.0, tl.float32)
    if W_TYPE == 1:  # simple
        d = y
    else:  # square
        d = y * y
    return tl.where(d != 0.0, 1.0 / tl.where(d != 0.0, d, 1.0), float("inf"))


@triton.jit
def _pair_stats(part_ptr, r, c, valid, n_rows, K, sn, sc, sk, PER_IMAGE: tl.constexpr,
                ACC: tl.constexpr, BLOCK: tl.constexpr):  # finalize.h: pair_stats
    I = tl.zeros([BLOCK], ACC)
    P = tl.zeros([BLOCK], ACC)
    Y = tl.zeros([BLOCK], ACC)
    if PER_IMAGE:
        base = part_ptr + r * sn + c * sc
        for k in range(K):
            I += tl.load(base + k * sk, mask=valid, other=0.0).to(ACC)
            P += tl.load(base + k * sk + 1, mask=valid, other=0.0).to(ACC)
            Y += tl.load(base + k * sk + 2, mask=valid, other=0.0).to(ACC)
    else:
        for n in range(n_rows):
            base = part_ptr + n * sn + c * sc
            for k in range(K):
                I += tl.load(base + k * sk, mask=valid, other=0.0).to(ACC)
                P += tl.load(base + k * sk + 1, mask=valid, other=0.0).to(ACC)
                Y += tl.load(base + k * sk + 2, mask=valid, other=0.0).to(ACC)
    return I, P, Y


@triton.jit
def _pair_weight(cw_ptr, keep_ptr, c, valid, Y, HAS_CW: tl.constexpr, DROP_BG: tl.constexpr,
                 SUBSET: tl.constexpr, ABSENT_EXCLUDE: tl.constexpr,
                 ACC: tl.constexpr):  # finalize.h: pair_weight
    kept = valid
    if DROP_BG:
        kept = kept & (c != 0)
    if SUBSET:
        kept = kept & (tl.load(keep_ptr + c, mask=valid, other=0) != 0)
    if ABSENT_EXCLUDE:
        kept = kept & (Y > 0.0)
    if HAS_CW:
        w = tl.load(cw_ptr + c, mask=valid, other=0.0).to(ACC)
    else:
        w = tl.full(Y.shape, 1.0, ACC)
    return tl.where(kept, w, 0.0), kept


@triton.jit
def _pair(part_ptr, cw_ptr, keep_ptr, idx, valid, C, n_rows, K, sn, sc, sk, alpha, beta, gamma,
          smooth, smooth_dr, eps, tiny, METRIC: tl.constexpr, LOG_LOSS: tl.constexpr,
          GAMMA_ONE: tl.constexpr, ABSENT_ZERO: tl.constexpr, PER_IMAGE: tl.constexpr,
          HAS_CW: tl.constexpr, DROP_BG: tl.constexpr, SUBSET: tl.constexpr,
          ABSENT_EXCLUDE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Pairs idx (row idx // C, class idx % C): their loss, its derivatives in I, P, Y, their
    weight in the reduction and whether they are kept."""
    r = idx // C
    c = idx % C
    I, P, Y = _pair_stats(part_ptr, r, c, valid, n_rows, K, sn, sc, sk, PER_IMAGE, ACC, BLOCK)
    loss, dI, dP, dY = _pair_terms(I, P, Y, alpha, beta, gamma, smooth, smooth_dr, eps, tiny,
                                   METRIC, LOG_LOSS, GAMMA_ONE, ABSENT_ZERO)
    w, kept = _pair_weight(cw_ptr, keep_ptr, c, valid, Y, HAS_CW, DROP_BG, SUBSET,
                           ABSENT_EXCLUDE, ACC)
    return loss, dI, dP, dY, w, kept


@triton.jit
def finalize_kernel(part_ptr, ce_ptr, cw_ptr, keep_ptr, loss_ptr, coef_ptr, ce_coef_ptr,
                    C, R, n_rows, K, sn, sc, sk, ce_count, ce_stride, ce_off,
                    alpha_hi, alpha_lo, beta_hi, beta_lo, gamma_hi, gamma_lo, smooth_hi,
                    smooth_lo, smooth_dr_hi, smooth_dr_lo, eps_hi, eps_lo,
                    ce_weight_hi, ce_weight_lo,
                    METRIC: tl.constexpr, LOG_LOSS: tl.constexpr, GAMMA_ONE: tl.constexpr,
                    PER_IMAGE: tl.constexpr, ABSENT_EXCLUDE: tl.constexpr,
                    ABSENT_ZERO: tl.constexpr, WEIGHTED_MEAN: tl.constexpr,
                    W_TYPE: tl.constexpr, REDUCTION: tl.constexpr, HAS_CW: tl.constexpr,
                    DROP_BG: tl.constexpr, SUBSET: tl.constexpr, CE: tl.constexpr,
                    ACC: tl.constexpr, TINY: tl.constexpr, BLOCK: tl.constexpr):
    """One program. The statistics of pair (row n, class c) are the sum over k < K of
    part[n*sn + c*sc + k*sk + (0, 1, 2)] (pooled: over all n_rows rows too). Writes the loss
    ([] for mean and sum, [R, C] for none, [R, 1] for the generalized Dice score (METRIC 3);
    REDUCTION 0 mean, 1 sum, 2 none) and the coefficients [R, C, 3] (d loss / d (I, P, Y) of
    each pair). Two passes: the mean's divisor first. CE: the cross-entropy term (finalize.h:
    add_cross_entropy) from its ce_count entries at ce[i * ce_stride + ce_off + (0, 1)]; its
    derivatives in the numerator and denominator go to ce_coef[0, 1] (0 without it)."""
    alpha = _from_bits(alpha_hi, alpha_lo, ACC)
    beta = _from_bits(beta_hi, beta_lo, ACC)
    gamma = _from_bits(gamma_hi, gamma_lo, ACC)
    smooth = _from_bits(smooth_hi, smooth_lo, ACC)
    smooth_dr = _from_bits(smooth_dr_hi, smooth_dr_lo, ACC)
    eps = _from_bits(eps_hi, eps_lo, ACC)
    tiny = tl.full([BLOCK], TINY, ACC)
    total = tl.zeros([BLOCK], ACC)
    wsum = tl.zeros([BLOCK], ACC)
    if METRIC == 3:  # one loss per row, each of weight 1: the mean's divisor is R
        if REDUCTION == 0:
            gscale = 1.0 / tl.maximum(R, 1).to(ACC)
        else:
            gscale = tl.full([], 1.0, ACC)
        total = _generalized_rows(part_ptr, keep_ptr, loss_ptr, coef_ptr, C, R, n_rows, K, sn,
                                  sc, sk, gamma, smooth, smooth_dr, eps, tiny, gscale, LOG_LOSS,
                                  GAMMA_ONE, PER_IMAGE, REDUCTION, DROP_BG, SUBSET, W_TYPE, ACC,
                                  BLOCK)
        wsum = tl.where(tl.arange(0, BLOCK) == 0, R * 1.0, 0.0).to(ACC)
    else:
        for p0 in range(0, R * C, BLOCK):
            idx = p0 + tl.arange(0, BLOCK).to(tl.int64)
            valid = idx < R * C
            loss, dI, dP, dY, w, kept = _pair(
                part_ptr, cw_ptr, keep_ptr, idx, valid, C, n_rows, K, sn, sc, sk, alpha, beta,
                gamma, smooth, smooth_dr, eps, tiny, METRIC, LOG_LOSS, GAMMA_ONE, ABSENT_ZERO,
                PER_IMAGE, HAS_CW, DROP_BG, SUBSET, ABSENT_EXCLUDE, ACC, BLOCK)
            wl = tl.where(valid, w * loss, 0.0)
            if REDUCTION == 2:
                tl.store(loss_ptr + idx, wl, mask=valid)
            total += wl
            if WEIGHTED_MEAN:  # finalize.h: pair_divisor
                wsum += w
            else:
                wsum += tl.where(kept, 1.0, 0.0)
    scale = 1.0
    loss_value = tl.sum(total, axis=0)
    if REDUCTION == 0:  # mean over the kept pairs (rows); none kept: 0
        ws = tl.sum(wsum, axis=0)
        denom = tl.where(ws > 0.0, ws, 1.0)
        loss_value = loss_value / denom
        scale = 1.0 / denom
    if CE:
        lam = _from_bits(ce_weight_hi, ce_weight_lo, ACC)
        num, den = _ce_sums(ce_ptr, 0, ce_count, ce_stride, ce_off, ACC, BLOCK)
        if REDUCTION == 1:
            term = num
            k_ce = lam
            k_den = tl.zeros([], ACC)
        else:
            d = tl.where(den > 0.0, den, 1.0)
            term = num / d
            k_ce = lam / d
            k_den = tl.where(den > 0.0, -(lam * term) / d, 0.0)
        loss_value += lam * term
        tl.store(ce_coef_ptr, k_ce)
        tl.store(ce_coef_ptr + 1, k_den)
    else:
        tl.store(ce_coef_ptr, tl.zeros([], ACC))
        tl.store(ce_coef_ptr + 1, tl.zeros([], ACC))
    if REDUCTION != 2:
        tl.store(loss_ptr, loss_value)
    if METRIC != 3:  # (the generalized rows wrote theirs)
        for p0 in range(0, R * C, BLOCK):
            idx = p0 + tl.arange(0, BLOCK).to(tl.int64)
            valid = idx < R * C
            loss, dI, dP, dY, w, kept = _pair(
                part_ptr, cw_ptr, keep_ptr, idx, valid, C, n_rows, K, sn, sc, sk, alpha, beta,
                gamma, smooth, smooth_dr, eps, tiny, METRIC, LOG_LOSS, GAMMA_ONE, ABSENT_ZERO,
                PER_IMAGE, HAS_CW, DROP_BG, SUBSET, ABSENT_EXCLUDE, ACC, BLOCK)
            w = w * scale
            tl.store(coef_ptr + idx * 3, w * dI, mask=valid)
            tl.store(coef_ptr + idx * 3 + 1, w * dP, mask=valid)
            tl.store(coef_ptr + idx * 3 + 2, w * dY, mask=valid)


@triton.jit
def _generalized_class(part_ptr, keep_ptr, r, c, valid, n_rows, K, sn, sc, sk,
                       PER_IMAGE: tl.constexpr, DROP_BG: tl.constexpr, SUBSET: tl.constexpr,
                       W_TYPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Classes c of row r: I, P, Y, whether they are kept, their weight (float32)."""
    I, P, Y = _pair_stats(part_ptr, r, c, valid, n_rows, K, sn, sc, sk, PER_IMAGE, ACC, BLOCK)
    _, kept = _pair_weight(keep_ptr, keep_ptr, c, valid, Y, False, DROP_BG, SUBSET, False, ACC)
    return I, P, Y, kept, _generalized_weight(Y, W_TYPE)


@triton.jit
def _generalized_rows(part_ptr, keep_ptr, loss_ptr, coef_ptr, C, R, n_rows, K, sn, sc, sk,
                      gamma, smooth, smooth_dr, eps, tiny, scale, LOG_LOSS: tl.constexpr,
                      GAMMA_ONE: tl.constexpr, PER_IMAGE: tl.constexpr,
                      REDUCTION: tl.constexpr, DROP_BG: tl.constexpr, SUBSET: tl.constexpr,
                      W_TYPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """finalize.h: generalized_row for every row: the loss of each row ([R, 1] with REDUCTION 2),
    the coefficients of its pairs (times scale: the mean's 1/R), and the rows' losses in lane 0
    of the result."""
    total = tl.zeros([BLOCK], ACC)
    lane = tl.arange(0, BLOCK)
    for r0 in range(0, R):
        r = tl.zeros([BLOCK], tl.int64) + r0
        largest = tl.zeros([BLOCK], tl.float32)  # the largest finite weight of a kept class
        for c0 in range(0, C, BLOCK):
            c = c0 + lane.to(tl.int64)
            valid = c < C
            I, P, Y, kept, w = _generalized_class(part_ptr, keep_ptr, r, c, valid, n_rows, K, sn,
                                                  sc, sk, PER_IMAGE, DROP_BG, SUBSET, W_TYPE,
                                                  ACC, BLOCK)
            largest = tl.maximum(largest, tl.where(kept & (w != float("inf")), w, 0.0))
        big = tl.max(largest, axis=0)
        num = tl.zeros([BLOCK], ACC)
        den = tl.zeros([BLOCK], ACC)
        for c0 in range(0, C, BLOCK):
            c = c0 + lane.to(tl.int64)
            valid = c < C
            I, P, Y, kept, w = _generalized_class(part_ptr, keep_ptr, r, c, valid, n_rows, K, sn,
                                                  sc, sk, PER_IMAGE, DROP_BG, SUBSET, W_TYPE,
                                                  ACC, BLOCK)
            wa = tl.where(w == float("inf"), big, w).to(ACC)
            num += tl.where(kept, wa * I, 0.0)
            den += tl.where(kept, wa * (P + Y), 0.0)
        num_r = tl.zeros([BLOCK], ACC) + tl.sum(num, axis=0)
        den_r = tl.zeros([BLOCK], ACC) + tl.sum(den, axis=0)
        gamma_v = tl.zeros([BLOCK], ACC) + gamma
        loss, g_num, g_den = _score_terms(2.0 * num_r + smooth, den_r + smooth_dr, gamma_v, eps,
                                          tiny, LOG_LOSS, GAMMA_ONE)
        if REDUCTION == 2:
            tl.store(loss_ptr + r, loss, mask=lane == 0)
        total += tl.where(lane == 0, loss, 0.0)
        for c0 in range(0, C, BLOCK):
            c = c0 + lane.to(tl.int64)
            valid = c < C
            I, P, Y, kept, w = _generalized_class(part_ptr, keep_ptr, r, c, valid, n_rows, K, sn,
                                                  sc, sk, PER_IMAGE, DROP_BG, SUBSET, W_TYPE,
                                                  ACC, BLOCK)
            wa = tl.where(kept, tl.where(w == float("inf"), big, w).to(ACC), 0.0) * scale
            base = coef_ptr + (r * C + c) * 3
            tl.store(base, g_num * (2.0 * wa), mask=valid)
            tl.store(base + 1, g_den * wa, mask=valid)
            tl.store(base + 2, g_den * wa, mask=valid)
    return total
