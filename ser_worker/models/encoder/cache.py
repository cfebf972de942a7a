"""The encoder's ONNX graph kept on disk, so that a process starting again reads it instead of
building it.

Why: building the graph is most of a worker's encoder load (about 1 s of a 4.3 s cold start on
2 busy cores): importing onnx (0.5 s, ml_dtypes' extension mostly), reading and hashing the
145 MB of pinned weights, widening them to float32, quantising and serialising. Reading back
the 26 MB graph and checking its SHA-256 costs about 0.05 s, and gives the very bytes a build
gives, so the encoder's outputs do not change.

Trust: a cache file is written only from a graph built from weights that passed the pinned
SHA-256 check; its name and its header carry that pinned hash, the pooled layers, the hash of
the code that builds the graph and the onnx and onnxruntime versions, and its header the graph's
own SHA-256. It is read back only when all of them match, which is why a hit need not hash the
145 MB again. Anything else (missing, damaged, cut short, foreign, an older build) is rebuilt
from the verified weights and replaced. The cache is never required: where the folder cannot be
written, the graph is built in memory as if there were no cache. The folder may be deleted at
any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ser_worker.models.encoder import graph, weights

log = logging.getLogger(__name__)

CACHE_FOLDER = "cache"  # under SER_DATA_DIR
MAGIC = b"ser encoder graph 1\n"


def default_cache_dir() -> Path | None:
    """Where this process keeps the graph: SER_DATA_DIR/cache (None if the settings are bad,
    which other parts report: the encoder still loads)."""
    from ser_worker.config import SettingsError, get_settings

    try:
        return get_settings().data_dir / CACHE_FOLDER
    except SettingsError:
        return None


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _code_sha256() -> str | None:
    """The graph is what graph.py and weights.py make of the weights: any change to either
    (even a comment) gives another key, so a cache never outlives the code that built it."""
    digest = hashlib.sha256()
    try:
        for module in (graph, weights):
            digest.update(Path(module.__file__).read_bytes())
    except (OSError, TypeError):  # no source beside the module: nothing to key a cache by
        return None
    return digest.hexdigest()


def cache_key(layers: Sequence[int]) -> dict | None:
    """What a cached graph must have been built from to be used; None: do not cache."""
    import onnxruntime

    code = _code_sha256()
    if code is None:
        return None
    return {
        "weights_sha256": weights.MODEL_SHA256,
        "layers": list(layers),
        "code_sha256": code,
        "onnx": _version("onnx"),
        "onnxruntime": onnxruntime.__version__,
    }


def cache_path(cache_dir: Path, key: dict) -> Path:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"encoder-{name}.onnx"


def read_cached(path: Path, key: dict) -> bytes | None:
    """The cached graph, or None when the file is missing or is not exactly what `key` asks."""
    try:
        with path.open("rb") as f:
            magic = f.readline(len(MAGIC))
            header = json.loads(f.readline(1 << 16)) if magic == MAGIC else None
            payload = f.read() if isinstance(header, dict) else b""
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("encoder graph cache %s unreadable (%s): rebuilding it", path, error)
        return None
    valid = (
        isinstance(header, dict)
        and header.get("key") == key
        and header.get("size") == len(payload)
        and header.get("sha256") == hashlib.sha256(payload).hexdigest()
    )
    if not valid:
        log.warning("encoder graph cache %s is damaged or not this build's: rebuilding it", path)
        return None
    return payload


def write_cached(path: Path, key: dict, graph_bytes: bytes) -> bool:
    """Store a graph built from verified weights: whole or not at all (a temporary file renamed
    over the old one, so a reader never sees half a file and two writers both leave a whole
    one). Not synced to disk: a file a crash leaves short fails its hash and is rebuilt."""
    header = {
        "key": key,
        "size": len(graph_bytes),
        "sha256": hashlib.sha256(graph_bytes).hexdigest(),
    }
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        with os.fdopen(handle, "wb") as f:
            f.write(MAGIC)
            f.write(json.dumps(header).encode() + b"\n")
            f.write(graph_bytes)
        os.replace(temporary, path)
        return True
    except OSError as error:
        log.info("encoder graph not cached in %s (%s): built in memory", path.parent, error)
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        return False


def encoder_graph_bytes(layers: Sequence[int], cache_dir: Path | None) -> bytes:
    """The serialised ONNX graph of ``graph.encoder_graph`` for `layers`: from `cache_dir` when
    a valid cache file holds it, else built from the hash-checked weights (and cached there for
    the next process). cache_dir=None: built every time, no file read or written."""
    key = cache_key(layers) if cache_dir is not None else None
    path = cache_path(cache_dir, key) if key is not None else None
    if path is not None:
        cached = read_cached(path, key)
        if cached is not None:
            return cached
    built = graph.encoder_graph(weights.encoder_arrays(weights.verified_weight_parts()), layers)
    if path is not None:
        write_cached(path, key, built)
    return built
