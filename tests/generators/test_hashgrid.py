"""The pure-PyTorch hash grid: tcnn's layout and sizes, exact vertices, trilinear continuity, backends."""

import pytest
import torch

from asdcli.generators.hashgrid import HashGrid, HashGridConfig, level_layout

SMALL = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=9, base_resolution=4,
                       per_level_scale=2.0, backend="torch")


def grid_with_random_table(cfg=SMALL):
    torch.manual_seed(0)
    g = HashGrid(cfg)
    with torch.no_grad():
        g.table.normal_()
    return g


def test_paper_layout_matches_tcnn_formula():
    levels = level_layout(HashGridConfig())
    assert [lv[1] for lv in levels[:5]] == [16, 24, 34, 49, 71]  # res = ⌈16·1.4473^l − 1⌉ + 1
    assert not any(lv[3] for lv in levels[:5]) and all(lv[3] for lv in levels[5:])
    assert levels[-1][1] == 4098  # finest ≈ 4096
    with torch.device("meta"):
        n = sum(p.numel() for p in HashGrid(HashGridConfig(backend="torch")).parameters())
    assert n == 12_599_920  # the reference's 12.60M


def test_vertex_of_dense_level_returns_its_features():
    g = grid_with_random_table()
    scale, res, _, hashed = g.levels[0]
    assert not hashed and res == 4
    vertex = torch.tensor([1, 2, 3])
    x = ((vertex.float() - 0.5) / scale)[None]  # x·scale + 0.5 lands exactly on the vertex
    expected = g.table[vertex[0] + vertex[1] * res + vertex[2] * res * res]
    torch.testing.assert_close(g(x)[0, :2], expected, atol=1e-5, rtol=0)


def test_vertex_of_hashed_level_uses_xor_prime_hash():
    g = grid_with_random_table()
    scale, res, size, hashed = g.levels[2]
    assert hashed and res**3 > size
    vertex = [5, 9, 13]
    h = (vertex[0] * 1) ^ ((vertex[1] * 2654435761) & 0xFFFFFFFF) ^ ((vertex[2] * 805459861) & 0xFFFFFFFF)
    x = ((torch.tensor(vertex).float() - 0.5) / scale)[None]
    expected = g.table[g.offsets[2] + h % size]
    torch.testing.assert_close(g(x)[0, 4:6], expected, atol=1e-5, rtol=0)


def test_trilinear_continuity_and_linearity():
    g = grid_with_random_table()
    t = torch.linspace(0.05, 0.95, 2001)
    line = torch.stack([t, 0.3 + 0.2 * t, 0.7 - 0.4 * t], dim=-1)
    out = g(line)
    jumps = (out[1:] - out[:-1]).abs().max()
    assert jumps < 0.2  # finest level: ~4 table values of O(1) per 1/16 step over 2000 samples → tiny steps
    scale = g.levels[0][0]
    a = (torch.tensor([[1.0, 1.0, 1.0]]) - 0.5) / scale
    b = (torch.tensor([[2.0, 1.0, 1.0]]) - 0.5) / scale
    mid = g((a + b) / 2)[:, :2]
    torch.testing.assert_close(mid, (g(a)[:, :2] + g(b)[:, :2]) / 2, atol=1e-5, rtol=0)


def test_second_order_gradients_reach_the_table():
    g = grid_with_random_table()
    x = torch.rand(64, 3, requires_grad=True)
    y = g(x).sum()
    (dx,) = torch.autograd.grad(y, x, create_graph=True)
    ((dx.norm(dim=-1) - 1) ** 2).mean().backward()
    assert g.table.grad is not None and g.table.grad.abs().sum() > 0


def test_state_dict_from_tcnn_layout_and_backend_errors():
    g = grid_with_random_table()
    flat = {"tcnn.params": g.table.detach().reshape(-1).clone() * 2}
    other = HashGrid(SMALL)
    other.load_state_dict(flat)
    torch.testing.assert_close(other.table, g.table.detach() * 2)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            HashGrid(HashGridConfig(backend="tcnn"))


@pytest.mark.gpu
def test_tcnn_and_torch_agree():
    tcnn = pytest.importorskip("tinycudann")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    del tcnn
    cfg = HashGridConfig(backend="tcnn")
    fast = HashGrid(cfg).cuda()
    ref = HashGrid(HashGridConfig(backend="torch")).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(100_000, 3, device="cuda")
    torch.testing.assert_close(fast(x), ref(x), atol=1e-4, rtol=1e-3)
