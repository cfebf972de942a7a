"""Classification scores, confusion matrices and training-curve plots.

numpy only at import time: the CLI and the service report metrics without loading Keras, and
matplotlib is imported inside the plot functions so that scoring never pays for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ser_worker.evaluation.ensemble import mix
from ser_worker.labels import CNN1D, CNN2D, EMOTIONS

MOST_CONFUSED_TOP = 5


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = EMOTIONS
) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class, both in `labels` order."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    index = {code: i for i, code in enumerate(labels)}
    unknown = sorted({c for c in (*y_true, *y_pred) if c not in index})
    if unknown:
        raise ValueError(f"labels not in {list(labels)}: {unknown}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix


def evaluate(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = EMOTIONS
) -> dict:
    """Accuracy, macro-F1, per-class scores, the confusion matrix and the most confused pairs.

    Division by zero gives 0 (a class never predicted has precision 0), as sklearn's
    ``zero_division=0``. ``macro_f1`` averages F1 over the classes that occur in y_true OR
    y_pred, which is what sklearn's ``f1_score(average="macro")`` does without ``labels=``:
    a class absent from an evaluation set neither helps nor hurts the score, but a class that
    is predicted without ever being true counts as an F1 of 0. ``per_class`` still lists every
    label so reports have a fixed shape.
    """
    if len(y_true) == 0:
        raise ValueError("cannot evaluate an empty set of predictions")
    labels = tuple(labels)
    matrix = confusion_matrix(y_true, y_pred, labels)
    true_counts = matrix.sum(axis=1)
    pred_counts = matrix.sum(axis=0)
    hits = np.diag(matrix)

    per_class: dict[str, dict[str, float | int]] = {}
    f1s = np.zeros(len(labels))
    for i, code in enumerate(labels):
        precision = _ratio(hits[i], pred_counts[i])
        recall = _ratio(hits[i], true_counts[i])
        f1s[i] = _ratio(2 * precision * recall, precision + recall)
        per_class[code] = {
            "precision": precision,
            "recall": recall,
            "f1": float(f1s[i]),
            "support": int(true_counts[i]),
        }
    present = (true_counts > 0) | (pred_counts > 0)
    n = int(matrix.sum())
    return {
        "accuracy": float(hits.sum() / n),
        "macro_f1": float(f1s[present].mean()),
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "labels": list(labels),
        "n": n,
        "most_confused": most_confused(matrix, labels),
    }


def most_confused(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str] = EMOTIONS,
    top: int = MOST_CONFUSED_TOP,
) -> list[dict]:
    """Off-diagonal cells with a non-zero count, largest count first.

    ``rate`` is the share of the true class's clips that went to ``predicted``, so pairs from
    classes of different sizes can be compared. Ties keep a fixed order (higher rate, then
    label order) so reports are reproducible.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    rows = matrix.sum(axis=1)
    cells = [
        (int(matrix[i, j]), _ratio(matrix[i, j], rows[i]), i, j)
        for i in range(len(labels))
        for j in range(len(labels))
        if i != j and matrix[i, j] > 0
    ]
    cells.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    return [
        {"true": labels[i], "predicted": labels[j], "count": count, "rate": rate}
        for count, rate, i, j in cells[:top]
    ]


def mixed_macro_f1(
    y_true: Sequence[str],
    first: np.ndarray,
    second: np.ndarray,
    share: float,
    labels: Sequence[str] = EMOTIONS,
) -> float:
    """Macro-F1 of ``share * first + (1 - share) * second`` (probabilities, one row per clip)."""
    mixed = mix({"first": first, "second": second}, {"first": share, "second": 1 - share})
    return argmax_macro_f1(y_true, mixed, labels)


def argmax_macro_f1(
    y_true: Sequence[str], probabilities: np.ndarray, labels: Sequence[str] = EMOTIONS
) -> float:
    """Macro-F1 of the most probable class of each row."""
    predicted = [labels[i] for i in np.asarray(probabilities).argmax(axis=1)]
    return evaluate(y_true, predicted, labels)["macro_f1"]


def choose_share(
    y_true: Sequence[str], first: np.ndarray, second: np.ndarray, steps: int = 10
) -> float:
    """The share of `first` on a grid of 0..1 with the best macro-F1 on these (validation) clips.

    Ties go to the share nearest 0.5, the plain average, so a validation set that cannot tell
    the shares apart changes nothing.
    """
    grid = [round(i / steps, 6) for i in range(steps + 1)]
    return max(
        grid,
        key=lambda w: (round(mixed_macro_f1(y_true, first, second, w), 9), -abs(w - 0.5)),
    )


def ensemble_macro_f1(
    y_true: Sequence[str],
    probabilities: Mapping[str, np.ndarray],
    cnn2d_weight: float,
    labels: Sequence[str] = EMOTIONS,
) -> float:
    """Macro-F1 of ``cnn2d_weight * p_cnn2d + (1 - cnn2d_weight) * p_cnn1d``."""
    mixed = mix(probabilities, {CNN2D: cnn2d_weight, CNN1D: 1 - cnn2d_weight})
    return argmax_macro_f1(y_true, mixed, labels)


def choose_cnn2d_weight(
    y_true: Sequence[str], probabilities: Mapping[str, np.ndarray], steps: int = 10
) -> float:
    """The cnn2d weight of the two-CNN ensemble chosen on these clips (see choose_share)."""
    return choose_share(y_true, probabilities[CNN2D], probabilities[CNN1D], steps)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Heatmap coloured by row-normalised rate (recall per true class), annotated with counts."""
    matrix = np.asarray(confusion, dtype=np.int64)
    rows = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)

    fig = _new_figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{rates[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    return _save(fig, path)


def plot_history(
    history: Mapping[str, Sequence[float]], path: str | Path, title: str = "Training history"
) -> Path:
    """Loss and accuracy per epoch, training against validation, side by side."""
    return _save(history_figure(history, title), path)


def history_figure(history: Mapping[str, Sequence[float]], title: str = "Training history"):
    """The figure `plot_history` saves."""
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = history.get(key)
            if values:
                # Markers, or a one-epoch run (a line of one point) draws nothing at all.
                ax.plot(range(1, len(values) + 1), values, style, marker="o", label=key)
        epochs = max((len(values) for values in history.values()), default=0)
        if epochs:
            # Whole epochs only, with room either side (one epoch would get ticks 0.95-1.05).
            ax.set_xlim(0.5, epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.suptitle(title)
    return fig


def _new_figure(**kwargs):
    # A Figure on its own Agg canvas bypasses pyplot's global state and backend selection, so
    # plotting is safe in worker threads and never tries to open a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
