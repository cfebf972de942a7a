"""Model versions: registering a bundle, the one active version, and promotion.

The database allows at most one active version (a unique partial index); everything here moves
the flag so that the version serving now keeps serving until a checked replacement takes over.
"""

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ser_worker.bundle import Manifest, read_manifest, shipped_bundle_bytes, verify_bundle_bytes
from ser_worker.labels import ENCODER, ENSEMBLE
from ser_worker.service.db.models import ModelVersion
from ser_worker.service.store.audio import sha256_hex


class NoModelError(RuntimeError):
    """No model version is active and the package ships none."""


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.active))


def find_version(session: Session, version: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.version == version))


def register_version(
    session: Session,
    bundle: bytes,
    manifest: Manifest | dict[str, Any],
    *,
    source: str,
    activate: bool,
) -> ModelVersion:
    # The column holds the manifest's JSON exactly as the bundle stores it.
    manifest = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    version = ModelVersion(
        version=manifest["version"],
        source=source,
        active=False,
        bundle_sha256=sha256_hex(bundle),
        bundle=bundle,
        manifest=manifest,
    )
    session.add(version)
    session.flush()
    if activate:
        activate_version(session, version)
    return version


def activate_version(session: Session, version: ModelVersion) -> None:
    # Clear the old flag first: the unique index would refuse two active rows even briefly.
    session.execute(update(ModelVersion).where(ModelVersion.active).values(active=False))
    session.flush()
    version.active = True
    session.flush()


def promote_version(session: Session, version: ModelVersion) -> None:
    """Make ``version`` the active one, unless its bundle is damaged or cannot predict
    (BundleError).

    Checked before the active flag moves, so the version active now keeps serving. The
    prediction check loads the bundle (Keras or onnxruntime, the speech encoder) in the calling
    process: `models --activate`, a first submit on a fresh store, a training promotion.
    """
    verify_bundle_bytes(version.bundle, version.bundle_sha256)
    check_predicts(version.bundle)
    activate_version(session, version)


def check_predicts(data: bytes) -> None:
    """The bundle loads and predicts the built-in clip; tests without Keras replace this."""
    from ser_worker.bundle.smoke import check_bundle_predicts

    check_bundle_predicts(data)


def ensure_active_version(session: Session) -> ModelVersion:
    """The active version; on a fresh store, the bundle shipped in the package becomes it.

    Two processes may find the store empty at once (two first submissions, a worker's warm-up):
    the loser of the race hits the unique constraints, rolls back only its savepoint and takes
    what the winner registered.
    """
    version = active_version(session)
    if version is not None:
        return version
    bundle = shipped_bundle_bytes()
    if bundle is None:
        raise NoModelError(
            "No model is available: this installation ships no default model and none has been "
            "trained. Train one with `ser-cli train PATH --wait` on labelled clips."
        )
    from ser_worker.bundle import read_manifest

    name = read_manifest(bundle).version
    shipped = find_version(session, name) or _register_shipped(session, bundle)
    try:
        with session.begin_nested():
            promote_version(session, shipped)
    except IntegrityError:
        pass  # another process activated a version meanwhile: that one serves
    version = active_version(session)
    if version is None:  # pragma: no cover - only if the winner's promotion was undone again
        raise NoModelError("the shipped model could not be activated; try again")
    return version


def shipped_version_name() -> str | None:
    """The version name of the bundle shipped in the package, if it ships one."""
    bundle = shipped_bundle_bytes()
    return read_manifest(bundle).version if bundle is not None else None


def find_or_register_shipped(session: Session, name: str) -> ModelVersion | None:
    """The version called ``name``; the shipped bundle is registered on demand, so a store that
    never served it (training came first) can still roll back to it."""
    version = find_version(session, name)
    if version is None and name == shipped_version_name():
        version = _register_shipped(session, shipped_bundle_bytes())
    return version


def _register_shipped(session: Session, bundle: bytes) -> ModelVersion:
    manifest = read_manifest(bundle)
    try:
        with session.begin_nested():
            return register_version(session, bundle, manifest, source="shipped", activate=False)
    except IntegrityError:
        return find_version(session, manifest.version)


def versions_listing(session: Session) -> list[dict[str, Any]]:
    """Every version, oldest first, as `ser-cli models --json` prints it."""
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at)).all()
    return [
        {
            "version": version.version,
            "active": version.active,
            "source": version.source,
            "created_at": version.created_at.isoformat(),
            "metrics": version.manifest.get("metrics", {}),
            "expected_metrics": version.manifest.get("expected_metrics", {}),
            "split": version.manifest.get("split", {}),
            "figures": figures(version.manifest),
        }
        for version in versions
    ]


def figures(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ensemble score a version carries, with what it was measured on: a figure without
    its protocol and test size cannot be compared with another.

    ``measured``: the version's own test side (its split's protocol, clips and test speakers;
    a random split has the training speakers in it). ``cross-validated``: the figure expected on
    unseen speakers, from runs of the same recipe (a bundle trained on every clip has no test
    side of its own). ``cross-corpus``: trained on one corpus, tested on another.
    ``conditions``: a member's figure on unseen speakers under changed recordings (noise,
    telephone, codecs, rooms).
    """
    found = []
    split = manifest.get("split") or {}
    measured = (manifest.get("metrics") or {}).get(ENSEMBLE, {})
    if "macro_f1" in measured:
        protocol = split.get("protocol", "unknown")
        found.append(
            {
                "kind": "measured",
                "protocol": protocol,
                "macro_f1": measured["macro_f1"],
                "accuracy": measured.get("accuracy"),
                "n": measured.get("n"),
                "unseen_speakers": split.get("test_speakers") if protocol == "speaker" else [],
            }
        )
    expected = manifest.get("expected_metrics") or {}
    if "macro_f1" in expected.get(ENSEMBLE, {}):
        scores = expected[ENSEMBLE]
        found.append(
            {
                "kind": "cross-validated",
                "protocol": expected.get("protocol", "cross-validated on unseen speakers"),
                "macro_f1": scores["macro_f1"],
                "macro_f1_std": scores.get("macro_f1_std"),
                # Bundles made before folds were repeated over seeds count "folds".
                "runs": scores.get("runs", scores.get("folds")),
                "n": scores.get("n"),
            }
        )
    cross = expected.get("cross_corpus") or {}
    if cross.get(ENSEMBLE):
        found.append(
            {
                "kind": "cross-corpus",
                "protocol": cross.get("protocol", "cross-corpus"),
                # One score per direction: trained on one corpus, tested on the other.
                "macro_f1_by_direction": cross[ENSEMBLE],
                "adapted_by_direction": cross.get("adapted") or {},
            }
        )
    conditions = expected.get("conditions") or {}
    if conditions.get(ENCODER):
        found.append(
            {
                "kind": "conditions",
                "protocol": conditions.get("protocol", "cross-validated on unseen speakers"),
                # The speech encoder's alone: the CNN fold models were not kept to score the
                # ensemble under noise, codecs and rooms (docs/RESULTS.md).
                "model": ENCODER,
                "macro_f1_by_condition": conditions[ENCODER],
            }
        )
    return found
