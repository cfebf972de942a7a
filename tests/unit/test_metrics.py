import subprocess
import sys

import numpy as np
import pytest

from ser_worker.evaluation.metrics import evaluate, plot_confusion, plot_history
from ser_worker.labels import EMOTIONS


def test_hand_computed_case():
    # ANG: 2 true, 1 right, 1 -> DIS; DIS: 2 true, both right; FEA: 1 true -> ANG; HAP never seen.
    y_true = ["ANG", "ANG", "DIS", "DIS", "FEA", "NEU", "SAD"]
    y_pred = ["ANG", "DIS", "DIS", "DIS", "ANG", "NEU", "NEU"]
    report = evaluate(y_true, y_pred)

    assert report["n"] == 7
    assert report["accuracy"] == pytest.approx(4 / 7)
    assert report["labels"] == list(EMOTIONS)

    ang = report["per_class"]["ANG"]
    assert ang["precision"] == pytest.approx(1 / 2)
    assert ang["recall"] == pytest.approx(1 / 2)
    assert ang["f1"] == pytest.approx(1 / 2)
    assert ang["support"] == 2
    dis = report["per_class"]["DIS"]
    assert dis["precision"] == pytest.approx(2 / 3)
    assert dis["recall"] == pytest.approx(1.0)
    assert dis["f1"] == pytest.approx(0.8)
    assert report["per_class"]["FEA"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    neu = report["per_class"]["NEU"]
    assert (neu["precision"], neu["recall"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert neu["f1"] == pytest.approx(2 / 3)
    assert report["per_class"]["SAD"]["f1"] == 0.0

    # HAP occurs in neither list, so the mean is over the other five classes.
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0 + 2 / 3 + 0.0) / 5)

    expected = np.zeros((6, 6), dtype=int)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0), (4, 4), (5, 4)]:
        expected[t, p] += 1
    assert report["confusion"] == expected.tolist()

    assert report["most_confused"] == [
        # FEA and SAD have one clip each, so their single error is a rate of 1.0 and ranks first.
        {"true": "FEA", "predicted": "ANG", "count": 1, "rate": 1.0},
        {"true": "SAD", "predicted": "NEU", "count": 1, "rate": 1.0},
        {"true": "ANG", "predicted": "DIS", "count": 1, "rate": 0.5},
    ]


def test_matches_sklearn_convention():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y_true = list(rng.choice(EMOTIONS[:5], size=200))
    y_pred = list(rng.choice(EMOTIONS, size=200))
    report = evaluate(y_true, y_pred)
    assert report["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    assert (
        report["confusion"]
        == sklearn_metrics.confusion_matrix(y_true, y_pred, labels=list(EMOTIONS)).tolist()
    )


def test_perfect_predictions():
    y = list(EMOTIONS) * 3
    report = evaluate(y, y)
    assert report["accuracy"] == 1.0
    assert report["macro_f1"] == 1.0
    assert report["most_confused"] == []
    assert report["confusion"] == (np.eye(6, dtype=int) * 3).tolist()
    assert all(s["support"] == 3 for s in report["per_class"].values())


def test_all_wrong_predictions():
    y_true = list(EMOTIONS) * 2
    y_pred = [EMOTIONS[(EMOTIONS.index(c) + 1) % 6] for c in y_true]
    report = evaluate(y_true, y_pred)
    assert report["accuracy"] == 0.0
    assert report["macro_f1"] == 0.0
    assert np.trace(np.array(report["confusion"])) == 0
    assert len(report["most_confused"]) == 5
    assert all(m["count"] == 2 and m["rate"] == 1.0 for m in report["most_confused"])


def test_absent_class_is_not_averaged():
    y_true = ["ANG", "ANG", "SAD", "SAD"]
    y_pred = ["ANG", "ANG", "SAD", "SAD"]
    report = evaluate(y_true, y_pred)
    assert report["macro_f1"] == 1.0
    assert report["per_class"]["HAP"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }


def test_class_only_predicted_counts_as_zero():
    report = evaluate(["ANG", "ANG"], ["ANG", "HAP"])
    # ANG: P=1, R=0.5, F1=2/3; HAP: predicted but never true, F1=0.
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        evaluate([], [])
    with pytest.raises(ValueError, match="items"):
        evaluate(["ANG"], ["ANG", "SAD"])
    with pytest.raises(ValueError, match="XYZ"):
        evaluate(["ANG"], ["XYZ"])


def test_plots_write_png(tmp_path):
    report = evaluate(["ANG", "DIS", "SAD"], ["ANG", "SAD", "SAD"])
    confusion_png = plot_confusion(report["confusion"], EMOTIONS, tmp_path / "c.png", "test")
    history = {"loss": [2.0, 1.5], "val_loss": [2.1, 1.7], "accuracy": [0.2, 0.4]}
    history_png = plot_history(history, tmp_path / "sub" / "h.png", "test")
    for png in (confusion_png, history_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scoring_imports_neither_matplotlib_nor_keras():
    code = (
        "import sys; from ser_worker.evaluation.metrics import evaluate;"
        "evaluate(['ANG'], ['ANG']);"
        "print(sorted(m for m in ('keras', 'matplotlib', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
