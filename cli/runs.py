"""`runs`: the training runs (from `ser-cli train` and the schedule), where each one is and
what it produced; and how a finished run is reported."""

from typing import Any

import click

from cli import render
from cli.render import console
from cli.safe import name
from cli.wait import check_services
from ser_worker.config import Settings
from ser_worker.service import store
from ser_worker.service.db.session import session_scope


@click.command(name="runs")
@click.argument("run_id", metavar="[ID]", type=int, required=False)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def runs_command(settings: Settings, run_id: int | None, limit: int, as_json: bool) -> None:
    """List training runs (newest first, scheduled ones too), or show one: its status and
    progress, split sizes and speakers, test scores, and the version it registered.

    Example: ser-cli runs 3
    """
    check_services(settings, broker=False)
    with session_scope() as session:
        if run_id is None:
            report: Any = store.runs_listing(session, limit)
        else:
            run = store.find_run(session, run_id)
            if run is None:
                raise click.ClickException(f"no training run {run_id}; see `ser-cli runs`")
            report = store.run_report(session, run)
    if as_json:
        render.echo_json(report, indent=2)
    elif run_id is None:
        if not report:
            console.print("no training runs yet; start one with `ser-cli train PATH --wait`")
        for entry in report:
            click.echo(_one_line(entry))
    else:
        print_run(report)


def _one_line(entry: dict[str, Any]) -> str:
    ensemble = (entry["metrics"] or {}).get("ensemble", {})
    score = f"  macro-F1 {ensemble['macro_f1']:.3f}" if "macro_f1" in ensemble else ""
    version = f"  -> {entry['version']}" if entry["version"] else ""
    promoted = " (promoted)" if entry["promoted"] else ""
    return (
        f"{entry['run']:>4}  {entry['created_at'][:19]}  {entry['trigger']:8s} "
        f"{entry['status']:9s}{version}{promoted}{score}"
    )


def print_run(report: dict[str, Any]) -> None:
    params = report["params"]
    console.print(
        f"training run {report['run']} ({report['trigger']}): {report['status']}, "
        f"created {report['created_at'][:19]}"
        + (f", finished {report['finished_at'][:19]}" if report["finished_at"] else "")
    )
    asked = ", ".join(
        f"{key} {','.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in params.items()
    )
    console.print(f"asked: {name(asked)}", highlight=False)
    if report["progress"] and report["status"] in ("queued", "running"):
        console.print(f"progress: {name(report['progress'])}", highlight=False)
    split = report["split"]
    if split:
        sizes = split.get("sizes", {})
        console.print(
            f"split: {split.get('protocol')}, "
            + " / ".join(f"{sizes.get(side, 0)} {side}" for side in ("train", "val", "test"))
            + " clips"
        )
        for side in ("train", "val", "test"):
            speakers = split.get(f"{side}_speakers") or []
            if speakers:
                console.print(f"  {side} speakers ({len(speakers)}): {name(', '.join(speakers))}")
    for model, scores in (report["metrics"] or {}).items():
        console.print(
            f"{model:9s} test accuracy {scores['accuracy']:.3f}  macro-F1 "
            f"{scores['macro_f1']:.3f}  on {scores.get('n', '?')} clips"
        )
    before = (report["active_before"] or {}).get("ensemble")
    if before:
        console.print(f"active version before, same test clips: macro-F1 {before['macro_f1']:.3f}")
    if report["version"]:
        console.print(_registered(report["version"], report["promoted"], report["replaced"]))
    if report["error"]:
        console.print(f"[red]error[/] {name(report['error'])}")


def print_trained(outcome: store.RunOutcome) -> None:
    """What `train --wait` prints: the version on stdout, its scores and what it replaced."""
    click.echo(outcome.version)
    for model, scores in (outcome.metrics or {}).get("new", {}).items():
        console.print(
            f"{model:9s} test accuracy {scores['accuracy']:.3f}  macro-F1 "
            f"{scores['macro_f1']:.3f}  on {scores.get('n', '?')} clips"
        )
    console.print(_registered(outcome.version, outcome.promoted, outcome.replaced))


def _registered(version: str, promoted: bool, replaced: str | None) -> str:
    if not promoted:
        return (
            f"registered {version}, not promoted; "
            f"make it active with `ser-cli models --activate {version}`"
        )
    if replaced and replaced != version:
        return (
            f"promoted: {version} is now the active version, replacing {replaced}; "
            f"roll back with `ser-cli models --activate {replaced}`"
        )
    shipped = store.shipped_version_name()
    if shipped and not replaced:
        # Training came before any submission: the default model had not been installed yet.
        return (
            f"promoted: {version} is now the active version, instead of the shipped default "
            f"{shipped}; roll back with `ser-cli models --activate {shipped}`"
        )
    return f"promoted: {version} is now the active version"
