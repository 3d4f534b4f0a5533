"""Tiled inspection: the grid, cut and stitch against naive numpy references (exact or 1e-6 relative,
float32 accumulation), the tiling block in the hashed contract, and a tiny tiled PatchCore artifact end
to end through ad-export's fit and ad-run on real files (scikit-image brick texture)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomedge.errors import ArtifactError, InputError
from anomedge.runtime.tiling import MAX_TILES, Stitcher, TilingSpec, cut, grid, starts, stitch, weights


# --- grid and cut -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap,expected", [
    (448, 224, 32, [0, 192, 224]), (224, 224, 32, [0]), (1000, 224, 0, [0, 224, 448, 672, 776]),
    (256, 128, 32, [0, 96, 128]), (300, 100, 50, [0, 50, 100, 150, 200])])
def test_starts_are_edge_aligned(length, tile, overlap, expected):
    assert starts(length, tile, tile - overlap).tolist() == expected


@pytest.mark.parametrize("size", [(300, 517), (224, 224), (1024, 640)])
def test_grid_covers_every_pixel_and_stays_inside(size):
    spec = TilingSpec(224, 32)
    origins = grid(*size, spec)
    cover = np.zeros(size, int)
    for y, x in origins:  # naive reference: paint every tile
        assert 0 <= y <= size[0] - 224 and 0 <= x <= size[1] - 224
        cover[y:y + 224, x:x + 224] += 1
    assert cover.min() >= 1
    assert origins[:, 0].max() == size[0] - 224 and origins[:, 1].max() == size[1] - 224  # flush with the edge


def test_cut_matches_slicing():
    frame = np.random.default_rng(0).integers(0, 256, (150, 210, 3), dtype=np.uint8)
    tiles, origins = cut(frame, TilingSpec(64, 16))
    assert tiles.shape == (len(origins), 64, 64, 3) and tiles.dtype == np.uint8
    for tile, (y, x) in zip(tiles, origins):
        np.testing.assert_array_equal(tile, frame[y:y + 64, x:x + 64])


@pytest.mark.parametrize("kwargs,words", [
    ({"tile": 8}, "--tile"), ({"tile": 64, "overlap": 40}, "--overlap"), ({"tile": 64, "blend": "mean"}, "--tile-blend"),
    ({"tile": 64, "mode": "per_position"}, "not supported"), ({"tile": 64, "mode": "x"}, "--tile-mode")])
def test_bad_specs_are_one_line_input_errors(kwargs, words):
    with pytest.raises(InputError, match=words):
        TilingSpec(**kwargs)


def test_bounds():
    with pytest.raises(InputError, match="shorter than the tile"):
        grid(100, 300, TilingSpec(128))
    with pytest.raises(InputError, match=f"more than {MAX_TILES}"):
        grid(16 * 129, 16 * 129, TilingSpec(16))


# --- stitch ---------------------------------------------------------------------------------------------

def naive_stitch(maps, origins, size, tile, overlap, blend):
    """Per pixel: the weighted mean (or max) over the tiles covering it, with the ramp written out."""
    ramp = [min(1.0, (i + 0.5) / overlap, (tile - i - 0.5) / overlap) if overlap else 1.0 for i in range(tile)]
    out = np.zeros(size)
    for py in range(size[0]):
        for px in range(size[1]):
            vals, ws = [], []
            for m, (y, x) in zip(maps, origins):
                if y <= py < y + tile and x <= px < x + tile:
                    vals.append(m[py - y, px - x])
                    ws.append(ramp[py - y] * ramp[px - x])
            out[py, px] = max(vals) if blend == "max" else np.dot(vals, ws) / sum(ws)
    return out


@pytest.mark.parametrize("blend", ["linear", "max"])
def test_stitch_matches_naive_reference(blend):
    spec = TilingSpec(16, 6, blend)
    size = (40, 29)
    origins = grid(*size, spec)
    maps = np.random.default_rng(1).random((len(origins), 16, 16)).astype(np.float32)
    np.testing.assert_allclose(stitch(maps, origins, size, spec), naive_stitch(maps, origins, size, 16, 6, blend),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("blend", ["linear", "max"])
def test_constant_maps_stitch_to_the_constant(blend):
    spec = TilingSpec(64, 32, blend)
    origins = grid(200, 333, spec)
    out = stitch(np.full((len(origins), 64, 64), 3.25, np.float32), origins, (200, 333), spec)
    np.testing.assert_allclose(out, 3.25, rtol=1e-6)


def test_hot_pixel_lands_at_its_frame_coordinate():
    spec = TilingSpec(64, 16, "max")
    origins = grid(150, 170, spec)
    maps = np.zeros((len(origins), 64, 64), np.float32)
    index = 4
    maps[index, 10, 50] = 7.0
    out = stitch(maps, origins, (150, 170), spec)
    y, x = np.unravel_index(out.argmax(), out.shape)
    assert (y, x) == (origins[index][0] + 10, origins[index][1] + 50) and out.max() == 7.0
    linear = stitch(maps, origins, (150, 170), TilingSpec(64, 16, "linear"))
    assert np.unravel_index(linear.argmax(), linear.shape) == (y, x)


def test_weights_sum_like_the_naive_coverage():
    spec = TilingSpec(32, 8)
    size = (70, 90)
    origins = grid(*size, spec)
    w = weights(32, 8)
    assert w.min() > 0 and w.max() == 1.0 and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    stitcher = Stitcher(size, spec)
    stitcher.add(np.ones((len(origins), 32, 32), np.float32), origins)
    norm = np.zeros(size)
    for y, x in origins:
        norm[y:y + 32, x:x + 32] += w
    np.testing.assert_allclose(stitcher.norm, norm, rtol=1e-6)


def test_maps_at_model_resolution_are_resized_to_the_tile():
    spec = TilingSpec(64, 0)
    origins = grid(64, 128, spec)
    small = np.stack([np.full((16, 16), 1.0), np.full((16, 16), 2.0)]).astype(np.float32)
    out = stitch(small, origins, (64, 128), spec)
    assert out.shape == (64, 128) and np.all(out[:, :64] == 1.0) and np.all(out[:, 64:] == 2.0)


# --- fit on tiles ---------------------------------------------------------------------------------------

def test_write_tiles_writes_the_grid_losslessly_and_caps(tmp_path):
    from anomedge.export.fit import write_tiles

    rng = np.random.default_rng(2)
    paths = []
    for i in range(2):
        p = tmp_path / f"f{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (100, 130), dtype=np.uint8))
        paths.append(p)
    spec, folder = TilingSpec(48, 16), tmp_path / "t"
    folder.mkdir()
    out, record = write_tiles(paths, spec, folder, progress=False)
    tiles, origins = cut(cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED), spec)
    assert record == {"n_fit_tiles": 2 * len(tiles), "fit_frames": 2, "fit_frame_size": [100, 130]}
    np.testing.assert_array_equal(cv2.imread(str(out[1]), cv2.IMREAD_UNCHANGED), tiles[1])
    capped, record = write_tiles(paths, spec, folder, max_tiles=5, progress=False)
    assert record["n_fit_tiles"] == 4 == len(capped)  # 5 // 2 images = 2 tiles each


# --- a tiny tiled artifact end to end -------------------------------------------------------------------

TILE, FRAME = 64, 128
DEFECT_CENTRE, DEFECT_RADIUS = (97, 30), 6  # (x, y) frame pixels


def brick_frames(folder: Path, slots) -> list[Path]:
    from anomedge.datasets.synthetic import SyntheticTexture

    folder.mkdir(parents=True, exist_ok=True)
    tex = SyntheticTexture("brick", FRAME, seed=3)
    paths = []
    for k in slots:
        p = folder / f"{k:03d}.png"
        cv2.imwrite(str(p), tex.clean(k))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """PatchCore, 64 px input, fitted on the 64 px tiles (overlap 16) of 16 brick frames of 128 px; the
    default threshold from 8 held-out frames (72 tiles)."""
    from anomedge.export.fit import fit_and_export

    root = tmp_path_factory.mktemp("tiled")
    train = brick_frames(root / "train", range(24))
    report = fit_and_export(train, "patchcore", {"image_size": TILE, "coreset_fraction": 0.25}, root / "artifact",
                            holdout=1 / 3, progress=False, tiling=TilingSpec(TILE, 16))
    return report, root


def test_tiling_block_is_recorded_and_hashed(tiled, tmp_path):
    from anomedge.artifact import Artifact

    report, _ = tiled
    meta = report.artifact.metadata
    assert meta.tiling == {"tile": TILE, "overlap": 16, "blend": "linear", "mode": "shared", "n_fit_tiles": 16 * 9,
                           "fit_frames": 16, "fit_frame_size": [FRAME, FRAME]}
    assert meta.thresholds["params"]["n_good"] == 8 and "tiling" in meta.spec_sha256
    copy = tmp_path / "a"
    shutil.copytree(report.artifact.root, copy, ignore=shutil.ignore_patterns(".cache"))
    raw = json.loads((copy / "metadata.json").read_text())
    raw["tiling"]["overlap"] = 0
    (copy / "metadata.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="block 'tiling' changed since export"):
        Artifact.load(copy)


def test_inspector_tiles_in_bounded_batches_with_the_same_result(tiled):
    from anomedge.runtime.pipeline import Inspector

    report, root = tiled
    frame = cv2.imread(str(root / "train" / "000.png"), cv2.IMREAD_UNCHANGED)
    with Inspector(report.artifact, max_tile_batch=16) as big, Inspector(report.artifact, max_tile_batch=2) as small:
        a, b = big.inspect([frame]), small.inspect([frame])
        tiles, origins = cut(frame, TilingSpec(TILE, 16))
        one = big.inspect(list(tiles), tiled=False)
    assert a.maps.shape == (1, FRAME, FRAME)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-5)
    # reference: the tiles as one plain batch, max over tile scores, stitched by the naive reference
    assert a.scores[0] == pytest.approx(one.scores.max(), rel=1e-5)
    np.testing.assert_allclose(a.maps[0], naive_stitch(one.maps, origins, (FRAME, FRAME), TILE, 16, "linear"),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="--max-tile-batch"):
        Inspector(report.artifact, max_tile_batch=0)


def ad(tool, *args):
    code = f"from anomedge.cli.{tool} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_ad_run_boxes_a_drawn_defect_in_frame_pixels_and_passes_a_clean_frame(tiled, tmp_path):
    report, root = tiled
    line = tmp_path / "line"
    clean, base = brick_frames(line, [40, 41])
    image = cv2.imread(str(base), cv2.IMREAD_UNCHANGED)
    cv2.circle(image, DEFECT_CENTRE, DEFECT_RADIUS, 0, -1)
    cv2.imwrite(str(line / "defect.png"), image)
    base.unlink()
    out = tmp_path / "d.jsonl"
    result = ad("run", report.artifact.root, "--source", line, "--jsonl", out, "--max-tile-batch", "4", "--quiet")
    assert result.returncode == 0, result.stderr
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    threshold = report.threshold
    assert records[clean.name]["label"] == "OK", (records[clean.name]["score"], threshold)
    defect = records["defect.png"]
    assert defect["label"] == "NG" and defect["score"] > threshold
    x, y, w, h = defect["boxes"][0]
    cx, cy = DEFECT_CENTRE
    assert x <= cx < x + w and y <= cy < y + h  # the box covers the defect, in frame (not tile) pixels
    assert w * h < FRAME * FRAME / 4


def test_ad_verify_passes_on_the_tiled_artifact(tiled):
    result = ad("verify", tiled[0].artifact.root, "--backend", "onnxruntime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass" in result.stdout


def test_ignore_mask_on_a_tiled_artifact_is_refused(tiled, tmp_path):
    from anomedge.artifact import Artifact
    from anomedge.cli.mask import write_mask
    from anomedge.runtime.pipeline import Inspector

    copy = tmp_path / "a"
    shutil.copytree(tiled[0].artifact.root, copy, ignore=shutil.ignore_patterns(".cache"))
    mask = np.zeros((TILE, TILE), np.uint8)
    mask[:8] = 1
    write_mask(copy, mask)
    with pytest.raises(InputError, match="ignore mask on a tiled artifact"):
        Inspector(Artifact.load(copy))
