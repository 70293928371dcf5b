"""numba kernels of the devkit's matching rules (``computeStatistics`` / ``getThresholds`` of ``evaluate_object``).

All frames are processed in one call over flattened arrays: frame ``f`` owns ground truth ``gt_off[f]:gt_off[f+1]``,
detections ``dt_off[f]:dt_off[f+1]`` and the overlap block ``ov[pair_off[f]:pair_off[f+1]]`` (row-major gt x det).
``ign_gt``: 0 = counted, 1 = ignored (neighbour class or too hard for this difficulty), -1 = other class.
``ign_dt``: 0 = counted, 1 = ignored (2D height below the difficulty's minimum; any class), -1 = other class.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import njit

NO_DETECTION = -10000000.0  # the devkit's sentinel score
N_SAMPLE_PTS = 41


@njit
def tp_scores(
    gt_off: np.ndarray,
    dt_off: np.ndarray,
    pair_off: np.ndarray,
    ov: np.ndarray,
    ign_gt: np.ndarray,
    ign_dt: np.ndarray,
    score: np.ndarray,
    min_overlap: float,
    assigned: np.ndarray,
    v: np.ndarray,
) -> int:
    """First pass (no score threshold): writes the scores of the true positives, which define the recall
    thresholds, to ``v`` and returns their number. ``assigned``: bool scratch, at least the largest frame's size.

    Each ground truth (in file order) takes the highest-scoring unassigned detection above ``min_overlap``.
    """
    nv = 0
    for f in range(gt_off.shape[0] - 1):
        g0 = gt_off[f]
        d0 = dt_off[f]
        nd = dt_off[f + 1] - d0
        base = pair_off[f]
        for k in range(nd):
            assigned[k] = False
        for i in range(g0, gt_off[f + 1]):
            if ign_gt[i] == -1:
                continue
            det_idx = -1
            valid = NO_DETECTION
            row = base + (i - g0) * nd
            for jj in range(nd):
                j = d0 + jj
                if ign_dt[j] == -1 or assigned[jj]:
                    continue
                if ov[row + jj] > min_overlap and score[j] > valid:
                    det_idx = j
                    valid = score[j]
            if det_idx < 0:
                continue  # a false negative when ign_gt == 0; only the TP scores matter in this pass
            assigned[det_idx - d0] = True
            if ign_gt[i] == 0 and ign_dt[det_idx] == 0:
                v[nv] = score[det_idx]
                nv += 1
    return nv


@njit
def recall_thresholds(v: np.ndarray, n_gt: int, out: np.ndarray) -> int:
    """Scores at (about) linearly spaced recall steps of 1/40, as the devkit's ``getThresholds``.

    ``v``: the TP scores sorted in descending order (sorted by the caller: numba's sort costs a second to compile);
    the thresholds are written to ``out`` (same size as ``v``), their number is returned.
    """
    n = v.shape[0]
    m = 0
    current_recall = 0.0
    ngt = float(n_gt)
    step = 1.0 / (N_SAMPLE_PTS - 1.0)
    for i in range(n):
        l_recall = (i + 1) / ngt
        if i < n - 1:
            r_recall = (i + 2) / ngt
        else:
            r_recall = l_recall
        # skip this score when the next one approximates the current recall step better
        if (r_recall - current_recall) < (current_recall - l_recall) and i < n - 1:
            continue
        out[m] = v[i]
        m += 1
        current_recall += step
    return m


@njit
def _frame_stats(
    g0: int,
    g1: int,
    d0: int,
    nd: int,
    base: int,
    ov: np.ndarray,
    ign_gt: np.ndarray,
    ign_dt: np.ndarray,
    score: np.ndarray,
    gt_alpha: np.ndarray,
    dt_alpha: np.ndarray,
    thresh: float,
    compute_aos: bool,
    cand: np.ndarray,
    n_cand: int,
    match_ptr: np.ndarray,
    match_idx: np.ndarray,
    dc_ptr: np.ndarray,
    dc_idx: np.ndarray,
    n_dc: int,
    assigned: np.ndarray,
    out: np.ndarray,
) -> None:
    """Second pass for one frame at one score threshold: out = (tp, fp, fn, orientation similarity sum).

    ``match_idx[match_ptr[k]:match_ptr[k + 1]]``: the frame-local detections (ascending, i.e. the devkit's scan order)
    that overlap ground truth ``g0 + k`` above the threshold and are not of another class; ``dc_idx``/``dc_ptr`` the
    same for the DontCare regions (counted detections only); ``cand[:n_cand]``: every not-other-class detection.
    """
    for c in range(n_cand):
        assigned[cand[c]] = False
    tp = 0
    fp = 0
    fn = 0
    sim = 0.0
    for i in range(g0, g1):
        if ign_gt[i] == -1:
            continue
        det_idx = -1
        max_ov = 0.0
        assigned_ignored = False
        row = base + (i - g0) * nd
        for k in range(match_ptr[i - g0], match_ptr[i - g0 + 1]):
            jj = match_idx[k]
            j = d0 + jj
            if assigned[jj] or score[j] < thresh:
                continue
            o = ov[row + jj]
            if ign_dt[j] == 0 and (o > max_ov or assigned_ignored):
                # greatest overlap wins; a counted detection replaces an ignored (too small) one
                max_ov = o
                det_idx = j
                assigned_ignored = False
            elif ign_dt[j] == 1 and det_idx < 0:
                det_idx = j
                assigned_ignored = True
        if det_idx < 0:
            if ign_gt[i] == 0:
                fn += 1
        elif ign_gt[i] == 1 or ign_dt[det_idx] == 1:
            assigned[det_idx - d0] = True
        else:
            tp += 1
            if compute_aos:
                sim += (1.0 + math.cos(gt_alpha[i] - dt_alpha[det_idx])) / 2.0
            assigned[det_idx - d0] = True
    for c in range(n_cand):
        jj = cand[c]
        j = d0 + jj
        if not (assigned[jj] or ign_dt[j] != 0 or score[j] < thresh):
            fp += 1
    # unassigned detections inside DontCare regions are not false positives
    nstuff = 0
    for c in range(n_dc):
        for k in range(dc_ptr[c], dc_ptr[c + 1]):
            jj = dc_idx[k]
            if assigned[jj] or score[d0 + jj] < thresh:
                continue
            assigned[jj] = True
            nstuff += 1
    out[0] = tp
    out[1] = fp - nstuff
    out[2] = fn
    out[3] = sim


@njit
def pr_counts(
    gt_off: np.ndarray,
    dt_off: np.ndarray,
    pair_off: np.ndarray,
    ov: np.ndarray,
    dc_off: np.ndarray,
    dc_pair_off: np.ndarray,
    dc_ov: np.ndarray,
    ign_gt: np.ndarray,
    ign_dt: np.ndarray,
    score: np.ndarray,
    gt_alpha: np.ndarray,
    dt_alpha: np.ndarray,
    min_overlap: float,
    thresholds: np.ndarray,
    compute_aos: bool,
    match_idx: np.ndarray,
    match_ptr: np.ndarray,
    dc_idx: np.ndarray,
    dc_ptr: np.ndarray,
    cand: np.ndarray,
    assigned: np.ndarray,
    cur: np.ndarray,
    tot: np.ndarray,
) -> None:
    """Adds to ``tot`` (T, 4) the totals of tp, fp, fn, similarity over all frames for each (descending) score
    threshold. Scratch (sized by the caller from the largest frame): int64 ``match_idx``/``dc_idx`` (pairs),
    ``match_ptr``/``dc_ptr`` (objects + 1), ``cand`` (detections); bool ``assigned`` (detections); ``cur`` (4,).

    Per frame, the pairs above the overlap threshold are listed once (most pairs don't overlap at all), then each
    threshold only walks those lists. A frame's statistics only change when the set of detections above the score
    threshold changes; the sets are nested, so their size identifies them and unchanged frames reuse the previous
    threshold's numbers.
    """
    nt = thresholds.shape[0]
    nf = gt_off.shape[0] - 1
    for f in range(nf):
        g0 = gt_off[f]
        g1 = gt_off[f + 1]
        d0 = dt_off[f]
        nd = dt_off[f + 1] - d0
        base = pair_off[f]
        n_cand = 0
        n_counted = 0
        for jj in range(nd):
            if ign_dt[d0 + jj] != -1:
                cand[n_cand] = jj
                n_cand += 1
                if ign_dt[d0 + jj] == 0:
                    n_counted += 1
        n_rel = 0
        m = 0
        for i in range(g0, g1):
            match_ptr[i - g0] = m
            if ign_gt[i] == -1:
                continue
            n_rel += 1
            row = base + (i - g0) * nd
            for c in range(n_cand):
                jj = cand[c]
                if ov[row + jj] > min_overlap:
                    match_idx[m] = jj
                    m += 1
        match_ptr[g1 - g0] = m
        if n_rel == 0 and n_counted == 0:
            continue  # nothing of this class here: no TP, FP or FN at any threshold
        c0 = dc_off[f]
        n_dc = dc_off[f + 1] - c0
        cbase = dc_pair_off[f]
        m = 0
        for c in range(n_dc):
            dc_ptr[c] = m
            for k in range(n_cand):
                jj = cand[k]
                if ign_dt[d0 + jj] == 0 and dc_ov[cbase + c * nd + jj] > min_overlap:
                    dc_idx[m] = jj
                    m += 1
        dc_ptr[n_dc] = m
        prev_active = -1
        for t in range(nt):
            th = thresholds[t]
            active = 0
            for c in range(n_cand):
                if score[d0 + cand[c]] >= th:
                    active += 1
            if active != prev_active:
                _frame_stats(
                    g0,
                    g1,
                    d0,
                    nd,
                    base,
                    ov,
                    ign_gt,
                    ign_dt,
                    score,
                    gt_alpha,
                    dt_alpha,
                    th,
                    compute_aos,
                    cand,
                    n_cand,
                    match_ptr,
                    match_idx,
                    dc_ptr,
                    dc_idx,
                    n_dc,
                    assigned,
                    cur,
                )
                prev_active = active
            tot[t, 0] += cur[0]
            tot[t, 1] += cur[1]
            tot[t, 2] += cur[2]
            tot[t, 3] += cur[3]
