"""What the CLI prints: tables and one-line summaries for people on stderr, JSON and CSV for
programs on stdout (so `ser-cli results --format csv > file` holds the data and nothing else)."""

import dataclasses
import json
from typing import Any

import click
from rich.console import Console

from cli import safe
from ser_worker.labels import EMOTIONS, ENSEMBLE

console = Console(stderr=True)


def echo_json(value: Any, *, indent: int | None = None) -> None:
    click.echo(json.dumps(value, indent=indent))


def print_summary(summary: dict[str, Any]) -> None:
    status = ", ".join(f"{count} {name}" for name, count in sorted(summary["status"].items()))
    console.print(f"submission {summary['submission']}: {status}")
    adapted_note(summary.get("adapted", False))
    if summary["emotions"]:
        console.print(
            "predicted (ensemble): "
            + ", ".join(f"{code} {summary['emotions'].get(code, 0)}" for code in EMOTIONS)
        )
    print_uncertain(summary)
    for failure in summary["failed"]:
        console.print(f"[red]failed[/] {safe.name(failure['clip'])}: {safe.name(failure['error'])}")
    for model, metrics in summary.get("metrics", {}).items():
        console.print(
            f"{model:9s} accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}"
            f"  on {metrics['n']} labelled clips"
        )
    seen_warning(summary.get("seen_in_training", 0), summary.get("clips", 0))


def print_status(
    submission_id: str, state: str, counts: dict[str, int], *, adapted: bool = False
) -> None:
    click.echo(
        f"{submission_id} {state}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ("; adapted to its own clips (--adapt)" if adapted else "")
    )


def adapted_note(adapted: bool) -> None:
    """Said with the predictions of an adapt submission: they are not the clips' alone."""
    if adapted:
        console.print(
            "adapted (--adapt): each prediction depends on the other clips of its submission"
        )


def print_uncertain(counts: dict[str, Any]) -> None:
    """How many of the ensemble's predictions are uncertain, and below what (the version's
    threshold); nothing when the ensemble predicted nothing."""
    if counts.get("predicted"):
        console.print(
            f"uncertain (ensemble): {counts['uncertain']} of {counts['predicted']} clips "
            f"(best class < {counts['uncertain_below']:.2f})"
        )


def uncertain_note(rows: list[dict[str, Any]], below: float, *, marked: bool) -> None:
    """Below the results: how many of the predictions shown are uncertain, and what that means."""
    predicted = [row for row in rows if row["emotion"] is not None]
    uncertain = sum(1 for row in predicted if row["uncertain"])
    if uncertain:
        console.print(
            f"{uncertain} of {len(predicted)} predictions uncertain (best class < {below:.2f})"
            + ("; marked ? after the confidence" if marked else "")
        )


def seen_warning(seen: int, total: int) -> None:
    """Said wherever scores are shown: a score on a clip the model learnt from is no test."""
    if seen:
        console.print(
            f"[yellow]{seen} of {total} clips were in this model's training data: "
            "their scores are not a test[/]"
        )


def print_evaluation(report: dict[str, Any]) -> None:
    click.echo(report["submission"])
    console.print(
        f"model version {safe.name(report['model_version'])}: {report['n_clips']} clips, "
        f"{report['skipped']} without a usable label"
    )
    seen_warning(report.get("seen_in_training", 0), report["n_clips"])
    for model, metrics in report["metrics"].items():
        pairs = ", ".join(
            f"{pair['true']}→{pair['predicted']} {pair['count']}"
            for pair in metrics["most_confused"][:3]
        )
        console.print(
            f"{model:9s} accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}"
            f"  most confused: {pairs}"
        )


def print_training(version: str, metrics: dict[str, Any], promoted: bool) -> None:
    click.echo(version)
    for model, scores in metrics.items():
        console.print(
            f"{model:9s} test accuracy {scores['accuracy']:.3f}  macro-F1 {scores['macro_f1']:.3f}"
        )
    console.print("promoted: active version" if promoted else "registered, not promoted")


def print_versions(listing: list[dict[str, Any]]) -> None:
    if not listing:
        console.print("no model versions yet; `ser-cli submit` installs the shipped default model")
    for entry in listing:
        marker = "*" if entry["active"] else " "
        click.echo(safe.plain(f"{marker} {entry['version']}  {entry['source']:8s} {score(entry)}"))


def score(entry: dict) -> str:
    """The ensemble's macro-F1 on the version's test side or, for a bundle trained on every clip
    (no test side), the cross-validated figure expected on unseen speakers."""
    measured = entry["metrics"].get(ENSEMBLE, {})
    if "macro_f1" in measured:
        return f"macro-F1 {measured['macro_f1']:.3f}"
    expected = entry["expected_metrics"].get(ENSEMBLE, {})
    if "macro_f1" in expected:
        # Bundles made before folds were repeated over seeds count "folds" instead of "runs".
        runs = expected.get("runs", expected.get("folds"))
        over = f" over {runs} runs" if runs else ""
        return (
            f"macro-F1 {expected['macro_f1']:.3f} ± {expected['macro_f1_std']:.3f} expected on "
            f"unseen speakers (cross-validated{over})"
        )
    return ""


def print_crema_d_report(report: Any, as_json: bool) -> None:
    if as_json:
        echo_json(dataclasses.asdict(report) | {"ok": report.ok}, indent=2)
        return
    click.echo(f"{report.checked} files match the manifest by name")
    for kind in ("missing", "extra", "corrupted"):
        names = getattr(report, kind)
        if names:
            shown = ", ".join(map(safe.plain, names[:10])) + (" ..." if len(names) > 10 else "")
            click.echo(f"{len(names)} {kind}: {shown}")
