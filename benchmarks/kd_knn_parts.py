"""Where PointDistiller's exact kNN spends its time, and how far a lower bound could prune it (CPU).

    python benchmarks/kd_knn_parts.py [--frames 5] [--queries 6000] [--candidates 7850] [--dims 4 8 16 24]

Features: a trained teacher's pillar features on dev frames (the benchmark's seed-1 teacher by default: see
``kd_feature_probe.py`` for the layout), so the numbers hold for the features a KD step really sees. Timings:
thread-CPU seconds, medians of ``--repeats`` after a warm-up, one torch thread:

- the whole ``knn_indices``, its distance matmul alone (the augmented 65 columns) and ``smallest_k`` over the block;
- the same matmul with 17 columns: whether the matmul is bound by its arithmetic or by writing its block;
- ``knn_indices`` at several chunk sizes.

The bound: for the top ``d`` principal directions P of the candidates, ``|P(q - c)|² + (|r_q| - |r_c|)²`` (r: the
residual off P) is at most ``|q - c|²``. A candidate can be among a query's k nearest only if its bound is at most
the true k-th distance, so the mean count of such candidates is the work an exact pruned kNN leaves.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from kd_feature_probe import REPO, final_ckpt, pillar_features
from ops_speed import median_seconds

from pcdet.models.kd import cpu_kernels, knn
from pcdet.utils import common_utils


def survivors(centred: torch.Tensor, kth: torch.Tensor, queries: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean number of candidates per query whose lower bound in the directions ``basis (C, d)`` is at most the
    query's true k-th squared distance ``kth (Q, 1)``; ``centred``: the candidates (float64) less their mean."""
    projected = centred @ basis
    residual = (centred - projected @ basis.t()).norm(dim=1)
    bound = torch.cdist(projected[queries], projected).pow(2) + (residual[queries, None] - residual[None]).pow(2)
    return float((bound <= kth).sum(1).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_tag", default="bench_seed1", help="the teacher run (<benchmark tag>_seed<s>)")
    parser.add_argument("--data_path", type=Path, default=REPO / "data" / "synthetic_bench" / "trainval")
    parser.add_argument("--frames", type=int, default=5, help="dev frames to take the pillars from")
    parser.add_argument("--queries", type=int, default=6000)
    parser.add_argument("--candidates", type=int, default=7850, help="the benchmark's median pillars per batch")
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--dims", nargs="+", type=int, default=[4, 8, 16, 24])
    parser.add_argument("--bound_queries", type=int, default=1500, help="queries for the bound (float64, slow)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.chdir(REPO / "tools")
    cfg_name = "pointpillar_synthetic.yaml"
    logger = common_utils.create_logger(log_level=30)
    feats, _ = pillar_features(
        cfg_name, final_ckpt(cfg_name, args.teacher_tag, 16), args.data_path, args.frames, logger
    )
    if feats.shape[0] < args.candidates:
        raise SystemExit(f"error: {feats.shape[0]} pillars in {args.frames} frames, fewer than --candidates")
    cands = feats[: args.candidates].contiguous()
    order = torch.randperm(args.candidates, generator=torch.Generator().manual_seed(0))
    queries = cands[order[: args.queries]].contiguous()
    knn.knn_indices(queries, cands, args.k)  # numba compiles on first use
    query_aug, cand_aug = knn.ranking_operands(queries, cands)
    block = query_aug @ cand_aug.t()
    out = torch.empty(queries.shape[0], args.k, dtype=torch.long)
    narrow = cand_aug.shape[1] // 4 + 1
    rows = [
        ("whole kNN (knn_indices)", lambda: knn.knn_indices(queries, cands, args.k)),
        (f"distance matmul, {cand_aug.shape[1]} columns", lambda: query_aug @ cand_aug.t()),
        ("smallest_k over the block", lambda: cpu_kernels.smallest_k(block.numpy(), args.k, out.numpy(), 1)),
        (f"the matmul at {narrow} columns", lambda: query_aug[:, :narrow] @ cand_aug[:, :narrow].t()),
    ]
    for mib in (0.5, 1, 2, 4, 16, 64):
        chunk = int(mib * 2**20)
        rows.append((f"whole kNN, {mib} MiB chunks", lambda c=chunk: knn.knn_indices(queries, cands, args.k, c)))
    print(f"{args.queries} queries x {args.candidates} candidates x {cands.shape[1]} channels, k = {args.k}")
    print("| part | thread-CPU s |\n|---|---:|")
    for label, fn in rows:
        print(f"| {label} | {median_seconds(fn, args.repeats)[1]:.3f} |", flush=True)
    bound_queries = order[: args.bound_queries]
    print(f"\ncandidates per query within the bound ({args.bound_queries} queries, {args.candidates} candidates)")
    print("| dims | variance share | candidates |\n|---:|---:|---:|")
    centred = cands.double() - cands.double().mean(0)
    kth = torch.cdist(centred[bound_queries], centred).pow(2).topk(args.k, dim=1, largest=False).values[:, -1:]
    variances, vectors = torch.linalg.eigh(centred.t() @ centred)
    variances, vectors = variances.flip(0), vectors.flip(1)  # eigh sorts ascending: the top directions first
    for dims in args.dims:
        share = float(variances[:dims].sum() / variances.sum())
        found = survivors(centred, kth, bound_queries, vectors[:, :dims])
        print(f"| {dims} | {share:.3f} | {found:.0f} |", flush=True)


if __name__ == "__main__":
    main()
