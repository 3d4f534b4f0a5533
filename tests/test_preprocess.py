import cv2
import numpy as np
import pytest

from anomedge.artifact import InputSpec
from anomedge.errors import InputError
from anomedge.runtime.preprocess import preprocess, read_image, to_rgb_float

torch = pytest.importorskip("torch")
from anomedge.runtime.backends.torch_ref import _to_rgb_tensor  # noqa: E402


def _torch_preprocess(frame, spec):
    import torch.nn.functional as F

    image = _to_rgb_tensor(frame)[None]
    image = F.interpolate(image, size=(spec.height, spec.width), mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    return ((image - mean) / std).numpy()


@pytest.mark.parametrize("size", [(224, 224), (256, 320), (512, 512)])
def test_opencv_matches_torch_on_real_gray_cells(elpv_paths, size):
    """Normalised tensors agree to 1e-5 absolute (std 0.5: 1e-5 ≈ 0.0013 grey levels)."""
    spec = InputSpec("image", *size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    frames = [read_image(p) for p in elpv_paths[:4]]
    assert frames[0].ndim == 2  # ELPV cells are 8-bit grayscale
    ours = preprocess(frames, spec)
    ref = np.concatenate([_torch_preprocess(f, spec) for f in frames])
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_opencv_matches_torch_on_real_color_photo(chelsea_bgr):
    """1e-5 on the [0,1] pixel scale (ImageNet std divides by ~0.23, so compare before that division)."""
    spec = InputSpec("image", 224, 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    ours, ref = preprocess([chelsea_bgr], spec) * std, _torch_preprocess(chelsea_bgr, spec) * std
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_channel_layouts_agree(chelsea_bgr):
    gray = cv2.cvtColor(chelsea_bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(to_rgb_float(gray), to_rgb_float(gray[:, :, None]))
    np.testing.assert_array_equal(to_rgb_float(gray)[:, :, 0], gray.astype(np.float32))
    bgra = cv2.cvtColor(chelsea_bgr, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(to_rgb_float(bgra), to_rgb_float(chelsea_bgr))
    np.testing.assert_array_equal(to_rgb_float(chelsea_bgr)[:, :, 0], chelsea_bgr[:, :, 2].astype(np.float32))
    wide = chelsea_bgr.astype(np.uint16) * 257  # 16-bit frame of the same picture
    np.testing.assert_allclose(to_rgb_float(wide), to_rgb_float(chelsea_bgr), atol=1e-3)


@pytest.mark.parametrize("frame, message", [
    (np.zeros((8, 8, 2), np.uint8), "expected \\(H,W\\) gray"),
    (np.zeros((8, 8, 3), np.float32), "dtype float32"),
    (np.zeros((2, 8, 8, 3), np.uint8), "expected \\(H,W\\) gray"),
])
def test_bad_frames_are_named(frame, message):
    with pytest.raises(InputError, match=message):
        to_rgb_float(frame)


def test_corrupt_and_missing_files(tmp_path, elpv_paths):
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(elpv_paths[0].read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(InputError, match=f"{path.name}: not a readable image"):
            read_image(path)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.png")
