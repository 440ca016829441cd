"""GLB colours in a real glTF client: three.js's GLTFLoader in headless Chromium.

Writes the bundled generator's mesh for PROMPT as .ply (display colours, the reference) and .glb (the current
export, linear COLOR_0), plus before.glb (the same mesh written the old way: sRGB values in COLOR_0), renders
both GLBs side by side (page.html: white ambient light of intensity pi, so a correct file shows its albedo
unchanged), saves the screenshot and compares the red object's median pixel with the median display colour of
the mesh's red vertices.

Needs chromium (Debian: `apt-get install chromium`) and three.js from npm in a folder outside the repo:
    mkdir /tmp/viewer && (cd /tmp/viewer && npm install three@0.170.0)
    python bench/probes/glb_viewer/check.py --npm-dir /tmp/viewer --out docs/glb_colours.png
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _meshes(prompt: str, folder: Path) -> None:
    """after.glb and mesh.ply through the real CLI; before.glb = the old export path (sRGB bytes as COLOR_0)."""
    import trimesh
    from trimesh.exchange.gltf import export_glb

    from asdcli.mesh.export import finish_gltf_tree, to_trimesh
    from asdcli.mesh.isosurface import Mesh

    for name in ("after.glb", "mesh.ply"):
        subprocess.run([sys.executable, "-m", "asdcli", "generate", prompt, "--out", str(folder / name), "-q"],
                       check=True)
    ply = trimesh.load(folder / "mesh.ply", process=False)
    mesh = Mesh(np.asarray(ply.vertices, np.float32), np.asarray(ply.faces), ply.visual.vertex_colors[:, :3])
    old = export_glb(to_trimesh(mesh, y_up=True).scene(), include_normals=True, tree_postprocessor=finish_gltf_tree)
    (folder / "before.glb").write_bytes(old)


def _screenshot(folder: Path, png: Path, size: tuple[int, int]) -> None:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--use-angle=swiftshader",
                        "--enable-unsafe-swiftshader", "--hide-scrollbars", f"--window-size={size[0]},{size[1]}",
                        "--virtual-time-budget=30000", f"--screenshot={png}",
                        f"http://127.0.0.1:{server.server_address[1]}/page.html"],
                       check=True, capture_output=True, timeout=180)
    finally:
        server.shutdown()


def _red(pixels: np.ndarray) -> np.ndarray:
    """The reddish ones of uint8 colours [N, 3]: red channel well above green and blue."""
    p = pixels.astype(int)
    return pixels[(p[:, 0] > p[:, 1] + 40) & (p[:, 0] > p[:, 2] + 40)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--npm-dir", type=Path, required=True, help="folder holding node_modules/three")
    ap.add_argument("--out", type=Path, default=Path("docs/glb_colours.png"))
    ap.add_argument("--prompt", default="a red cube on top of a blue sphere")
    ap.add_argument("--tolerance", type=float, default=12.0, help="max |median pixel - median vertex| per channel")
    args = ap.parse_args()
    import imageio.v3 as iio
    import trimesh

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _meshes(args.prompt, folder)
        shutil.copy(HERE / "page.html", folder / "page.html")
        (folder / "node_modules").symlink_to(args.npm_dir.resolve() / "node_modules")
        shot = folder / "shot.png"
        _screenshot(folder, shot, (640, 320))
        image = iio.imread(shot)[..., :3]
        vertices = trimesh.load(folder / "mesh.ply", process=False).visual.vertex_colors[:, :3]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, image, extension=".png", optimize=True)
    want = np.median(_red(vertices), axis=0)
    print(f"intended red (median of the mesh's red vertices, sRGB): {want.round(1).tolist()}")
    worst = 0.0
    for name, half in (("before (sRGB in COLOR_0)", image[:, :320]), ("after (linear COLOR_0)", image[:, 320:])):
        got = np.median(_red(half.reshape(-1, 3)), axis=0)
        err = float(np.abs(got - want).max())
        print(f"{name}: rendered red median {got.round(1).tolist()}, max channel error {err:.1f}")
        worst = err if name.startswith("after") else worst
    print(f"screenshot: {args.out}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
