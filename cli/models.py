"""`models`: list the model versions, and switch the active one (a rollback)."""

from typing import Any

import click

from cli import render
from cli.render import console
from cli.safe import plain as shown
from cli.wait import check_services
from ser_worker.bundle import BundleError
from ser_worker.config import Settings
from ser_worker.service import store
from ser_worker.service.db.session import session_scope


@click.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--activate",
    metavar="VERSION",
    help="Make VERSION the active model for new submissions (e.g. to roll back), once its "
    "bundle is checked intact.",
)
@click.pass_obj
def models_command(settings: Settings, as_json: bool, activate: str | None) -> None:
    """List model versions and which one is active.

    Example: ser-cli models --json
    """
    check_services(settings, broker=False)
    if activate:
        _activate(activate)
    with session_scope() as session:
        listing = store.versions_listing(session)
    if as_json:
        render.echo_json(listing, indent=2)
    else:
        print_versions(listing)


def print_versions(listing: list[dict[str, Any]]) -> None:
    """One line per version, then each of its figures with the protocol, test clips and
    speakers it was measured on."""
    if not listing:
        console.print("no model versions yet; `ser-cli submit` installs the shipped default model")
    for entry in listing:
        marker = "*" if entry["active"] else " "
        click.echo(f"{marker} {entry['version']}  {entry['source']:8s} {entry['created_at'][:19]}")
        trained_on = _trained_on(entry.get("split") or {})
        if trained_on:
            click.echo(f"    {trained_on}")
        for figure in entry.get("figures", []):
            click.echo(f"    {describe(figure)}")
        if not entry.get("figures"):
            click.echo("    no test figures recorded")


def _trained_on(split: dict[str, Any]) -> str:
    train = (split.get("sizes") or {}).get("train")
    if not train:
        return ""
    speakers = len(split.get("train_speakers") or [])
    return f"trained on {train} clips" + (f" from {speakers} speakers" if speakers else "")


def _directions(scores: dict[str, float]) -> str:
    return ", ".join(
        f"{name.replace('_to_', '→').replace('ravdess', 'RAVDESS').replace('tess', 'TESS')} "
        f"{value:.3f}"
        for name, value in sorted(scores.items())
    )


def describe(figure: dict[str, Any]) -> str:
    if figure["kind"] == "cross-corpus":
        adapted = figure.get("adapted_by_direction") or {}
        return (
            f"ensemble macro-F1 {_directions(figure['macro_f1_by_direction'])} on a corpus it "
            "was not trained on (protocol "
            f"{shown(figure['protocol'])})"
            + (f"; with `submit --adapt`: {_directions(adapted)}" if adapted else "")
        )
    if figure["kind"] == "conditions":
        scores = figure["macro_f1_by_condition"]
        # Clean first, then from the least to the most harmful change (stores sort the keys).
        order = sorted(scores, key=lambda c: (c != "clean", -scores[c]))
        return (
            f"{shown(figure['model'])} macro-F1 when the recording changes: "
            + ", ".join(f"{shown(c)} {scores[c]:.3f}" for c in order)
            + f" (protocol {shown(figure['protocol'])})"
        )
    score = f"ensemble macro-F1 {figure['macro_f1']:.3f}"
    if figure["kind"] == "cross-validated":
        spread = f" ± {figure['macro_f1_std']:.3f}" if figure.get("macro_f1_std") else ""
        runs = f" over {figure['runs']} runs" if figure.get("runs") else ""
        n = (
            f", {figure['n']} test clips per run"
            if figure.get("n")
            else ", test clips per run not recorded in the bundle"
        )
        return (
            f"{score}{spread} expected on unseen speakers (cross-validated{runs}{n}; "
            f"protocol {shown(figure['protocol'])})"
        )
    n = f"{figure['n']} test clips" if figure.get("n") is not None else "test clips not recorded"
    if figure["protocol"] == "speaker":
        speakers = figure.get("unseen_speakers") or []
        return (
            f"{score} on its speaker-independent test side: {n} from {len(speakers)} unseen "
            f"speaker(s) ({shown(', '.join(speakers))})"
        )
    if figure["protocol"] == "random":
        return (
            f"{score} on a random clip-level split: {n}, from the training speakers "
            "(overstates accuracy on unseen speakers)"
        )
    return f"{score} on its test side ({shown(figure['protocol'])} split): {n}"


def _activate(name: str) -> None:
    with session_scope() as session:
        version = store.find_or_register_shipped(session, name)
        if version is None:
            raise click.ClickException(f"no model version {name!r}; see `ser-cli models`")
        before = store.active_version(session)
        previous = before.version if before is not None else None
        try:
            store.promote_version(session, version)
        except BundleError as error:
            raise click.ClickException(
                f"model version {name} not activated, the active one is unchanged: {error}"
            ) from None
    was = f" (was {previous}; back with `ser-cli models --activate {previous}`)"
    console.print(f"active model version: {name}" + (was if previous not in (None, name) else ""))
