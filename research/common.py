"""What every research script shares: where results live, how a run's file is named, how a
table cell reads, and how a section of docs/RESULTS.md is replaced."""

from __future__ import annotations

import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "research" / "results"
REPORT = REPO / "docs" / "RESULTS.md"
# The corpora (ravdess/, tess/) beside the repository, where the sessions keep them.
DATA = REPO.parent / "shared" / "data"


def speaker_set(text: str) -> frozenset[str]:
    """Speakers named on a command line, comma-separated as the datasets name them
    (`ravdess:15,ravdess:16`)."""
    return frozenset(name for name in text.split(",") if name)


def run_file(experiment: str, recipe: str, seed: int) -> str:
    """The name of one CNN run's JSON under RESULTS; the encoder report pairs runs by it."""
    return f"{experiment}--{recipe}--seed{seed}.json"


def run_key(run: dict) -> str:
    """One run of one split and seed, whichever model made it (CNN runs and encoder rows)."""
    return f"{run['experiment']}--seed{run.get('seed', 0)}"


def cell(values: list[float]) -> str:
    """A table cell: one value as is, several as mean ± standard deviation with their count."""
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def replace_between(text: str, marker: str, body: str) -> str:
    """`text` with what lies between the two occurrences of `marker` replaced by `body`."""
    start = text.index(marker) + len(marker)
    end = text.index(marker, start)
    return f"{text[:start]}\n{body}\n{text[end:]}"


def fill_report(sections: dict[str, str], report: Path = REPORT) -> None:
    """Replace each marked section of docs/RESULTS.md (marker -> body)."""
    text = report.read_text()
    for marker, body in sections.items():
        text = replace_between(text, marker, body)
    report.write_text(text)
