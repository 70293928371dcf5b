"""Peak memory and time of PointDistiller's graph as N (queries) and K (neighbours) grow, on CPU.

    python benchmarks/kd_knn_memory.py [--chunk_mb 64]

Each measurement runs in a fresh process (peak RSS is per process): the peak resident memory above what the
inputs already hold. Cases:
* ``knn``: chunked distances + top-k (pcdet.models.kd.knn) — queries N, candidates 2N (all pillars of the batch);
* ``knn_full``: the whole N × 2N distance matrix at once, then top-k (what chunking avoids);
* ``edges``: the PointDistiller loss forward + backward at N, K (teacher 64 / student 32 channels, adapters to 32),
  computed as pcdet does (projection before gathering), all N·K edges formed (RL off: every query weighs);
* ``edges_naive``: the same loss on the materialised (2C, N, K) edge tensors (conv → BN → ReLU), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(case: str, n: int, k: int, chunk_mb: int) -> dict:
    import torch

    from pcdet.models.kd.adapters import Adapter
    from pcdet.models.kd.knn import knn_indices
    from pcdet.models.kd.losses.point_distiller import Graph, point_distiller_loss

    torch.manual_seed(0)
    teacher = torch.randn(2 * n, 64)
    student = torch.randn(2 * n, 32, requires_grad=True)
    neighbours = torch.randint(0, 2 * n, (n, k))
    adapters = Adapter(128, 32), Adapter(64, 32)
    baseline = _rss_bytes()
    start = time.perf_counter()
    if case == "knn":
        knn_indices(teacher[:n], teacher, k, max_chunk_bytes=chunk_mb * 2**20)
    elif case == "knn_full":
        dist = torch.cdist(teacher[:n], teacher)
        dist.topk(k, dim=1, largest=False)
    else:
        graph = Graph(torch.arange(n), neighbours, torch.ones(n))
        if case == "edges":
            loss = point_distiller_loss(teacher, student, graph, *adapters)
        else:
            loss = _naive_loss(teacher, student, graph, *adapters)
        loss.backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": case, "N": n, "K": k, "peak_mb": max(peak - baseline, 0) / 2**20, "seconds": elapsed}


def _naive_loss(teacher, student, graph, teacher_adapter, student_adapter):
    import torch

    def edges(nodes):
        centre = nodes[graph.queries].unsqueeze(1).expand(-1, graph.neighbours.shape[1], -1)
        tensor = torch.cat([nodes[graph.neighbours], centre], dim=2)  # (N, K, 2C)
        return tensor.permute(2, 0, 1).unsqueeze(0)

    diff = teacher_adapter(edges(teacher)) - student_adapter(edges(student))
    return diff.pow(2).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk_mb", type=int, default=64)
    parser.add_argument("--child", nargs=3, metavar=("CASE", "N", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, n, k = args.child
        print(json.dumps(_child(case, int(n), int(k), args.chunk_mb)))
        return

    import torch

    plan = [("knn", n, k) for n in (1000, 3000, 6000, 12000) for k in (16, 64, 128, 256)]
    plan += [("knn_full", n, 128) for n in (1000, 3000, 6000, 12000)]
    plan += [("edges", n, k) for n, k in ((1000, 128), (3000, 128), (6000, 64), (6000, 128), (6000, 256))]
    plan += [("edges_naive", n, k) for n, k in ((1000, 128), (3000, 128), (6000, 128))]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, kNN chunk {args.chunk_mb} MB"
    )
    print("| case | N | K | peak MB above inputs | seconds |")
    print("|---|---|---|---|---|")
    for case, n, k in plan:
        cmd = [sys.executable, __file__, "--chunk_mb", str(args.chunk_mb), "--child", case, str(n), str(k)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        print(f"| {case} | {n} | {k} | {row['peak_mb']:.0f} | {row['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
