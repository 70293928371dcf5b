"""pcdet.ops.pointnet2.pointnet2_batch against naive numpy references: farthest point sampling, ball query,
grouping / gather, three_nn / three_interpolate (values, index order, padding, ties, edge cases, gradients), and
the SA / FP modules' state-dict keys and shapes against OpenPCDet's PointRCNN checkpoint listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.ops.pointnet2.pointnet2_batch import pointnet2_modules as modules
from pcdet.ops.pointnet2.pointnet2_batch import pointnet2_utils as pn2

KEYS_TSV = Path("/work/shared/reference/openpcdet/pointrcnn.keys.tsv")


def _sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances from point ``a`` (3,) to rows of ``b`` (n, 3), summed x, y, z, in their dtype."""
    d = a - b
    return d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]


def naive_fps(pts: np.ndarray, npoint: int) -> list[int]:
    chosen, dist = [0], np.full(len(pts), 1e10, dtype=pts.dtype)
    for _ in range(1, npoint):
        dist = np.minimum(dist, _sq(pts[chosen[-1]], pts))
        chosen.append(int(np.argmax(dist)))
    return chosen


def naive_ball_query(pts: np.ndarray, centres: np.ndarray, radius: float, nsample: int) -> np.ndarray:
    r2 = pts.dtype.type(radius) * pts.dtype.type(radius)
    out = np.zeros((len(centres), nsample), dtype=np.int64)
    for m, c in enumerate(centres):
        found = [k for k in range(len(pts)) if _sq(c, pts[k : k + 1])[0] < r2][:nsample]
        if found:
            out[m] = found + [found[0]] * (nsample - len(found))
    return out


def naive_three_nn(unknown: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = np.full((len(unknown), 3), np.inf)
    idx = np.zeros((len(unknown), 3), dtype=np.int64)
    for i, u in enumerate(unknown):
        d2 = _sq(u, known)
        order = np.argsort(d2, kind="stable")[:3]  # nearest first, lower index on a tie
        dist[i, : len(order)], idx[i, : len(order)] = np.sqrt(d2[order]), order
    return dist, idx


def clustered_cloud(rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
    """Points around a few centres, so balls hold from none to many points."""
    centres = rng.uniform(-2, 2, (batch, 5, 3))
    pick = rng.integers(0, 5, (batch, n))
    return (np.take_along_axis(centres, pick[..., None], 1) + rng.normal(0, 0.3, (batch, n, 3))).astype(np.float32)


@pytest.fixture
def cloud() -> np.ndarray:
    return clustered_cloud(np.random.default_rng(0), 2, 300)


def test_fps_equals_plain_loop(cloud, device):
    idx = pn2.farthest_point_sample(torch.from_numpy(cloud).to(device), 64)
    assert idx.dtype == torch.int32 and idx.shape == (2, 64) and idx.device.type == device.type
    for b in range(2):
        assert idx[b].tolist() == naive_fps(cloud[b], 64)


def test_fps_fewer_points_than_npoint_repeats_index_0(device):
    pts = np.random.default_rng(1).normal(size=(1, 5, 3)).astype(np.float32)
    pts[0, 3] = pts[0, 1]  # a duplicate: only 4 distinct points
    idx = pn2.farthest_point_sample(torch.from_numpy(pts).to(device), 8)[0].tolist()
    assert idx == naive_fps(pts[0], 8)
    assert sorted(idx[:4]) == [0, 1, 2, 4] and idx[4:] == [0, 0, 0, 0]  # tie: the lower index
    with pytest.raises(ValueError):
        pn2.farthest_point_sample(torch.zeros(1, 0, 3, device=device), 4)


@pytest.mark.parametrize("radius, nsample", [(0.15, 4), (0.4, 16), (1.0, 32)])
def test_ball_query_equals_brute_force(cloud, device, radius, nsample):
    centres = np.concatenate([cloud[:, :40], np.full((2, 2, 3), 50, np.float32)], axis=1)  # 2 empty balls each
    idx = pn2.ball_query(radius, nsample, torch.from_numpy(cloud).to(device), torch.from_numpy(centres).to(device))
    assert idx.dtype == torch.int32 and idx.shape == (2, 42, nsample)
    for b in range(2):
        np.testing.assert_array_equal(idx[b].cpu().numpy(), naive_ball_query(cloud[b], centres[b], radius, nsample))
    assert (idx[:, -2:] == 0).all()  # no neighbour: all zeros, as OpenPCDet
    counts = [len(set(row)) for row in idx[:, :40].reshape(-1, nsample).tolist()]
    assert min(counts) < nsample  # some balls are padded with their first index


def test_ball_query_boundary_is_strict_and_radius_checked(device):
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.25, 0.0, 0.0]]], device=device)
    idx = pn2.ball_query(0.5, 3, pts, pts[:, :1])
    assert idx[0, 0].tolist() == [0, 2, 0]  # the point at exactly the radius is out
    with pytest.raises(ValueError):
        pn2.ball_query(0.0, 4, pts, pts)


def test_torch_formulations_equal_cpu_kernels():
    """The PyTorch searches (what runs on CUDA) give the numba kernels' indices, on a bigger cloud."""
    pts = torch.from_numpy(clustered_cloud(np.random.default_rng(2), 2, 3000))
    assert torch.equal(pn2._fps_torch(pts, 200), pn2.farthest_point_sample(pts, 200))
    centres = pts[:, ::7].contiguous()
    for radius, nsample in [(0.1, 16), (0.5, 32)]:
        torch_idx = pn2._ball_query_torch(pn2._radius2(radius, pts.dtype), nsample, pts, centres)
        assert torch.equal(torch_idx, pn2.ball_query(radius, nsample, pts, centres))
    known = torch.cat([centres, centres[:, :50]], dim=1)  # duplicates: distance ties
    d_torch, i_torch = pn2._three_nn_torch(pts, known)
    d_cpu, i_cpu = pn2._three_nn_cpu(pts, known)
    assert torch.equal(i_torch, i_cpu) and torch.equal(d_torch, d_cpu)


def test_grouping_and_gather_equal_indexing(device):
    rng = np.random.default_rng(3)
    feats = torch.from_numpy(rng.normal(size=(2, 5, 30)).astype(np.float32)).to(device)
    idx = torch.from_numpy(rng.integers(0, 30, (2, 7, 4))).int().to(device)
    grouped = pn2.grouping_operation(feats, idx)
    assert grouped.shape == (2, 5, 7, 4)
    for b in range(2):
        assert torch.equal(grouped[b], feats[b][:, idx[b].long()])
        assert torch.equal(pn2.gather_operation(feats, idx[:, :, 0])[b], feats[b][:, idx[b, :, 0].long()])


def test_three_nn_and_interpolate_equal_brute_force(cloud, device):
    unknown, known = cloud[:, :120], np.concatenate([cloud[:, 120:200], cloud[:, 150:160]], axis=1)  # ties
    dist, idx = pn2.three_nn(torch.from_numpy(unknown).to(device), torch.from_numpy(known).to(device))
    assert idx.dtype == torch.int32 and dist.shape == idx.shape == (2, 120, 3)
    feats = np.random.default_rng(4).normal(size=(2, 6, known.shape[1])).astype(np.float32)
    weight = np.random.default_rng(5).random((2, 120, 3)).astype(np.float32)
    out = pn2.three_interpolate(torch.from_numpy(feats).to(device), idx, torch.from_numpy(weight).to(device))
    for b in range(2):
        ref_dist, ref_idx = naive_three_nn(unknown[b], known[b])
        np.testing.assert_array_equal(idx[b].cpu().numpy(), ref_idx)
        np.testing.assert_allclose(dist[b].cpu().numpy(), ref_dist, rtol=1e-6)
        ref = (feats[b][:, ref_idx] * weight[b][None]).sum(-1)
        np.testing.assert_allclose(out[b].cpu().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_three_nn_fewer_than_three_known(device):
    unknown = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]], device=device)
    dist, idx = pn2.three_nn(unknown, torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]], device=device))
    assert idx.tolist() == [[[1, 0, 0], [1, 0, 0]]]
    assert dist[0, 0].tolist() == [1.0, 5.0, float("inf")]
    with pytest.raises(ValueError):
        pn2.three_nn(unknown, torch.zeros(1, 0, 3, device=device))


def test_gradients(device):
    rng = np.random.default_rng(6)
    feats = torch.from_numpy(rng.normal(size=(2, 3, 6))).to(device).requires_grad_()
    idx = torch.from_numpy(rng.integers(0, 6, (2, 4, 3))).int().to(device)  # repeated indices: gradients add up
    weight = torch.from_numpy(rng.random((2, 4, 3))).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: pn2.grouping_operation(f, idx), (feats,))
    assert torch.autograd.gradcheck(lambda f: pn2.gather_operation(f, idx[:, :, 0]), (feats,))
    assert torch.autograd.gradcheck(lambda f, w: pn2.three_interpolate(f, idx, w), (feats, weight))


def test_query_and_group_and_group_all(cloud, device):
    xyz = torch.from_numpy(cloud).to(device)
    feats = torch.randn(2, 4, 300, device=device)
    centres = xyz[:, :16]
    grouped = pn2.QueryAndGroup(0.4, 8)(xyz, centres, feats)
    idx = pn2.ball_query(0.4, 8, xyz, centres).long()
    assert grouped.shape == (2, 7, 16, 8)
    for b in range(2):
        assert torch.equal(grouped[b, :3], (xyz[b][idx[b]] - centres[b][:, None]).permute(2, 0, 1))
        assert torch.equal(grouped[b, 3:], feats[b][:, idx[b]])
    assert pn2.QueryAndGroup(0.4, 8, use_xyz=False)(xyz, centres, feats).shape == (2, 4, 16, 8)
    everything = pn2.GroupAll()(xyz, None, feats)
    assert torch.equal(everything, torch.cat([xyz.transpose(1, 2), feats], 1).unsqueeze(2))


def test_sa_and_fp_modules_forward(cloud, device):
    torch.manual_seed(0)
    sa = modules.PointnetSAModuleMSG(npoint=32, radii=[0.3, 0.8], nsamples=[8, 16], mlps=[[1, 8, 16], [1, 8, 24]])
    sa_all = modules.PointnetSAModule(mlp=[40, 32], npoint=None)
    fp = modules.PointnetFPModule(mlp=[40 + 1, 16])
    xyz, feats = torch.from_numpy(cloud), torch.randn(2, 1, 300)
    new_xyz, new_feats = sa(xyz, feats)
    assert new_xyz.shape == (2, 32, 3) and new_feats.shape == (2, 40, 32)
    assert torch.equal(new_xyz[0], xyz[0][naive_fps(cloud[0], 32)])
    assert sa_all(new_xyz, new_feats)[1].shape == (2, 32, 1)
    up = fp(xyz, new_xyz, feats, new_feats)
    assert up.shape == (2, 16, 300)
    up.sum().backward()  # trains end to end
    assert sa.mlps[0][0].weight.grad is not None and fp.mlp[0].weight.grad is not None
    sa.eval(), fp.eval()
    with torch.no_grad():
        ref_xyz, ref_feats = sa(xyz, feats)
        ref_up = fp(xyz, ref_xyz, feats, ref_feats)
        sa.to(device), fp.to(device)
        dev_xyz, dev_feats = sa(xyz.to(device), feats.to(device))
        dev_up = fp(xyz.to(device), dev_xyz, feats.to(device), dev_feats)
    torch.testing.assert_close(dev_xyz.cpu(), ref_xyz)
    torch.testing.assert_close(dev_feats.cpu(), ref_feats, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dev_up.cpu(), ref_up, rtol=1e-4, atol=1e-5)


def _pointnet2_msg() -> torch.nn.Module:
    """PointNet2MSG's SA / FP layers as OpenPCDet builds them from pointrcnn.yaml's BACKBONE_3D (4 input channels)."""
    npoints, radius = [4096, 1024, 256, 64], [[0.1, 0.5], [0.5, 1.0], [1.0, 2.0], [2.0, 4.0]]
    mlps = [[[16, 16, 32], [32, 32, 64]], [[64, 64, 128], [64, 96, 128]]]
    mlps += [[[128, 196, 256], [128, 196, 256]], [[256, 256, 512], [256, 384, 512]]]
    fp_mlps = [[128, 128], [256, 256], [512, 512], [512, 512]]
    net = torch.nn.Module()
    net.SA_modules, net.FP_modules = torch.nn.ModuleList(), torch.nn.ModuleList()
    skip, channel_in = [1], 1
    for k in range(4):
        specs = [[channel_in] + spec for spec in mlps[k]]
        net.SA_modules.append(
            modules.PointnetSAModuleMSG(npoint=npoints[k], radii=radius[k], nsamples=[16, 32], mlps=specs)
        )
        channel_in = sum(spec[-1] for spec in specs)
        skip.append(channel_in)
    for k in range(4):
        pre = fp_mlps[k + 1][-1] if k + 1 < 4 else channel_in
        net.FP_modules.append(modules.PointnetFPModule(mlp=[pre + skip[k]] + fp_mlps[k]))
    return net


def _roi_head_sa() -> torch.nn.Module:
    """PointRCNNHead's SA layers from pointrcnn.yaml's ROI_HEAD.SA_CONFIG (USE_BN: False)."""
    head, channel_in = torch.nn.Module(), 128
    head.SA_modules = torch.nn.ModuleList()
    for npoint, radius, mlp in [(128, 0.2, [128, 128, 128]), (32, 0.4, [128, 128, 256]), (None, 100, [256, 256, 512])]:
        head.SA_modules.append(
            modules.PointnetSAModule(npoint=npoint, radius=radius, nsample=16, mlp=[channel_in] + mlp, bn=False)
        )
        channel_in = mlp[-1]
    return head


@pytest.mark.skipif(not KEYS_TSV.exists(), reason="needs /work/shared/reference/openpcdet/pointrcnn.keys.tsv")
@pytest.mark.parametrize("prefix, build", [("backbone_3d", _pointnet2_msg), ("roi_head", _roi_head_sa)])
def test_state_dict_matches_openpcdet_pointrcnn(prefix, build):
    expected = {}
    for line in KEYS_TSV.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        if key.startswith((f"{prefix}.SA_modules.", f"{prefix}.FP_modules.")):
            expected[key] = (tuple(int(s) for s in shape.split(",") if s), dtype)
    got = {
        f"{prefix}.{k}": (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in build().state_dict().items()
    }
    assert expected and got == expected
