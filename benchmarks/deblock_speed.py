"""The folded BEV deblocks with oneDNN's deconv + fused ReLU against ``conv_transpose2d`` + ``relu_`` (A/B).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/deblock_speed.py --repeat 12

Builds the BaseBEVBackbone of pointpillar.yaml and pointpillar_4x.yaml (random weights, fused eval path) on a
496 x 432 pillar map with ~6 % occupied cells (KITTI-like), then times, alternating which form goes first, (a) the
three deblocks on the blocks' outputs and (b) the whole backbone, in thread-CPU time (one torch thread), so other
processes on a shared machine do not count. Both forms fold the same weights; the outputs are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from infer_latency import GRIDS, load_cfg

from pcdet.models.backbones_2d.base_bev_backbone import BaseBEVBackbone
from pcdet.models.model_utils import fused_inference
from pcdet.models.model_utils.fused_inference import enable_fused_inference

FORMS = ("onednn_deconv_relu", "deconv_then_relu")


def time_backbone(cfg_file: str, repeat: int) -> dict[str, float]:
    """Median thread-CPU ms per form: ``<form>`` for the deblocks alone, ``<form>_backbone`` for the backbone."""
    cfg = load_cfg(cfg_file)
    c_in = cfg.MODEL.MAP_TO_BEV.NUM_BEV_FEATURES
    torch.manual_seed(0)
    backbone = enable_fused_inference(BaseBEVBackbone(cfg.MODEL.BACKBONE_2D, c_in).eval())
    occupied = torch.rand(1, 1, 496, 432) < 0.06
    x = (torch.relu(torch.randn(1, c_in, 496, 432)) * occupied).contiguous(memory_format=torch.channels_last)
    onednn = fused_inference._DECONV_RELU
    times: dict[str, list[float]] = {key: [] for form in FORMS for key in (form, f"{form}_backbone")}
    outputs = {}
    with torch.no_grad():
        backbone({"spatial_features": x})  # folds the weights
        run = backbone._fused_runner()
        num_blocks = len(backbone.blocks)
        features, y = [], x
        for i in range(num_blocks):
            y = run(i, y)
            features.append(y)
        try:
            for rep in range(repeat):
                for form in FORMS if rep % 2 == 0 else FORMS[::-1]:
                    # None: FoldedConvReLU falls back to conv_transpose2d + relu_ (the form before the change).
                    fused_inference._DECONV_RELU = onednn if form == FORMS[0] else None
                    start = time.thread_time()
                    outputs[form] = [run(num_blocks + i, f) for i, f in enumerate(features)]
                    times[form].append(time.thread_time() - start)
                    start = time.thread_time()
                    backbone({"spatial_features": x})
                    times[f"{form}_backbone"].append(time.thread_time() - start)
        finally:
            fused_inference._DECONV_RELU = onednn
    for a, b in zip(*outputs.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if fused_inference._DECONV_RELU is None:
        raise SystemExit("this torch build has no oneDNN deconv with a fused ReLU: nothing to compare")
    print("| config | deblocks: oneDNN deconv+ReLU / deconv, relu_ (ms) | backbone: same (ms) |")
    print("|---|---:|---:|")
    for cfg_file in GRIDS["kitti"]:
        t = time_backbone(cfg_file, args.repeat)
        a, b = FORMS
        print(
            f"| {cfg_file.split('/')[-1]} | {t[a]:.1f} / {t[b]:.1f} | {t[f'{a}_backbone']:.1f} / "
            f"{t[f'{b}_backbone']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
