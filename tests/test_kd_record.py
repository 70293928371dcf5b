"""The benchmark's results record: finished rows outlive the machine (output/ lost) and are taken as done only when
their inputs match; a KD row that must train brings its recorded teacher back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "benchmarks"))

import kd_benchmark  # noqa: E402
import kd_record  # noqa: E402
import kd_report  # noqa: E402
import stage_runner  # noqa: E402
from stage_runner import run_jobs  # noqa: E402


class FakeRunner:
    """Stands in for stage_runner.Runner: 'trains' by writing a small checkpoint whose bits depend on the run and a
    generation counter (a retrained teacher can come out different), 'tests' by returning fixed metrics."""

    def __init__(self, out: Path, generation: int = 0) -> None:
        self.out, self.generation, self.meta = out, generation, {"generator_version": "1.0", "seed": 1}
        self.trained: list[str] = []

    def train(self, name, cfg_name, extra_tag, seed, teacher_ckpt, epochs, keep):
        self.trained.append(name)
        ckpt = self.out / name / "ckpt" / f"checkpoint_epoch_{epochs}.pth"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        weights = torch.full((3 if name.startswith("teacher") else 2,), float(self.generation))
        torch.save({"model_state": {"w": weights}}, ckpt)
        return ckpt, ckpt.parents[1]

    def test(self, name, cfg_name, ckpt, data_dir):
        ap = {"teacher": 70.0, "4x": 60.0, "pd_frozen": 64.0}[name.split("/")[1]]
        metrics = {f"{c}_{m}/moderate_R40": ap for c in ("Car", "Pedestrian", "Cyclist") for m in ("bev", "3d")}
        return {"latency_ms": 5.0, "result_dir": str(self.out / "eval"), "metrics": metrics}


SEEDS = (1, 2)  # two seeds: each seed's jobs must file their rows under their own keys
ROWS = sorted(f"{run}/seed{seed}" for run in ("teacher", "4x", "pd_frozen") for seed in SEEDS)


def _invocation(tmp_path: Path, data_name: str = "test", extra: tuple[str, ...] = ()):
    argv = ["--runs", "teacher", "4x", "pd_frozen", "--seeds", *map(str, SEEDS)]
    args = kd_benchmark.parse_args([*argv, "--report", str(tmp_path / "BENCH.md"), *extra])
    eval_dir = tmp_path / data_name
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "synthetic_meta.json").write_text(json.dumps({"generator_version": "1.0", "seed": 2}))
    return args, eval_dir


def _run(args, eval_dir: Path, runner: FakeRunner, record: kd_record.ResultsRecord) -> dict:
    runs = kd_benchmark.runs_for("synthetic", args.family)
    jobs = kd_benchmark.plan(args, runs, runner, eval_dir, "test", record, "commit test")
    return {name: job.result for name, job in run_jobs(jobs, parallel=1).items()}


def _page(args, results: dict, path: Path) -> str:
    runs = kd_benchmark.runs_for("synthetic", args.family)
    context = kd_report.Context(args, runs, "test", 0.0, len(results), "commit new", kd_record.ResultsRecord(path))
    return kd_report.write_report(context, results, Path(args.report))


@pytest.fixture(autouse=True)
def _in_tools(monkeypatch):
    monkeypatch.chdir(REPO / "tools")  # configs resolve relative to tools/, as kd_benchmark.main runs them


def test_a_lost_machine_keeps_its_rows_and_a_new_one_trains_nothing(tmp_path, monkeypatch):
    args, eval_dir = _invocation(tmp_path)
    path = kd_record.record_path(Path(args.report))
    assert path.name == "BENCH.results.json"
    first = FakeRunner(tmp_path / "machine1")
    results = _run(args, eval_dir, first, kd_record.ResultsRecord(path))
    assert sorted(first.trained) == ROWS
    entries = json.loads(path.read_text())
    assert sorted(entries) == ROWS
    assert entries["pd_frozen/seed1"]["teacher_sha256"] == entries["teacher/seed1"]["ckpt_sha256"]
    assert entries["4x/seed1"]["teacher_sha256"] is None and entries["4x/seed1"]["params"] == 2
    assert "machine1" not in path.read_text()  # no machine paths in what is committed

    # Another machine: another checkout, its output/ holds nothing, another data root holds the same data.
    monkeypatch.setattr(stage_runner.base_cfg, "ROOT_DIR", str(tmp_path / "other_checkout"))
    second = FakeRunner(tmp_path / "machine2")
    args2, eval_dir2 = _invocation(tmp_path, data_name="elsewhere")
    again = _run(args2, eval_dir2, second, kd_record.ResultsRecord(path))
    assert second.trained == []
    assert all(r["from_record"] for r in again.values())
    assert {n: r["summary"]["metrics"] for n, r in again.items()} == {
        n: r["summary"]["metrics"] for n, r in results.items()
    }
    page = _page(args2, again, path)
    assert "6 of these rows come from it" in page and "commit test (6 runs)" in page
    assert "| 4x student | 2 | 0.00 | 5.0 | 60.00 ± 0.00 | 60.00 ± 0.00 |" in page
    assert "earlier checkpoint" not in page


def test_a_kd_row_to_train_brings_back_its_teacher_and_other_inputs_miss(tmp_path):
    args, eval_dir = _invocation(tmp_path)
    path = kd_record.record_path(Path(args.report))
    _run(args, eval_dir, FakeRunner(tmp_path / "machine1"), kd_record.ResultsRecord(path))
    entries = json.loads(path.read_text())
    old_teacher_sha = entries["teacher/seed1"]["ckpt_sha256"]
    del entries["pd_frozen/seed1"]
    path.write_text(json.dumps(entries))

    # The KD row needs a teacher checkpoint, which this machine lacks: the teacher trains again (other bits here).
    runner = FakeRunner(tmp_path / "machine2", generation=1)
    results = _run(args, eval_dir, runner, kd_record.ResultsRecord(path))
    assert sorted(runner.trained) == ["pd_frozen/seed1", "teacher/seed1"]  # seed 2 is whole in the record
    assert results["4x/seed1"]["from_record"] and results["teacher/seed2"]["from_record"]
    entries = json.loads(path.read_text())
    assert entries["teacher/seed1"]["ckpt_sha256"] != old_teacher_sha
    assert entries["pd_frozen/seed1"]["teacher_sha256"] == entries["teacher/seed1"]["ckpt_sha256"]

    # The first machine again: its teacher checkpoint is unchanged, so the entry (and when it was made) stays.
    runner = FakeRunner(tmp_path / "machine1")
    del entries["pd_frozen/seed2"]
    path.write_text(json.dumps(entries))
    _run(args, eval_dir, runner, kd_record.ResultsRecord(path))
    assert sorted(runner.trained) == ["pd_frozen/seed2", "teacher/seed2"]  # the fake runner trains without a book
    assert json.loads(path.read_text())["teacher/seed2"] == entries["teacher/seed2"]

    # Other inputs (a schedule, the test data) miss the record; --fresh ignores it but keeps what it does not redo.
    for extra in (("--epochs", "8"), (), ("--fresh",)):
        other_args, other_eval = _invocation(tmp_path, data_name="test2", extra=extra)
        if not extra:
            (other_eval / "synthetic_meta.json").write_text(json.dumps({"generator_version": "1.0", "seed": 3}))
        runner = FakeRunner(tmp_path / "machine3")
        _run(other_args, other_eval, runner, kd_record.ResultsRecord(path, fresh="--fresh" in extra))
        assert sorted(runner.trained) == ROWS, extra

    # --fresh over some rows redoes those and keeps the others' entries.
    before = json.loads(path.read_text())
    fresh_args, fresh_eval = _invocation(tmp_path, extra=("--fresh", "--runs", "teacher", "4x"))
    runner = FakeRunner(tmp_path / "machine4")
    _run(fresh_args, fresh_eval, runner, kd_record.ResultsRecord(path, fresh=True))
    assert sorted(runner.trained) == ["4x/seed1", "4x/seed2", "teacher/seed1", "teacher/seed2"]
    after = json.loads(path.read_text())
    assert all(after[f"pd_frozen/seed{seed}"] == before[f"pd_frozen/seed{seed}"] for seed in SEEDS)


def test_a_teacher_trained_again_to_other_bits_is_named_in_the_report(tmp_path):
    args, eval_dir = _invocation(tmp_path)
    path = kd_record.record_path(Path(args.report))
    results = _run(args, eval_dir, FakeRunner(tmp_path / "machine1"), kd_record.ResultsRecord(path))
    results["pd_frozen/seed1"] = results["pd_frozen/seed1"] | {"teacher_sha256": "0" * 64}
    page = _page(args, results, path)
    assert "earlier checkpoint of their seed's teacher" in page and "pd_frozen/seed1" in page


def test_a_broken_record_names_its_file(tmp_path):
    path = tmp_path / "BENCH.results.json"
    path.write_text("{not json")
    with pytest.raises(SystemExit, match="BENCH.results.json"):
        kd_record.ResultsRecord(path)
