"""The KD benchmark on the synthetic set: teacher, 4x/16x students, every KD loss, ablations; mean ± std over seeds.

    .venv/bin/python benchmarks/kd_benchmark.py                      # the protocol, test split -> docs/BENCHMARK.md
    .venv/bin/python benchmarks/kd_benchmark.py --split dev --runs 4x pointdistiller pd_frozen --seeds 0
    .venv/bin/python benchmarks/kd_benchmark.py --split dev --curves    # learning curves of teacher / 4x / 16x

Three splits, each generated from its own generator seed (docs/BENCHMARK.md, "Protocol"): every run trains on
``train``; ``dev`` (frames of the same data directory, disjoint from train) serves every choice — schedules,
weights, options, learning curves; ``test`` (a separate directory, another seed) is opened only by the report of
``--split test``, never by ``--split dev`` or ``--curves``. Every run is an ordinary ``train.py`` / ``test.py`` call
(printed before it starts) and is skipped when it already finished with the same inputs, so the script resumes
after an interruption, also across sessions. Independent runs go side by side (``--parallel``, one torch thread
each); seed s trains its own teacher and the seed-s students distil from it. The report is rewritten after every
finished evaluation.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "benchmarks"))

import data_formats  # noqa: E402  (tools/ is not a package; the stage runner and the data formats live there)
import kd_record  # noqa: E402
import kd_report  # noqa: E402
import kd_runs  # noqa: E402
import stage_runner  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pcdet.utils.checkpoint_io import file_sha256  # noqa: E402


def runs_for(dataset: str, family: kd_runs.Family) -> dict:
    """The run table of a data set: real KITTI uses each synthetic config's KITTI twin (the paper's configs, e.g.
    pointpillar.yaml for pointpillar_synthetic.yaml); synthetic-only option studies have none and are left out."""
    if dataset == "synthetic":
        return family.runs | family.screens
    cfg_dir = REPO / "tools" / "cfgs" / "kitti_models"
    twins = {}
    for name, (label, train_cfg, eval_cfg, distilled) in family.runs.items():
        train_cfg, eval_cfg = train_cfg.replace("_synthetic", ""), eval_cfg.replace("_synthetic", "")
        if (cfg_dir / train_cfg).is_file() and (cfg_dir / eval_cfg).is_file():
            twins[name] = (label, train_cfg, eval_cfg, distilled)
    return twins


ALL_RUN_NAMES = sorted({name for f in kd_runs.FAMILIES.values() for name in (*f.runs, *f.screens)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["synthetic", "kitti"], default="synthetic")
    parser.add_argument(
        "--detector", choices=list(kd_runs.FAMILIES), default="pointpillar", help="which detector family's table"
    )
    parser.add_argument("--split", choices=["dev", "test"], default="test", help="where the table is evaluated")
    parser.add_argument(
        "--runs", nargs="+", default=None, choices=ALL_RUN_NAMES, help="default: every run of the table but screens"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the claim rows (teacher, student, chosen PD)"
    )
    parser.add_argument(
        "--core_seeds", nargs="+", type=int, default=None, help="seeds of the other core rows (default: --seeds)"
    )
    parser.add_argument(
        "--study_seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds of the study rows (16x, ablations, options: not the family's core rows); default: the first of "
        "--seeds",
    )
    parser.add_argument("--curves", action="store_true", help="dev learning curves (teacher, 4x, 16x)")
    parser.add_argument("--curve_every", type=int, default=2, help="curves: evaluate every N-th epoch (and the last)")
    parser.add_argument("--train_frames", type=int, default=None, help="default: KITTI format 800, nuScenes 400")
    parser.add_argument("--dev_frames", type=int, default=None, help="default: KITTI format 200, nuScenes 100")
    parser.add_argument("--test_frames", type=int, default=None, help="default: KITTI format 500, nuScenes 250")
    parser.add_argument(
        "--samples_per_scene", type=int, default=None, help="nuScenes: key frames per scene (default 10)"
    )
    parser.add_argument(
        "--data_root",
        type=str,
        default=None,
        help="default: data/synthetic_bench (KITTI format), data/synthetic_bench_nuscenes, data/kitti",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="every run's schedule (default: the family's synthetic one, kitti 80)"
    )
    parser.add_argument("--teacher_epochs", type=int, default=None, help="the teachers' schedule (default: --epochs)")
    parser.add_argument("--teacher_tag", type=str, default=None, help="reuse the teachers of this --extra_tag")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers per run")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="runs side by side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / --parallel)")
    parser.add_argument("--extra_tag", type=str, default=None, help="default: bench (pointpillar), bench_<detector>")
    parser.add_argument("--output_root", type=str, default=None)
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs (stage book and results record)")
    parser.add_argument("--report", type=str, default=None, help="default: docs/BENCHMARK[_<DETECTOR>][_DEV].md")
    args = parser.parse_args(argv)
    args.family = kd_runs.FAMILIES[args.detector]
    args.format = data_formats.FORMATS[args.family.data_format]
    if args.dataset == "kitti" and args.format.name != "kitti":
        parser.error(f"--dataset kitti runs the KITTI families; {args.detector} is a {args.format.name} family")
    table = runs_for(args.dataset, args.family)
    args.runs = args.runs or [name for name in table if name not in args.family.screens]
    if args.split == "test" and set(args.runs) & set(args.family.screens):
        parser.error("the weight-screen runs are dev-only (a choice is made from them): use --split dev")
    missing = [r for r in args.runs if r not in table]
    if missing:
        parser.error(f"runs without a {args.dataset} {args.detector} config: {', '.join(missing)}")
    if args.dataset == "kitti" and (args.split == "dev" or args.curves):
        parser.error("the KITTI protocol is the paper's: no dev split; --split test evaluates on KITTI val")
    defaults = args.format.sizes
    args.train_frames = args.train_frames or defaults.train
    args.dev_frames = args.dev_frames or defaults.dev
    args.test_frames = args.test_frames or defaults.test
    args.samples_per_scene = args.samples_per_scene or defaults.samples_per_scene
    default_root = args.format.default_root if args.dataset == "synthetic" else "data/kitti"
    args.data_root = args.data_root or str(REPO / default_root)
    args.epochs = args.epochs or (args.family.epochs if args.dataset == "synthetic" else 80)
    args.teacher_epochs = args.teacher_epochs or args.epochs
    args.extra_tag = args.extra_tag or ("bench" if args.detector == "pointpillar" else f"bench_{args.detector}")
    args.teacher_tag = args.teacher_tag or args.extra_tag
    args.core_seeds = args.core_seeds if args.core_seeds is not None else list(args.seeds)
    args.study_seeds = args.study_seeds if args.study_seeds is not None else args.seeds[:1]
    for option in ("core_seeds", "study_seeds"):
        unknown = sorted(set(getattr(args, option)) - set(args.seeds))
        if unknown:  # such a seed would have no teacher
            parser.error(f"--{option} {unknown} are not among --seeds {args.seeds}")
    # Resolved before main() changes into tools/.
    report = Path(args.report) if args.report else kd_report.default_report(args)
    args.report = str(report.resolve())
    return args


def seeded(name: str, seed: int, args: argparse.Namespace) -> bool:
    """Whether run ``name`` trains with ``seed``: claim rows with every --seeds, the other core rows with
    --core_seeds, studies with --study_seeds."""
    if seed not in args.seeds:
        return False
    if name in args.family.claim:
        return True
    return seed in (args.core_seeds if name in args.family.core else args.study_seeds)


def tier(name: str, family: kd_runs.Family) -> int:
    """Scheduling order: claim rows, then the other core rows, then studies."""
    return 0 if name in family.claim else 1 if name in family.core else 2


_MACHINE_KEYS = ("ROOT_DIR", "LOCAL_RANK")  # where this checkout lies and which process: no part of a run's inputs


@functools.cache
def _path_free_config(cfg_name: str, cfg_dir: str) -> dict:
    """A config as resolved for a stage, without where this checkout lies (read once per invocation; not mutated)."""
    cfg = stage_runner.stage_config(cfg_name, [], cfg_dir)
    return {k: v for k, v in cfg.items() if k not in _MACHINE_KEYS}


def record_key(args, runs: dict, name: str, seed: int, data_meta: tuple[dict, dict], teacher_key: str | None) -> str:
    """The results record's key of (run, seed): its path-free inputs (resolved train and eval configs, the training
    and evaluation data's identity ``data_meta``, split, schedule, seed, batch size, workers) and, for a KD run, its
    teacher's key."""
    _, train_cfg, eval_cfg, _ = runs[name]
    cfgs = [_path_free_config(cfg_name, args.format.cfg_dir) for cfg_name in (train_cfg, eval_cfg)]
    epochs = args.teacher_epochs if name == "teacher" else args.epochs
    inputs = (*data_meta, args.split, seed, epochs, args.batch_size, args.workers, teacher_key)
    return stage_runner.key_of("record", *cfgs, *inputs)


def plan(
    args,
    runs: dict,
    runner: stage_runner.Runner,
    eval_dir: Path,
    split: str,
    record: kd_record.ResultsRecord | None = None,
    code: str = "",
) -> list[stage_runner.Job]:
    """One job per (run, seed): train (after the seed's teacher when distilled), then evaluate on ``eval_dir``.

    Jobs are listed by tier (claim rows, other core rows, studies), seed by seed within one. The curve runs keep
    every epoch checkpoint whatever the split, so that a later ``--curves`` finds them (and their stage keys, which
    include the command, do not change). With a ``record``, a job recorded with the same inputs returns its entry
    without running; a recorded teacher still trains (from its checkpoint if this machine has it) when one of its
    seed's KD runs has to."""
    teacher_ckpts: dict[int, Path] = {}
    jobs = []
    data_meta = (runner.meta, args.format.data_meta(eval_dir.resolve())) if record is not None else ({}, {})
    for seed in args.seeds:
        tag = f"{args.extra_tag}_seed{seed}"
        names = ["teacher", *(r for r in args.runs if r != "teacher" and seeded(r, seed, args))]  # KD needs a teacher
        keys: dict[str, str] = {}
        recorded: dict[str, dict | None] = {}
        if record is not None:
            teacher_key = record_key(args, runs, "teacher", seed, data_meta, None)
            keys = {n: record_key(args, runs, n, seed, data_meta, teacher_key if runs[n][3] else None) for n in names}
            recorded = {name: record.get(f"{name}/seed{seed}", keys[name]) for name in names}
        teacher_needed = any(runs[n][3] and recorded.get(n) is None for n in names)
        for name in names:
            _, train_cfg, eval_cfg, distilled = runs[name]
            entry = recorded.get(name)
            if entry is not None and (name != "teacher" or not teacher_needed):

                def job(entry=entry, name=name, seed=seed) -> dict:
                    tqdm.write(f"[recorded] {name}/seed{seed}: {entry['code']}, {entry['finished']} ({entry['host']})")
                    return entry | {"from_record": True}

            else:

                def job(
                    name=name,
                    train_cfg=train_cfg,
                    eval_cfg=eval_cfg,
                    distilled=distilled,
                    seed=seed,
                    tag=tag,
                    key=keys.get(name),
                ) -> dict:
                    epochs = args.teacher_epochs if name == "teacher" else args.epochs
                    run_tag = f"{args.teacher_tag}_seed{seed}" if name == "teacher" else tag
                    keep = epochs if name in args.family.curves else 1
                    teacher = teacher_ckpts[seed] if distilled else None
                    ckpt, run_dir = runner.train(f"{name}/seed{seed}", train_cfg, run_tag, seed, teacher, epochs, keep)
                    if name == "teacher":
                        teacher_ckpts[seed] = ckpt
                    summary = runner.test(f"{split}/{name}/seed{seed}", eval_cfg, ckpt, eval_dir)
                    result = {"summary": summary, "run_dir": str(run_dir), "ckpt": str(ckpt)}
                    result |= {"params": kd_report.count_parameters(ckpt), "ckpt_sha256": file_sha256(ckpt)}
                    if record is None:
                        return result
                    # A recorded run whose checkpoint this machine still holds keeps its entry (and its provenance).
                    entry = record.get(f"{name}/seed{seed}", key)
                    if entry is None or entry["ckpt_sha256"] != result["ckpt_sha256"]:
                        teacher_sha = file_sha256(teacher) if teacher is not None else None
                        entry = kd_record.entry_of(result, key, code, teacher_sha)
                        record.put(f"{name}/seed{seed}", entry)
                    return result | entry

            after = (f"teacher/seed{seed}",) if distilled else ()
            jobs.append(stage_runner.Job(f"{name}/seed{seed}", job, after))
    # The claim's rows fill first when a budget ends early, then what it is compared with.
    return sorted(jobs, key=lambda job: tier(job.name.split("/")[0], args.family))


def curve_jobs(args, runner: stage_runner.Runner, dev_dir: Path, trained: dict) -> list[stage_runner.Job]:
    """Evaluate every kept epoch checkpoint of the curve runs on dev."""
    jobs = []
    for job_name, job in trained.items():
        name, seed = job_name.split("/")
        if name not in args.family.curves or name not in args.runs:
            continue
        ckpt_dir = Path(job.result["ckpt"]).parent
        eval_cfg = args.family.runs[name][2]
        for ckpt in sorted(ckpt_dir.glob("checkpoint_epoch_*.pth")):
            epoch = int(ckpt.stem.rsplit("_", 1)[1])
            if epoch % args.curve_every and ckpt != Path(job.result["ckpt"]):
                continue
            jobs.append(
                stage_runner.Job(
                    f"curve/{name}/{seed}/epoch{epoch}",
                    lambda c=ckpt, n=name, s=seed, e=epoch, cfg=eval_cfg: (
                        runner.test(f"dev_curve/{n}/{s}/epoch{e}", cfg, c, dev_dir) | {"epoch": e}
                    ),
                )
            )
    return jobs


def prepare(args, runs: dict) -> tuple[Path, Path, dict]:
    """(training data, evaluation data, data meta). Synthetic: generate the protocol's data in the family's format;
    the test set only when the test split is reported. KITTI: the user's prepared data/kitti (infos made by
    create_kitti_infos); training on its train split, the table on its val split."""
    root = Path(args.data_root).resolve()
    if args.dataset == "kitti":
        infos = [root / f"kitti_infos_{split}.pkl" for split in ("train", "val")] + [root / "kitti_dbinfos_train.pkl"]
        absent = [str(p) for p in infos if not p.is_file()]
        if absent:
            raise SystemExit(
                f"error: {', '.join(absent)} missing: run python -m pcdet.datasets.kitti.kitti_dataset "
                f"create_kitti_infos cfgs/dataset_configs/kitti_dataset.yaml --data_path {root}"
            )
        return root, root, {"dataset": "kitti", "infos": [file_sha256(p) for p in infos]}
    sizes = data_formats.Sizes(args.train_frames, args.dev_frames, args.test_frames, args.samples_per_scene)
    trainval, test, meta = args.format.prepare(root, sizes, runs["teacher"][1], with_test=args.split == "test")
    return trainval, test or trainval, meta


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.curves and args.split == "test":
        raise SystemExit("--curves is a dev-split study: add --split dev (the test split serves only the report)")
    start = time.time()
    os.chdir(stage_runner.TOOLS_DIR)
    runs = runs_for(args.dataset, args.family)
    train_dir, eval_dir, meta = prepare(args, runs)
    out_root = Path(args.output_root).resolve() if args.output_root else REPO / "output"
    job_dir = out_root / "kd_benchmark" / args.extra_tag
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    runner = stage_runner.Runner(args, job_dir, train_dir, meta, threads=threads, data_format=args.format.name)
    runner.echo = args.parallel <= 1
    runner.show_progress = not runner.echo
    code = kd_report.code_version()
    # The curves evaluate every kept epoch checkpoint, which only a run trained on this machine has.
    record = None if args.curves else kd_record.ResultsRecord(kd_record.record_path(Path(args.report)), args.fresh)
    jobs = plan(args, runs, runner, eval_dir, args.split, record, code)
    context = kd_report.Context(
        args=args, runs=runs, split=args.split, started=start, planned=len(jobs), code=code, record=record
    )
    results: dict = {}

    def record(job: stage_runner.Job) -> None:
        results[job.name] = job.result
        kd_report.write_report(context, results, Path(args.report))

    trained = stage_runner.run_jobs(jobs, args.parallel, on_done=record)
    if args.curves:
        curves: dict = {}
        stage_runner.run_jobs(
            curve_jobs(args, runner, train_dir, trained),
            args.parallel,
            on_done=lambda job: curves.__setitem__(job.name, job.result),
        )
        kd_report.write_curves(context, curves, Path(args.report).with_name("BENCHMARK_CURVES.md"))
    print(kd_report.write_report(context, results, Path(args.report)))


if __name__ == "__main__":
    main()
