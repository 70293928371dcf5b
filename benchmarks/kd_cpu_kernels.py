"""PointDistiller's CPU kernels (``pcdet/models/kd/cpu_kernels.py``) and the PFN eval shortcut against the PyTorch
formulations, in one run.

    python benchmarks/kd_cpu_kernels.py [--repeats 7] [--threads 1]

The batch of ``kd_cost.py``: 2 real KITTI frames from ../shared/data/kitti_real (10199 pillars), the teacher
``pointpillar.yaml`` and the student ``pointpillar_4x.yaml`` with random weights (cost does not depend on them),
the KD config ``pointpillar_kd.yaml`` (N = 6000 per batch, K = 128, adapters 32 wide, candidates all pillars).
Each case runs as is and under ``pytorch_paths()`` (``cpu_kernels.reference_paths()`` + the PFN's per-point path):
* kNN: ``knn_indices`` of the 6000 queries among all pillars (one matmul + selection per block);
* loss: ``point_distiller_loss`` forward + backward on a fixed graph (the kNN not included), with RL (τ = 0.01:
  only the densest pillars' queries form edges), without RL (all 768 k edges), and with the frozen teacher adapter;
* teacher VFE: the teacher's PillarVFE in eval under ``no_grad`` (decoration + PFN), as a KD teacher runs it;
* KD step: the distiller's forward (teacher VFE, student, PointDistiller loss) + backward + Adam step.
Thread-CPU time (``time.thread_time``) and process-CPU time, interleaved repeats after one warm-up, medians.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from kd_cost import FRAMES, _dataset, _load, _train_step, load_batch


@contextlib.contextmanager
def pytorch_paths() -> Iterator[None]:
    """The code as it was before the kernels: PyTorch formulations, the PFN's per-point path in eval."""
    from pcdet.models.backbones_3d.vfe.pillar_vfe import PFNLayer
    from pcdet.models.kd import cpu_kernels

    with cpu_kernels.reference_paths(), mock.patch.object(PFNLayer, "_norm_is_monotone_map", lambda self, x: False):
        yield


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    thread, process = time.thread_time(), time.process_time()
    fn()
    return time.thread_time() - thread, time.process_time() - process


def _under_pytorch_paths(fn: Callable[[], object]) -> None:
    with pytorch_paths():
        fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch (and numba) threads")
    args = parser.parse_args()
    if not FRAMES.is_dir():
        sys.exit(f"needs the real KITTI frames in {FRAMES}")
    torch.set_num_threads(args.threads)

    from pcdet.models import build_network
    from pcdet.models.kd import build_distiller
    from pcdet.models.kd.adapters import Adapter
    from pcdet.models.kd.knn import knn_indices
    from pcdet.models.kd.losses.point_distiller import build_graph, point_distiller_loss
    from pcdet.utils.checkpoint_io import atomic_torch_save

    torch.manual_seed(0)
    kd_cfg, teacher_cfg = _load("pointpillar_kd"), _load("pointpillar")
    kd_cfg.KD.DIAGNOSE_EVERY = 0  # diagnostics off: every timed step is one of those between diagnosed ones
    # The teacher's reference forward: its fused eval path (the KD default) bypasses the PFN layer whose eval
    # shortcut this compares with the per-point path.
    kd_cfg.KD.TEACHER.FUSED_INFERENCE = False
    dataset = _dataset(kd_cfg)
    teacher = build_network(teacher_cfg.MODEL, 3, _dataset(teacher_cfg))
    student = build_network(kd_cfg.MODEL, 3, dataset)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "teacher.pth"
        atomic_torch_save({"model_state": teacher.state_dict()}, ckpt)
        distiller = build_distiller(kd_cfg, copy.deepcopy(student), dataset, teacher_ckpt=ckpt)
    distiller.train()
    kd_opt = torch.optim.Adam([p for p in distiller.parameters() if p.requires_grad], lr=1e-4)
    teacher_vfe = distiller.teacher.vfe  # eval, no gradients, as the distiller keeps it
    batch = load_batch(kd_cfg, 2)
    with torch.no_grad():
        teacher_nodes = teacher_vfe(dict(batch))["pillar_features"]
        student_nodes = student.vfe(dict(batch))["pillar_features"]
    counts = batch["voxel_num_points"].float()
    node_batch = batch["voxel_coords"][:, 0].long()
    opts = kd_cfg.KD.LOSSES[0]
    num_nodes, k, width = int(opts.NUM_NODES), int(opts.K), int(opts.ADAPTER_CHANNELS)
    with pytorch_paths():
        graphs = {
            rl: build_graph(teacher_nodes, node_batch, counts, num_nodes, k, False, True, 0.01 if rl else None)
            for rl in (True, False)
        }
    torch.manual_seed(1)
    adapters = Adapter(2 * teacher_nodes.shape[1], width), Adapter(2 * student_nodes.shape[1], width)
    frozen = copy.deepcopy(adapters)
    frozen[0].requires_grad_(False)

    def loss_step(graph, pair) -> None:
        nodes = student_nodes.clone().requires_grad_(True)
        point_distiller_loss(teacher_nodes, nodes, graph, *pair).backward()

    def teacher_vfe_forward() -> None:
        with torch.no_grad():
            teacher_vfe(dict(batch))

    queries = teacher_nodes[graphs[True].queries]
    cases = {
        "kNN 6000 x all pillars, K 128": lambda: knn_indices(queries, teacher_nodes, k),
        "loss fwd+bwd, paper (RL tau 0.01)": lambda: loss_step(graphs[True], adapters),
        "loss fwd+bwd, RL off (all edges)": lambda: loss_step(graphs[False], adapters),
        "loss fwd+bwd, RL, frozen teacher adapter": lambda: loss_step(graphs[True], frozen),
        "teacher VFE eval forward": teacher_vfe_forward,
        "KD step (pointpillar_kd.yaml)": lambda: _train_step(distiller, kd_opt, batch),
    }
    timers: dict[str, Callable[[], object]] = {}
    for name, fn in cases.items():
        timers[f"{name} | new"] = fn
        timers[f"{name} | PyTorch"] = lambda fn=fn: _under_pytorch_paths(fn)

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in timers}
    for fn in timers.values():
        fn()  # warm-up: numba compilation or cache load, allocators
    for _ in range(args.repeats):
        for name, fn in timers.items():
            times[name].append(_timed(fn))
    rows = int((graphs[True].weights > 0).sum())
    print(f"{teacher_nodes.shape[0]} pillars, {num_nodes} queries ({rows} with phi > 0 under RL), K {k}, A {width}")
    # torch's own count at the end: numba's OpenMP pool must not have changed it (numba_utils.numba_threads)
    threads_now = torch.get_num_threads()
    print(f"torch {torch.__version__}, threads {args.threads} (at the end {threads_now}), medians of {args.repeats}")
    print(f"{'case':58s} {'thread s':>9s} {'process s':>9s}")
    for name, samples in times.items():
        thread = statistics.median(t for t, _ in samples)
        process = statistics.median(p for _, p in samples)
        print(f"{name:58s} {thread:9.4f} {process:9.4f}")


if __name__ == "__main__":
    main()
