"""What the benchmark's trained students learned from their teacher: probes of their pillar features on dev frames.

    python benchmarks/kd_feature_probe.py [--runs 4x pointdistiller pd_frozen] [--seeds 1 2 0 3 4] [--frames 32]

For each seed, the seed's trained teacher and each run's final checkpoint (the layout ``kd_benchmark.py`` trains
into: ``output/kitti_models/<config>/<tag>_seed<s>/ckpt``) run their VFE in eval mode on the same dev frames (the
val split of the benchmark's train/dev data; the test split is never opened). PointDistiller distils the local
graph of the teacher's pillar features, so the probes ask how much of that the student's own pillar features hold:

- **kNN overlap**: for ``--queries`` random pillars, the share of each one's ``--k`` nearest pillars (among
  ``--pool`` random pillars, in feature space) that are also its nearest in the teacher's features;
- **R²**: the share of the teacher's pillar-feature variance that a linear map (least squares, with bias) of the
  student's features predicts on held-out pillars (ridge fit on one half of the pillars, scored on the other);
- **participation rank**: (Σσ)² / Σσ² of the centred features' singular values, how many directions they use.

Runs without a checkpoint for a seed are left out. Output: a Markdown table per seed and one of means over seeds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "benchmarks"))

import kd_runs  # noqa: E402
from stage_runner import stage_config  # noqa: E402
from train_utils.experiment import experiment_output_dir  # noqa: E402

from pcdet.datasets import build_dataloader  # noqa: E402
from pcdet.models import build_network, load_data_to_gpu  # noqa: E402
from pcdet.utils import common_utils  # noqa: E402


def knn_overlap(
    student: torch.Tensor, teacher: torch.Tensor, queries: torch.Tensor, pool: torch.Tensor, k: int
) -> float:
    """Mean share of each query's ``k`` nearest ``pool`` rows (the query itself excluded) that the two feature
    spaces, ``student (P, Cs)`` and ``teacher (P, Ct)`` of the same P pillars, have in common."""

    def neighbours(feats: torch.Tensor) -> torch.Tensor:
        dist = torch.cdist(feats[queries].double(), feats[pool].double())
        dist[queries.unsqueeze(1) == pool.unsqueeze(0)] = float("inf")
        return pool[dist.topk(k, dim=1, largest=False).indices]

    mine, theirs = neighbours(student), neighbours(teacher)
    shared = (mine.unsqueeze(2) == theirs.unsqueeze(1)).any(2).sum(1)
    return float(shared.double().mean() / k)


def linear_r2(student: torch.Tensor, teacher: torch.Tensor, fit: torch.Tensor, held_out: torch.Tensor) -> float:
    """Share of ``teacher``'s variance on the ``held_out`` rows that an affine map of ``student``, fitted on the
    ``fit`` rows, predicts. The fit is ridge regression on standardised columns with a tiny penalty: trained
    students have dead and duplicate channels, and plain least squares on that rank-deficient design is
    ill-posed (its answer changed between identical runs)."""
    x, y = student.double(), teacher.double()
    mean, std = x[fit].mean(0), x[fit].std(0).clamp_min(1e-12)
    x = (x - mean) / std
    y_mean = y[fit].mean(0)
    gram = x[fit].t() @ x[fit] + 1e-6 * len(fit) * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x[fit].t() @ (y[fit] - y_mean))
    residual = y[held_out] - y_mean - x[held_out] @ weights
    return float(1.0 - residual.pow(2).sum() / (y[held_out] - y_mean).pow(2).sum())


def participation_rank(feats: torch.Tensor) -> float:
    sing = torch.linalg.svdvals((feats - feats.mean(0)).double())
    return float(sing.sum() ** 2 / sing.pow(2).sum())


def pillar_features(
    cfg_name: str, ckpt: Path, data_path: Path, frames: int, logger: logging.Logger
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pillar features (P, C), voxel coordinates (P, 4)) of the first ``frames`` dev frames, eval mode."""
    cfg = stage_config(cfg_name, ["DATA_CONFIG.DATA_PATH", str(data_path)])
    dataset, loader, _ = build_dataloader(
        cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=4, dist=False, workers=0, training=False, logger=logger
    )
    model = build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    model.load_params_from_file(str(ckpt), logger=logger, to_cpu=True)
    model.eval()
    feats, coords, seen = [], [], 0
    with torch.no_grad():
        for batch in loader:
            if seen >= frames:
                break
            seen += batch["batch_size"]
            load_data_to_gpu(batch)
            out = model.vfe(batch)
            # Pillars of later batches get their own batch index range, so coordinates stay unique.
            shifted = out["voxel_coords"].clone()
            shifted[:, 0] += seen
            feats.append(out["pillar_features"].clone())
            coords.append(shifted)
    return torch.cat(feats), torch.cat(coords)


def final_ckpt(cfg_name: str, tag: str, epochs: int) -> Path:
    cfg = stage_config(cfg_name, [])
    return experiment_output_dir(cfg, tag) / "ckpt" / f"checkpoint_epoch_{epochs}.pth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["4x", "pointdistiller", "pd_frozen"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 0, 3, 4])
    parser.add_argument("--extra_tag", default="bench", help="the benchmark's tag (its runs are <tag>_seed<s>)")
    parser.add_argument("--data_path", type=Path, default=REPO / "data" / "synthetic_bench" / "trainval")
    parser.add_argument("--frames", type=int, default=32, help="dev frames (the val split of --data_path)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.chdir(REPO / "tools")  # config paths are relative to tools/, as for the tools
    family = kd_runs.FAMILIES["pointpillar"]
    logger = common_utils.create_logger(log_level=30)
    data_path = args.data_path.resolve()
    totals: dict[str, list[tuple[float, float, float]]] = {}
    for seed in args.seeds:
        tag = f"{args.extra_tag}_seed{seed}"
        teacher_cfg = family.runs["teacher"][1]
        teacher_ckpt = final_ckpt(teacher_cfg, tag, family.epochs)
        if not teacher_ckpt.exists():
            print(f"seed {seed}: no teacher checkpoint {teacher_ckpt}; skipped")
            continue
        t_feats, t_coords = pillar_features(teacher_cfg, teacher_ckpt, data_path, args.frames, logger)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(t_feats.shape[0], generator=gen)
        queries, pool = order[: args.queries], order[: args.pool]
        fit, held_out = order[: len(order) // 2], order[len(order) // 2 :]
        print(f"\nseed {seed}: {t_feats.shape[0]} pillars of {args.frames} dev frames, teacher {teacher_ckpt}")
        print(f"| run | kNN@{args.k} overlap with the teacher | R² of the teacher's features | participation rank |")
        print("|---|---:|---:|---:|")
        print(f"| teacher | 1 | 1 | {participation_rank(t_feats):.1f} |")
        for name in args.runs:
            cfg_name = family.runs[name][1]
            ckpt = final_ckpt(cfg_name, tag, family.epochs)
            if not ckpt.exists():
                continue
            feats, coords = pillar_features(cfg_name, ckpt, data_path, args.frames, logger)
            if not torch.equal(coords, t_coords):
                raise SystemExit(f"error: {cfg_name} voxelises the dev frames differently from the teacher")
            row = (
                knn_overlap(feats, t_feats, queries, pool, args.k),
                linear_r2(feats, t_feats, fit, held_out),
                participation_rank(feats),
            )
            totals.setdefault(name, []).append(row)
            print(f"| {name} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.1f} |", flush=True)
    print("\nmean over seeds (count)")
    print("| run | seeds | kNN overlap | R² | participation rank |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in totals.items():
        means = [sum(col) / len(rows) for col in zip(*rows)]
        print(f"| {name} | {len(rows)} | {means[0]:.3f} | {means[1]:.3f} | {means[2]:.1f} |")


if __name__ == "__main__":
    main()
