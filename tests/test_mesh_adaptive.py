"""Coarse-to-fine SDF sampling gives the same inside/outside and the same values near the surface as the
full grid, while querying a fraction of the points."""

import numpy as np
import torch

from asdcli.mesh.adaptive import sample_sdf_coarse_to_fine
from asdcli.mesh.grid import sample_grid
from asdcli.mesh.isosurface import extract_mesh


def torus_and_sphere(points):
    q = torch.stack([torch.sqrt(points[:, 0] ** 2 + points[:, 1] ** 2) - 0.5, points[:, 2]], -1)
    d = torch.minimum(q.norm(dim=-1) - 0.12, (points - torch.tensor([0.0, 0.0, 0.4])).norm(dim=-1) - 0.3)
    return d, points.abs().clamp(0, 1)


def test_matches_full_grid_near_surface_and_in_sign():
    for res in (33, 64, 96):
        full = sample_grid(torus_and_sphere, res, 1.0)
        fast, queried = sample_sdf_coarse_to_fine(torus_and_sphere, res, 1.0)
        assert np.array_equal(full < 0, fast < 0)
        near = np.abs(full) < 2.5 * (2.0 / (res - 1))
        np.testing.assert_allclose(fast[near], full[near], atol=1e-6)
    assert queried < 0.45


def test_triplane_field_same_mesh():
    from asdcli.conditioning import TextEmbeddings
    from asdcli.generators.triplane import TriplaneConfig, TriplaneGenerator

    torch.manual_seed(1)
    gen = TriplaneGenerator(TriplaneConfig())
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a bumpy, non-spherical field
        state = gen(TextEmbeddings(torch.randn(1, 8, 32), torch.randn(1, 32)))

    def fn(points):
        out = gen.query(state, points[None])
        return out.value[0], gen.rgb(out.features[0])

    full = sample_grid(fn, 48, 1.0)
    fast, _ = sample_sdf_coarse_to_fine(fn, 48, 1.0)
    assert np.array_equal(full < 0, fast < 0)
    mesh = extract_mesh(fn, 48, 1.0, "sdf")
    assert mesh.num_faces > 0
