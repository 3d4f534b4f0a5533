"""ad-eval's report folder from a known Evaluation: metrics against scikit-learn, scores.csv, the
triplet panels (image | overlay | ground truth) and report.html linking only files that exist."""

import csv
import json
import re

import cv2
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from anomedge.calibrate.report import Evaluation, write_report
from anomedge.errors import InputError


def synthetic_evaluation(paths, types=None) -> Evaluation:
    """12 real ELPV cells (300×300) of ``paths``, 6 good + 6 defective, 16×16 maps whose defect region is hot."""
    rng = np.random.default_rng(0)
    n, h = 12, 16
    labels = np.r_[np.zeros(6, np.int8), np.ones(6, np.int8)]
    masks = np.zeros((n, h, h), bool)
    maps = rng.random((n, h, h)).astype(np.float32)
    for i in range(6, n):
        masks[i, 4:9, 5:11] = True
        maps[i][masks[i]] += 0.6 + 0.05 * i
    scores = (maps.reshape(n, -1).max(1) + rng.normal(0, 0.2, n)).astype(np.float32)
    return Evaluation(list(paths[:n]), labels, scores, maps, masks, float(np.median(scores)), 0.9, types=types)


@pytest.fixture()
def evaluation(elpv_paths):
    return synthetic_evaluation(elpv_paths)


def test_metrics_and_scores_csv(evaluation, tmp_path):
    metrics = write_report(evaluation, tmp_path, "tiny", {"run": {"backend": "onnxruntime"}})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    image = on_disk["image"]
    np.testing.assert_allclose(image["auroc"], roc_auc_score(evaluation.labels, evaluation.scores), atol=1e-12)
    np.testing.assert_allclose(image["pr_auc"], average_precision_score(evaluation.labels, evaluation.scores),
                               atol=1e-12)
    np.testing.assert_allclose(on_disk["pixel"]["pixel_auroc"],
                               roc_auc_score(evaluation.masks.ravel(), evaluation.maps.ravel()), atol=1e-12)
    assert 0 < on_disk["pixel"]["aupro"] <= 1 and on_disk["run"] == {"backend": "onnxruntime"}
    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == [str(p) for p in evaluation.paths]
    expected = ["NG" if s > evaluation.threshold else "OK" for s in evaluation.scores]
    assert [r["prediction"] for r in rows] == expected
    np.testing.assert_allclose([float(r["score"]) for r in rows], evaluation.scores, rtol=1e-5)  # 6 digits


def test_triplets_show_titled_image_overlay_mask_and_colour_bar(evaluation, tmp_path):
    from anomedge.calibrate.report import BAR, HEADER

    write_report(evaluation, tmp_path, "tiny")
    worst = cv2.imread(str(tmp_path / "worst_defective_0.png"))
    assert worst.shape == (HEADER + 300, 900 + BAR, 3)  # title strip over three 300×300 panels + colour bar
    body = worst[HEADER:]
    defective = int(np.argmin(np.where(evaluation.labels == 1, evaluation.scores, np.inf)))
    expected_mask = cv2.resize(evaluation.masks[defective].astype(np.uint8) * 255, (300, 300),
                               interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(body[:, 600:900, 0], expected_mask)
    image = cv2.imread(str(evaluation.paths[defective]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(body[:, :300, 0], image)  # the untouched input on the left
    assert np.abs(body[:, 300:600].astype(int) - body[:, :300].astype(int)).mean() > 5  # heat blended in
    assert (worst[:HEADER] < 128).any() and (worst[:HEADER] == 255).mean() > 0.8  # dark titles on white
    bar = body[20:-20, 904:920].astype(int)  # JET: red (high) at the top, blue (low) at the bottom
    assert bar[0, :, 2].mean() > 100 and bar[0, :, 0].mean() < 50 and bar[-1, :, 0].mean() > 100
    good = cv2.imread(str(tmp_path / "best_good_0.png"))
    assert not good[HEADER:, 600:900].any()  # no ground truth on a good part


def test_without_masks_there_is_no_ground_truth_panel(evaluation, tmp_path):
    from anomedge.calibrate.report import BAR, HEADER

    evaluation.masks = None
    write_report(evaluation, tmp_path, "no masks")
    assert cv2.imread(str(tmp_path / "worst_defective_0.png")).shape == (HEADER + 300, 600 + BAR, 3)
    page = (tmp_path / "report.html").read_text()
    assert "No ground-truth masks" in page and "image | anomaly map]" in page


def test_html_says_metrics_in_words_with_confusion_counts_and_per_type_rows(evaluation, tmp_path):
    evaluation.types = ["good"] * 6 + ["crack"] * 3 + ["spot"] * 3
    write_report(evaluation, tmp_path, "tiny", {"run": {"backend": "onnxruntime", "precision": "fp32"}})
    page = (tmp_path / "report.html").read_text()
    assert "Image AUROC" in page and "auroc</td>" not in page and "pr_auc" not in page
    assert "Good images rejected (false-reject rate)" in page
    assert "number format of the model" in page  # the run's "precision" is not the metric's
    ng = evaluation.scores > evaluation.threshold
    good, bad = evaluation.labels == 0, evaluation.labels == 1
    for count, what in ((good & ng, "false reject"), (bad & ~ng, "missed"), (bad & ng, "caught"), (good & ~ng, "correct")):
        assert f">{int(count.sum())} ({what})<" in page
    crack = evaluation.scores[6:9]
    row = re.search(r"<tr><td>crack</td><td class='n'>3</td><td class='n'>(\d+)</td>", page)
    assert row and int(row.group(1)) == int((crack > evaluation.threshold).sum())
    assert page.index("<td>good</td>") < page.index("<td>crack</td>") < page.index("<td>spot</td>")


def test_html_links_every_picture_and_nothing_missing(evaluation, tmp_path):
    write_report(evaluation, tmp_path, "tiny <report>")
    page = (tmp_path / "report.html").read_text()
    linked = set(re.findall(r"src='([^']+)'", page))
    written = {p.name for p in tmp_path.glob("*.png")}
    assert linked == written and {"curves.png", "worst_good_0.png", "best_defective_0.png"} <= written
    assert "tiny &lt;report&gt;" in page and "AUROC" in page.upper()


def test_without_masks_or_threshold(evaluation, tmp_path):
    evaluation.masks, evaluation.threshold = None, None
    metrics = write_report(evaluation, tmp_path, "no masks")
    assert "pixel" not in metrics and "f1" not in metrics["image"]
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert all(r.endswith(",") for r in rows[1:])  # no prediction without a threshold


def test_one_class_is_a_one_line_error(evaluation, tmp_path):
    evaluation.labels[:] = 0
    with pytest.raises(InputError, match="both good and defective"):
        write_report(evaluation, tmp_path, "one class")


def test_identical_scores_still_plot(evaluation, tmp_path):
    evaluation.scores[:] = 1.0
    metrics = write_report(evaluation, tmp_path, "flat")
    assert metrics["image"]["auroc"] == pytest.approx(0.5) and (tmp_path / "curves.png").is_file()
