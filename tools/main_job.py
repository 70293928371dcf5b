"""The main job: synthetic KITTI data → teacher → 4x student and 4x + PointDistiller side by side → table on test.

    cd tools && python main_job.py            (README's first command runs this after setting up the venv)

The data are the benchmark's (docs/BENCHMARK.md): students train on the train split, and the table is evaluated on
the held-out test split (its own generator seed) that no choice has seen. The teacher is the project's committed
checkpoint (checkpoints/README.md: the command that trained it, its sha256), evaluated live; ``--train_teacher``
trains it live instead with that same command. The students always train live, side by side, one core each.

Every stage is an ordinary command printed before it runs (``python train.py ...``, ``python test.py ...``), so it
can be copied and re-run by hand. A stage is skipped when it already finished with the same inputs (stage_runner).
Results land in ``output/main_job/<extra_tag>/``: ``results.md``/``results.json`` (the table), loss curves and BEV
renderings of teacher, student and KD student on the same test frame (PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import stage_runner
from stage_runner import CLASSES, ROOT_DIR, Job, Runner, metric_row, protocol_data, run_jobs, stage_config

TEACHER_CFG = "pointpillar_synthetic.yaml"
STUDENT_CFG = "pointpillar_4x_synthetic.yaml"
# The PointDistiller configuration chosen on the dev split (docs/KD_STUDY.md): the paper's settings with the
# teacher-side adapter frozen, which keeps the term from collapsing.
PD_CFG = "pointpillar_kd_frozen_synthetic.yaml"
COMMITTED_TEACHER = ROOT_DIR / "checkpoints" / "pointpillar_synthetic_teacher.pth"
TEACHER_EPOCHS = 16  # the committed teacher's schedule (checkpoints/README.md), used by --train_teacher
# The students' schedule here: what fits 20 minutes on 2 cores beside the data generation (the benchmark trains them
# TEACHER_EPOCHS; docs/KD_STUDY.md compares the two).
STUDENT_EPOCHS = 3


@dataclass
class Stage:
    """One model of the comparison."""

    name: str  # short id used for eval tags and file names
    label: str  # row label in the table
    train_cfg: str  # config train.py trains with
    eval_cfg: str  # config test.py evaluates with (the plain student config for KD runs)
    distilled: bool = False
    ckpt: Path | None = field(default=None, init=False)
    run_dir: Path | None = field(default=None, init=False)


def stages() -> list[Stage]:
    return [
        Stage("teacher", "PointPillars teacher", TEACHER_CFG, TEACHER_CFG),
        Stage("student", "4x student", STUDENT_CFG, STUDENT_CFG),
        Stage("pointdistiller", "4x + PointDistiller (frozen teacher adapter)", PD_CFG, STUDENT_CFG, distilled=True),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_frames", type=int, default=800)
    parser.add_argument("--dev_frames", type=int, default=200, help="generated with train (the benchmark's dev)")
    parser.add_argument("--test_frames", type=int, default=500, help="held-out frames the table is evaluated on")
    parser.add_argument("--data_root", type=str, default=str(ROOT_DIR / "data" / "synthetic_bench"))
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers per stage")
    parser.add_argument("--epochs", type=int, default=STUDENT_EPOCHS, help="the students' epochs")
    parser.add_argument("--batch_size", type=int, default=None, help="override every config's batch size")
    parser.add_argument("--teacher_ckpt", type=str, default=str(COMMITTED_TEACHER))
    parser.add_argument("--train_teacher", action="store_true", help="train the teacher live instead")
    parser.add_argument("--teacher_epochs", type=int, default=TEACHER_EPOCHS, help="with --train_teacher")
    parser.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1), help="students side by side")
    parser.add_argument("--extra_tag", type=str, default="main_job")
    parser.add_argument("--output_root", type=str, default=None, help="replaces <repo>/output")
    parser.add_argument("--fresh", action="store_true", help="ignore finished stages and run everything again")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    os.chdir(stage_runner.TOOLS_DIR)
    specs = protocol_data(Path(args.data_root), args.train_frames, args.dev_frames, args.test_frames)
    pc_range = list(stage_config(TEACHER_CFG, []).DATA_CONFIG.POINT_CLOUD_RANGE)
    meta = stage_runner.prepare_data(specs["trainval"], pc_range)
    stage_runner.prepare_data(specs["test"], pc_range)
    out_root = Path(args.output_root).resolve() if args.output_root else ROOT_DIR / "output"
    job_dir = out_root / "main_job" / args.extra_tag
    threads = max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    runner = Runner(args, job_dir, specs["trainval"].path, meta, threads=threads)
    teacher, student, distilled = stages()

    if args.train_teacher:
        teacher.ckpt, teacher.run_dir = runner.train(
            "teacher", TEACHER_CFG, args.extra_tag, 0, None, args.teacher_epochs
        )
    else:
        teacher.ckpt = Path(args.teacher_ckpt).resolve()
        print(f"teacher: {teacher.ckpt} (checkpoints/README.md says how it was trained; --train_teacher retrains it)")
    runner.echo, runner.show_progress = args.parallel <= 1, args.parallel > 1

    def train_and_test(stage: Stage, teacher_ckpt: Path | None = None):
        def job() -> dict:
            if stage.ckpt is None:
                stage.ckpt, stage.run_dir = runner.train(stage.name, stage.train_cfg, args.extra_tag, 0, teacher_ckpt)
            return runner.test(stage.name, stage.eval_cfg, stage.ckpt, specs["test"].path)

        return Job(stage.name, job)

    # The KD student (the slower one) starts first, so the plain student and the teacher's evaluation share the
    # other core while it trains.
    jobs = [train_and_test(distilled, teacher.ckpt), train_and_test(student), train_and_test(teacher)]
    done = run_jobs(jobs, args.parallel)
    results = {stage.name: done[stage.name].result for stage in (teacher, student, distilled)}
    table = summarise(runner, [teacher, student, distilled], results, specs["test"].path)
    print("\n" + table)
    print(f"\nmain job finished in {(time.time() - start) / 60:.1f} min; results in {runner.job_dir}")


def model_row(label: str, metrics: dict, params: int, latency_ms: float | None) -> dict:
    return {"model": label, "params_M": params / 1e6, "latency_ms": latency_ms, **metric_row(metrics)}


def summarise(runner: Runner, models: list[Stage], results: dict, test_dir: Path) -> str:
    """Count parameters, draw loss curves and BEV predictions on one test frame, write and return the table."""
    import torch
    from visual_utils.bev_plot import render_bev, save_bev
    from visual_utils.plot_curves import plot_curves, read_scalars

    from pcdet.datasets import build_dataloader
    from pcdet.models import build_network, load_data_to_gpu
    from pcdet.utils import common_utils

    job_dir = runner.job_dir
    logger = common_utils.create_logger(job_dir / "summary.log")
    set_cfgs = ["DATA_CONFIG.DATA_PATH", str(test_dir)]
    eval_cfg = stage_config(STUDENT_CFG, set_cfgs)
    dataset, _, _ = build_dataloader(
        eval_cfg.DATA_CONFIG, eval_cfg.CLASS_NAMES, batch_size=1, dist=False, workers=0, logger=logger, training=False
    )
    frame = dataset[0]
    rows = []
    for stage in models:
        cfg = stage_config(stage.eval_cfg, set_cfgs)
        model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
        model.load_params_from_file(str(stage.ckpt), logger=logger, to_cpu=True)
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        rows.append(model_row(stage.label, results[stage.name]["metrics"], params, results[stage.name]["latency_ms"]))
        batch = dataset.collate_batch([frame])
        load_data_to_gpu(batch)
        with torch.no_grad():
            pred = model(batch)[0][0]
        fig = render_bev(
            frame["points"],
            pred_boxes=pred["pred_boxes"].cpu().numpy(),
            pred_scores=pred["pred_scores"].cpu().numpy(),
            pred_labels=pred["pred_labels"].cpu().numpy(),
            gt_boxes=dataset.kitti_infos[0]["annos"]["gt_boxes_lidar"],
            class_names=list(cfg.CLASS_NAMES),
            point_cloud_range=list(cfg.DATA_CONFIG.POINT_CLOUD_RANGE),
            title=f"{stage.label}: test frame {frame['frame_id']}",
        )
        save_bev(fig, job_dir / f"bev_{stage.name}.png")
        if stage.run_dir is not None:
            try:
                plot_curves(read_scalars(stage.run_dir / "tensorboard"), job_dir / f"loss_{stage.name}.png")
            except (KeyError, FileNotFoundError) as exc:
                logger.warning(f"no loss curve for {stage.name}: {exc}")
    table = format_table(rows, "KITTI-style evaluation on the held-out synthetic test split: moderate, R40 AP")
    (job_dir / "results.md").write_text(table + "\n")
    (job_dir / "results.json").write_text(json.dumps(rows, indent=2))
    return table


def format_table(rows: list[dict], title: str) -> str:
    header = "| model | params (M) | CPU latency (ms/frame) | "
    header += " | ".join(f"{c} BEV | {c} 3D" for c in CLASSES) + " | mAP BEV | mAP 3D |"
    lines = [title, "", header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        latency = f"{r['latency_ms']:.1f}" if r["latency_ms"] is not None else "n/a"
        cells = " | ".join(f"{r[f'{c}_bev']:.2f} | {r[f'{c}_3d']:.2f}" for c in CLASSES)
        lines.append(
            f"| {r['model']} | {r['params_M']:.2f} | {latency} | {cells} | {r['mAP_bev']:.2f} | {r['mAP_3d']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
