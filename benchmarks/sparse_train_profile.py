"""Where the CPU time of a sparse-voxel detector's training step goes (SECOND and its students), by phase.

Run from the repository root, one torch thread (spconv's CPU kernels run on the calling thread):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparse_train_profile.py --data_path <synthetic set> \\
        --cfg cfgs/kitti_models/second_synthetic.yaml cfgs/kitti_models/second_4x_synthetic.yaml --steps 3

Everything is this thread's CPU time (``time.thread_time``), the figure a busy shared machine distorts least; wall
time is printed once per step for comparison. A step is what ``benchmarks/train_speed.py`` times: loader (workers
0), forward with targets and losses, backward, gradient clipping, the config's optimizer. The configs' steps are
interleaved (teacher step, student step, ...) so that both see the same machine.

- forward per section: the detector's top-level modules, the 3D backbone split into its stages;
- backward per section: the time between the gradient reaching a section's output and reaching its input's
  producer (autograd hooks on the section outputs; the sections form a chain in these detectors);
- spconv: rulebook generation (``get_indice_pairs``) and the gather-GEMM-scatter kernels of the sparse convolutions,
  forward and backward, totalled over the step (their time is also inside the sections).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from train_speed import Bench, load_cfg  # noqa: E402

from pcdet.utils.spconv_utils import spconv_pytorch as spconv  # noqa: E402  (installs the CPU stream shim)

# Top-level modules whose output the next section reads from batch_dict under this key.
_OUTPUT_KEYS = {"map_to_bev_module": "spatial_features", "backbone_2d": "spatial_features_2d"}
# spconv's CPU op entry points -> row label.
_SPCONV_OPS = {
    "get_indice_pairs": "spconv rulebooks",
    "indice_conv": "spconv conv fwd",
    "indice_conv_backward": "spconv conv bwd",
}


def _output_tensor(name: str, out) -> torch.Tensor | None:
    if isinstance(out, spconv.SparseConvTensor):
        return out.features
    if isinstance(out, dict):
        return out.get(_OUTPUT_KEYS.get(name, ""))
    return None


class StepProfiler:
    """Hooks on one detector: forward time per section, gradient-arrival times, spconv op totals."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.times: dict[str, float] = defaultdict(float)
        self.grad_marks: list[tuple[str, float]] = []
        self._starts: dict[str, float] = {}
        for name, module in self._sections(model):
            module.register_forward_pre_hook(self._pre(name))
            module.register_forward_hook(self._post(name))

    @staticmethod
    def _sections(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        sections = []
        for name, module in model.named_children():
            if name == "backbone_3d":  # its stages, each a SparseSequential
                sections += [(f"3d.{n}", m) for n, m in module.named_children() if isinstance(m, spconv.SparseModule)]
            elif not isinstance(module, torch.nn.ModuleList):
                sections.append((name, module))
        return sections

    def _pre(self, name: str):
        def hook(module, inputs) -> None:
            self._starts[name] = time.thread_time()

        return hook

    def _post(self, name: str):
        def hook(module, inputs, out) -> None:
            self.times[f"fwd {name}"] += time.thread_time() - self._starts[name]
            tensor = _output_tensor(name, out)
            if tensor is not None and tensor.requires_grad:
                tensor.register_hook(lambda grad: self.grad_marks.append((name, time.thread_time())))

        return hook

    def add_backward(self, start: float, end: float) -> None:
        """Attribute [start, end] to the sections: the span until a section's output gradient arrives belongs to
        the sections after it (the first span: the head and the loss), the span after the last mark to the first
        section whose output has a gradient."""
        previous, later = start, "dense head + loss"
        for name, mark in self.grad_marks:
            self.times[f"bwd {later}"] += mark - previous
            previous, later = mark, name
        self.times[f"bwd {later}"] += end - previous
        self.grad_marks.clear()


@contextlib.contextmanager
def timed_spconv_ops(totals: dict[str, float]):
    """Wrap spconv's CPU op entry points (looked up on ``spconv.pytorch.ops`` at call time) with CPU timers."""
    ops = spconv.ops
    originals = {name: getattr(ops, name) for name in _SPCONV_OPS}

    def wrap(name: str):
        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return originals[name](*args, **kwargs)
            finally:
                totals[_SPCONV_OPS[name]] += time.thread_time() - start

        return timed

    for name in _SPCONV_OPS:
        setattr(ops, name, wrap(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)


def _row_order(key: str) -> int:
    """Table rows: data, forward sections then total, backward sections then total, the rest."""
    fixed = ["data", "fwd", "forward (with targets, losses)", "bwd", "backward", "clip + optimizer", "step"]
    group = key.split(" ")[0] if key.startswith(("fwd ", "bwd ")) else key
    return fixed.index(group) if group in fixed else len(fixed)


def profiled_step(bench: Bench, profiler: StepProfiler, record: bool) -> float:
    """One training step; adds its phases to ``profiler.times`` when ``record``; returns its wall seconds."""
    wall, t0 = time.perf_counter(), time.thread_time()
    batch = bench._next(training=True)
    t1 = time.thread_time()
    bench.model.train()
    bench.optimizer.zero_grad(set_to_none=True)
    loss, _, _ = bench.model_func(bench.model, batch)
    t2 = time.thread_time()
    loss.backward()
    t3 = time.thread_time()
    torch.nn.utils.clip_grad_norm_(bench.model.parameters(), bench.cfg.OPTIMIZATION.GRAD_NORM_CLIP)
    bench.optimizer.step()
    t4 = time.thread_time()
    if record:
        times = profiler.times
        times["data"] += t1 - t0
        times["forward (with targets, losses)"] += t2 - t1
        times["backward"] += t3 - t2
        times["clip + optimizer"] += t4 - t3
        times["step"] += t4 - t0
        times["voxels per batch"] += batch["voxels"].shape[0]
        profiler.add_backward(t2, t3)
    else:
        profiler.times.clear()
        profiler.grad_marks.clear()
    return time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="+", default=["cfgs/kitti_models/second_synthetic.yaml"])
    parser.add_argument("--data_path", type=Path, required=True, help="a synthetic set with infos")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="recorded steps per config, after one warm-up")
    args = parser.parse_args()
    torch.set_num_threads(1)

    benches = {Path(c).stem: Bench(load_cfg(c, args.data_path), args.batch_size, workers=0) for c in args.cfg}
    profilers = {name: StepProfiler(b.model) for name, b in benches.items()}
    spconv_totals: dict[str, float] = defaultdict(float)
    with timed_spconv_ops(spconv_totals):
        for step in range(args.steps + 1):
            for name, bench in benches.items():
                before = dict(spconv_totals)
                wall = profiled_step(bench, profilers[name], record=step > 0)
                if step > 0:
                    for key, value in spconv_totals.items():
                        profilers[name].times[key] += value - before.get(key, 0.0)
                    print(f"{name} step {step}: wall {wall:.2f} s", flush=True)

    names = list(benches)
    print(f"\nthread-CPU seconds per training step, mean of {args.steps}, batch {args.batch_size}, one thread")
    print("| phase | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    keys = list(dict.fromkeys(k for p in profilers.values() for k in p.times))
    for key in sorted(keys, key=_row_order):
        cells = [profilers[n].times.get(key, 0.0) / args.steps for n in names]
        fmt = "{:.0f}" if key == "voxels per batch" else "{:.3f}"
        print(f"| {key} | " + " | ".join(fmt.format(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
