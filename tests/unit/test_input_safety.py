"""What a hostile folder can do to `ser-cli submit` (#18 items 1, 2, 3, 7, 8, 13): the real CLI
through Click's runner on an embedded SQLite store in a temporary data directory. Enqueueing is
recorded instead of run, so no model is loaded."""

import os
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import cli.collect
from cli import render, safe
from cli.collect import collect, read_clip, store_clips
from cli.main import cli as ser_cli
from ser_worker.config import get_settings
from ser_worker.service import store
from ser_worker.service.celery_app import app as celery_app
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import AudioBlob, Submission, SubmissionItem
from ser_worker.service.db.session import get_engine, session_scope
from ser_worker.service.tasks.inference import infer


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An embedded store with one active (fake) version, and the batches enqueued recorded."""
    for key in list(os.environ):
        if key.startswith("SER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SER_DATA_DIR", str(tmp_path / "data"))
    _reset()
    upgrade_database()
    with session_scope() as session:
        store.register_version(session, b"v1", {"version": "v1"}, source="trained", activate=True)
    enqueued: list[list[int]] = []
    monkeypatch.setattr(infer, "apply_async", lambda args: enqueued.append(args[0]))
    width, render.console.width = render.console._width, 1000  # no wrapping of long paths
    yield enqueued
    render.console._width = width
    _reset()


def _reset() -> None:
    """Settings and engines are cached per process (the engine under the key None too)."""
    get_settings.cache_clear()
    get_engine.cache_clear()


def _submit(*args, **kwargs):
    return CliRunner().invoke(ser_cli, ["submit", *map(str, args)], **kwargs)


def _items() -> list[SubmissionItem]:
    with session_scope() as session:
        return list(session.scalars(select(SubmissionItem).order_by(SubmissionItem.id)))


def _clip(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or b"RIFF" + path.name.encode())
    return path


# 1. Only regular files are read, and never more than the limit + 1 byte.


def test_pipes_sockets_devices_and_folders_named_wav_are_skipped_not_read(env, tmp_path):
    root = tmp_path / "clips"
    _clip(root / "real.wav")
    os.mkfifo(root / "pipe.wav")
    (root / "null.wav").symlink_to("/dev/null")
    _clip(root / "folder.wav" / "inside.wav")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "socket.wav"))
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(_submit(root)), daemon=True)

    runner.start()
    runner.join(timeout=60)
    listener.close()

    assert not runner.is_alive(), "submit hung on a named pipe"
    result = outcome[0]
    assert result.exit_code == 0, result.output
    assert [item.filename for item in _items()] == ["clips/folder.wav/inside.wav", "clips/real.wav"]
    text = " ".join(result.stderr.split())
    assert "pipe.wav: a named pipe, not a regular file: not read" in text
    assert "socket.wav: a socket, not a regular file" in text
    assert "null.wav: a character device, not a regular file" in text


def test_at_most_the_limit_plus_one_byte_is_read(tmp_path, monkeypatch):
    path = _clip(tmp_path / "grows.wav", b"small")
    (clip,) = collect([path], scheme="none", max_bytes=100).clips
    path.write_bytes(b"x" * 10_000)  # grew after the walk
    read: list[int] = []
    real_open = open

    class Counted:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def read(self, size=-1):
            chunk = self.file.read(size)
            read.append(len(chunk))
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(cli.collect, "open", Counted, raising=False)

    assert read_clip(clip.path, 100) == (
        "too_large",
        "file is 10,000 bytes; the limit is 100 (SER_MAX_FILE_BYTES)",
    )
    assert sum(read) == 101


# 2. Names are data: no markup, no control characters, no formulas.

HOSTILE = {
    "interview [final].wav": "interview [final].wav",
    "[/x].wav": "[/x].wav",
    # A "/" in a name is a folder: the shown name, relative to the root, holds it.
    "[link=https:evil.example]click[/link].wav": "[link=https:evil.example]click[/link].wav",
    "red\x1b[31m.wav": "red\\x1b[31m.wav",
    "forged\nsubmission 0: 12 done.wav": "forged\\x0asubmission 0: 12 done.wav",
}


def test_hostile_names_are_printed_as_data_and_nothing_is_stranded(env, tmp_path, monkeypatch):
    root = tmp_path / "clips"
    for name in HOSTILE:
        _clip(root / name)
        _clip(root / (name + ".txt"))  # skipped-file lines
    _clip(root / "[/big].wav", b"x" * 200)
    monkeypatch.setenv("SER_MAX_FILE_BYTES", "100")
    _reset()

    result = _submit(root)

    assert result.exit_code == 0, result.output
    assert sum(map(len, env)) == len(HOSTILE)  # every readable clip queued: none stranded
    for shown in HOSTILE.values():
        assert f"{shown}.txt: not a supported audio file" in result.stderr
    assert "\x1b" not in result.stderr and "\x1b" not in result.stdout
    names = {item.filename for item in _items()}
    assert names == {f"clips/{name}" for name in HOSTILE} | {"clips/[/big].wav"}

    with session_scope() as session:
        summary = store.submission_summary(session, store.latest_submission_id(session))
    console = render.console
    with console.capture() as captured:
        render.print_summary(summary)
    assert "failed clips/[/big].wav: file is 200 bytes" in captured.get()

    table = CliRunner().invoke(ser_cli, ["results", "--format", "json"])
    assert table.exit_code == 0, table.output


def test_the_results_table_and_csv_show_names_as_data(env, tmp_path):
    formula = _clip(tmp_path / "=1+2.flac")
    _clip(tmp_path / "interview [final].wav")
    _clip(tmp_path / "red\x1b[31m.wav")
    submitted = _submit(formula, tmp_path / "interview [final].wav", tmp_path / "red\x1b[31m.wav")
    assert submitted.exit_code == 0, submitted.output

    table = CliRunner().invoke(ser_cli, ["results", "--format", "table"], terminal_width=200)
    as_csv = CliRunner().invoke(ser_cli, ["results", "--format", "csv"])

    assert table.exit_code == 0 and as_csv.exit_code == 0, table.output + as_csv.output
    assert "interview [final].wav" in table.stdout
    assert "\x1b" not in table.stdout
    assert ",'=1+2.flac," in as_csv.stdout
    assert ",=1+2.flac," not in as_csv.stdout


def test_errors_about_paths_escape_control_characters(env, tmp_path):
    result = _submit(tmp_path / "gone\x1b[2J")

    assert result.exit_code != 0
    assert "gone\\x1b[2J: no such file or directory" in result.output
    assert "\x1b" not in result.output


def test_safe_helpers():
    assert safe.name("a[/x]\x1b[0m\n\u202eb") == "a\\[/x]\\x1b[0m\\x0a\\u202eb"
    assert [safe.csv_cell(v) for v in ("=1+2", "+1", "-1", "@SUM(A1)", "\tx", "ok", 3, None)] == [
        "'=1+2",
        "'+1",
        "'-1",
        "'@SUM(A1)",
        "'\tx",
        "ok",
        3,
        None,
    ]


# 3. Nothing stored before the input is known; a stop after the commit recovers by itself.


def test_a_folder_deeper_than_path_max_is_reported_not_a_crash_after_commit(env, tmp_path):
    root = tmp_path / "clips"
    _clip(root / "ok.wav")
    descriptor = os.open(root, os.O_RDONLY)
    for _ in range(20):  # 20 x 250 characters: past PATH_MAX (4096)
        os.mkdir("d" * 250, dir_fd=descriptor)
        deeper = os.open("d" * 250, os.O_RDONLY, dir_fd=descriptor)
        os.close(descriptor)
        descriptor = deeper
    os.close(os.open("deep.wav", os.O_WRONLY | os.O_CREAT, dir_fd=descriptor))
    os.close(descriptor)

    result = _submit(root)

    assert result.exit_code == 0, result.output
    assert "folder not readable (File name too long)" in result.stderr
    assert [item.filename for item in _items()] == ["clips/ok.wav"]
    assert sum(map(len, env)) == 1


def test_a_path_that_does_not_exist_stores_nothing(env, tmp_path):
    result = _submit(_clip(tmp_path / "clips" / "a.wav"), tmp_path / "missing")

    assert result.exit_code != 0 and "no such file or directory" in result.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Submission)) == 0
        assert session.scalar(select(func.count()).select_from(AudioBlob)) == 0


def test_an_enqueue_that_fails_once_is_recovered_by_the_next_status(env, tmp_path, monkeypatch):
    monkeypatch.setenv("SER_BROKER_URL", "memory://")  # a broker that answers: not embedded
    _reset()
    for name in ("a.wav", "b.wav", "c.wav"):
        _clip(tmp_path / "clips" / name)
    failures = [BrokerError("connection reset")]

    def flaky(args):
        if failures:
            raise failures.pop()
        env.append(args[0])

    monkeypatch.setattr(infer, "apply_async", flaky)

    failed = _submit(tmp_path / "clips")
    assert failed.exit_code != 0
    assert "the next `ser-cli status`, `submit` or `resume` queues its clips" in failed.output
    assert env == []

    status = CliRunner().invoke(ser_cli, ["status"])
    again = CliRunner().invoke(ser_cli, ["status"])

    assert status.exit_code == 0, status.output
    assert "3 clips were stored but never queued" in status.stderr
    assert sorted(sum(env, [])) == [item.id for item in _items()]
    assert again.exit_code == 0 and "never queued" not in again.stderr
    assert len(sum(env, [])) == 3  # queued once more, not again and again


def test_an_interrupted_submit_is_recovered_by_the_next_submit(env, tmp_path, monkeypatch):
    _clip(tmp_path / "first" / "a.wav")
    _clip(tmp_path / "second" / "b.wav")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(infer, "apply_async", interrupted)
    assert _submit(tmp_path / "first").exit_code != 0
    monkeypatch.setattr(infer, "apply_async", lambda args: env.append(args[0]))

    result = _submit(tmp_path / "second")

    assert result.exit_code == 0, result.output
    assert "1 clips were stored but never queued" in result.stderr
    assert sorted(sum(env, [])) == [item.id for item in _items()]


# 7. Passwords are never printed.


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("SER_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:1/db?password=S3cret"),
        ("SER_DATABASE_URL", "postgresql+psycopg://u:S3cret@127.0.0.1:1/db"),
        ("SER_BROKER_URL", "redis://:S3cret@127.0.0.1:1/0"),
        ("SER_BROKER_URL", "redis://127.0.0.1:1/0?password=S3cret"),
    ],
)
def test_passwords_in_urls_are_never_printed(env, monkeypatch, variable, url):
    monkeypatch.setenv(variable, url)
    _reset()
    # The Celery app read its broker at import; the CLI process would have read this one.
    monkeypatch.setitem(celery_app.conf, "broker_url", url)

    # `resume` checks both services; `status` is a read and needs no broker (#18 item 5).
    result = CliRunner().invoke(ser_cli, ["resume"])

    assert result.exit_code != 0
    assert "unavailable" in result.output or "unreachable" in result.output
    assert "S3cret" not in result.output
    assert "***" in result.output


def test_url_masking():
    assert safe.url("postgres://u:S3cret@h:xx/db?sslpassword=k3y&sslmode=require") == (
        "postgres://u:***@h:xx/db?sslpassword=***&sslmode=require"
    )
    assert safe.url("redis://u:S3cret@h:notaport/0") == "redis://u:***@h:notaport/0"
    assert safe.scrub("bad value 'S3cret'", "redis://:S3cret@h/0") == "bad value '***'"


# 8. Services first, then the audio a bounded batch at a time.


def test_nothing_is_read_before_the_services_answer(env, tmp_path, monkeypatch):
    for index in range(5):
        _clip(tmp_path / "clips" / f"{index}.wav")
    monkeypatch.setenv("SER_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:1/db")
    _reset()
    monkeypatch.setattr(cli.collect, "read_clip", lambda *a: pytest.fail("read before the check"))

    result = _submit(tmp_path / "clips")

    assert result.exit_code != 0 and "database unavailable" in result.output


def test_audio_is_stored_in_bounded_batches_and_the_submission_at_once(env, tmp_path, monkeypatch):
    clips = collect(
        [_clip(tmp_path / "clips" / f"{i:02}.wav", bytes([i]) * 100) for i in range(10)],
        scheme="none",
        max_bytes=1000,
    ).clips
    batches = []
    real_store_audio = store.store_audio

    def recording(session, data):
        batches.append(len(data))
        return real_store_audio(session, data)

    monkeypatch.setattr(store, "store_audio", recording)

    uploads = store_clips(clips, max_bytes=1000, batch_clips=4, batch_bytes=250)

    assert batches == [3, 3, 3, 1]  # 3 x 100 bytes reach the 250-byte bound first
    assert all(upload.data is None and upload.sha256 for upload in uploads)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Submission)) == 0
        submission = store.create_submission(
            session, uploads, kind="predict", label_scheme="none", model_version_id=None
        )
        assert len(submission.items) == 10


def test_a_stop_half_way_through_the_upload_leaves_no_submission(env, tmp_path, monkeypatch):
    for index in range(6):
        _clip(tmp_path / "clips" / f"{index}.wav")
    monkeypatch.setattr(cli.collect, "BATCH_CLIPS", 2)
    calls = []
    real_store_audio = store.store_audio

    def dies_on_the_second(session, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_store_audio(session, data)

    monkeypatch.setattr(store, "store_audio", dies_on_the_second)

    assert _submit(tmp_path / "clips").exit_code != 0
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Submission)) == 0
        assert session.scalar(select(func.count()).select_from(AudioBlob)) == 2


def test_a_database_lost_during_the_upload_is_a_clear_error(env, tmp_path, monkeypatch):
    _clip(tmp_path / "clips" / "a.wav")

    def lost(session, data):
        raise OperationalError("INSERT", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(store, "store_audio", lost)

    result = _submit(tmp_path / "clips")

    assert result.exit_code == 1
    assert "database unavailable while storing the audio (ConnectionError)" in result.output
    assert "nothing was submitted" in result.output


# 13. Each file once, roots told apart, hidden names quietly left out.


def test_the_same_file_or_overlapping_folders_make_one_item_each(env, tmp_path):
    root = tmp_path / "clips"
    a, b = _clip(root / "a.wav"), _clip(root / "sub" / "b.wav")
    (root / "link.wav").symlink_to(a)

    result = _submit(root, root / "sub", a, a, root)

    assert result.exit_code == 0, result.output
    assert [item.filename for item in _items()] == ["clips/a.wav", "clips/sub/b.wav"]
    assert b.exists()


def test_two_roots_with_the_same_name_stay_apart(env, tmp_path):
    _clip(tmp_path / "monday" / "clips" / "x.wav", b"RIFF monday")
    _clip(tmp_path / "tuesday" / "clips" / "x.wav", b"RIFF tuesday")

    result = _submit(tmp_path / "monday" / "clips", tmp_path / "tuesday" / "clips")

    assert result.exit_code == 0, result.output
    assert [item.filename for item in _items()] == ["monday/clips/x.wav", "tuesday/clips/x.wav"]


def test_one_root_is_named_as_before(env, tmp_path):
    _clip(tmp_path / "clips" / "x.wav")
    _clip(tmp_path / "solo.wav")

    assert _submit(tmp_path / "clips").exit_code == 0
    assert _submit(tmp_path / "solo.wav").exit_code == 0
    assert [item.filename for item in _items()] == ["clips/x.wav", "solo.wav"]


def test_hidden_files_and_folders_are_not_called_unsupported(env, tmp_path):
    root = tmp_path / "clips"
    _clip(root / "real.wav")
    _clip(root / "._real.wav")
    _clip(root / ".DS_Store")
    _clip(root / ".git" / "objects" / "x.wav")

    result = _submit(root, root)

    assert result.exit_code == 0, result.output
    assert "not a supported audio file" not in result.stderr
    assert "skipped 3 hidden files and folders" in " ".join(result.stderr.split())
    assert [item.filename for item in _items()] == ["clips/real.wav"]
