"""The results table and files (`ser-cli results`) and the submissions list: rows people scan
on a terminal, pipe to grep, or open in a spreadsheet."""

import csv
import io
import json
import sys
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli import safe
from cli.render import console, echo_json
from ser_worker.labels import EMOTIONS
from ser_worker.service.store import SHORT_ID

RESULT_CSV_COLUMNS = (
    "submission",
    "clip",
    "sha256",
    "status",
    "error_code",
    "error",
    "model",
    "model_version",
    "emotion",
    "confidence",
    "uncertain",
    "true_emotion",
    "seen_in_training",
    "adapted",
)
# Formats `ser-cli results --output FILE` reads from the file name.
RESULT_FILE_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}


def print_results(rows: list[dict[str, Any]], output_format: str, *, show_model: bool) -> None:
    if output_format == "json":
        echo_json(rows, indent=2)
    elif output_format == "csv":
        _write_csv(rows, sys.stdout)
    else:
        # The table is the command's output: stdout, unlike the progress and notes on stderr.
        print_results_table(rows, Console(), show_model=show_model)


def write_results(rows: list[dict[str, Any]], path: Path, output_format: str) -> None:
    """Rows to a file in a format `RESULT_FILE_FORMATS` names."""
    if output_format == "parquet":
        frame = parquet_library().DataFrame(_flat_rows(rows), columns=_flat_columns())
        try:
            frame.to_parquet(path, index=False)
        except ImportError as error:  # pandas without pyarrow or fastparquet
            raise click.ClickException(f"cannot write .parquet: {error}") from None
    else:
        with path.open("w", newline="", encoding="utf-8") as file:
            if output_format == "csv":
                _write_csv(rows, file)
            else:
                json.dump(rows, file, indent=2)
                file.write("\n")
    console.print(f"wrote {len(rows)} rows to {safe.name(path)}")


def parquet_library():
    try:
        import pandas
    except ImportError:
        raise click.ClickException(
            "writing .parquet needs pandas (pip install pandas pyarrow); "
            "or write a .csv or .json file"
        ) from None
    return pandas


def _flat_columns() -> list[str]:
    return [*RESULT_CSV_COLUMNS, *EMOTIONS]


def _flat_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    # One probability column per emotion, so the file needs no JSON parsing downstream.
    return [
        [row[c] for c in RESULT_CSV_COLUMNS]
        + [(row["probabilities"] or {}).get(code) for code in EMOTIONS]
        for row in rows
    ]


def _write_csv(rows: list[dict[str, Any]], file: IO[str]) -> None:
    writer = csv.writer(file)
    writer.writerow(_flat_columns())
    for row in _flat_rows(rows):
        # File names and error messages come from outside: no cell may start a formula.
        writer.writerow([_csv_value(value) for value in row])


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return safe.csv_cell(value)


def print_results_table(
    rows: list[dict[str, Any]], out: Console, *, show_model: bool = False
) -> None:
    """One row per clip and model, and one per failed or pending clip whatever the models.

    On a terminal the table fits its width: a long clip name loses folders in the middle, never
    its file name, and the note (a failed clip's error) wraps. Piped, it is borderless and keeps
    every name whole, for grep and less.
    """
    rows = _one_row_per_unfinished_clip(rows)
    columns = {"clip": [safe.plain(row["clip"]) for row in rows]}
    if show_model:
        columns["model"] = [row["model"] if row["status"] == "done" else "" for row in rows]
    columns |= {
        "status": [row["status"] for row in rows],
        "emotion": [row["emotion"] or "" for row in rows],
        # An uncertain prediction: the best class below the version's threshold.
        "conf": [_confidence(row) for row in rows],
        "true": [row["true_emotion"] or "" for row in rows],
        # In the model's training data: the summary line below the table says what that means.
        "seen": ["yes" if row["seen_in_training"] else "" for row in rows],
        "note": [_note(row) for row in rows],
    }
    for optional in ("true", "seen", "note"):  # shown only when some row has one
        if not any(columns[optional]):
            del columns[optional]
    fitted = out.is_terminal and _fits(columns, out.width)
    table = Table(box=None, pad_edge=False, header_style="bold underline" if fitted else "")
    if fitted:
        _fit(table, columns, out.width)
    else:
        for header in columns:
            table.add_column(header, no_wrap=True)
    for cells in zip(*columns.values(), strict=True):
        table.add_row(*(Text(cell) for cell in cells))
    if fitted:
        out.print(table)
    else:
        _print_whole(table, out)


def _print_whole(table: Table, out: Console) -> None:
    """``table`` at its natural width, without the padding at line ends."""
    whole = Console(file=io.StringIO(), width=10_000, no_color=True)
    whole.print(table)
    for line in whole.file.getvalue().splitlines():
        out.file.write(line.rstrip() + "\n")


def _fits(columns: dict[str, list[str]], width: int) -> bool:
    """Whether whole file names, the short columns and a narrow note fit in `width`; on a
    terminal narrower than that, the table is printed whole and the terminal wraps it."""
    names = max([4, *(len(_file_name(name)) for name in columns["clip"])])
    return names + min(_widths(columns).get("note", 0), _NOTE) <= _left(columns, width)


def _fit(table: Table, columns: dict[str, list[str]], width: int) -> None:
    """Columns for a terminal `width` wide: the short ones whole, the clip names shortened to
    what is left (folders first), the note wrapping in the rest."""
    left = _left(columns, width)
    note = min(_widths(columns).get("note", 0), max(_NOTE, left // 3))
    columns["clip"] = [shorten_path(name, left - note) for name in columns["clip"]]
    for header in columns:
        if header == "note":
            table.add_column(header, overflow="fold")
        else:
            longest = max([len(header), *map(len, columns[header])])
            table.add_column(header, no_wrap=True, min_width=longest)


def _widths(columns: dict[str, list[str]]) -> dict[str, int]:
    return {header: max([len(header), *map(len, cells)]) for header, cells in columns.items()}


def _left(columns: dict[str, list[str]], width: int) -> int:
    """What `width` leaves to the clip and note columns, which give way on a narrow terminal."""
    fixed = sum(w for header, w in _widths(columns).items() if header not in ("clip", "note"))
    # Between two columns: one space of padding each side.
    return width - fixed - 2 * (len(columns) - 1)


# The narrowest a wrapping note column gets.
_NOTE = 12


def _confidence(row: dict[str, Any]) -> str:
    if not row["emotion"]:
        return ""
    return f"{row['confidence']:.2f}" + ("?" if row["uncertain"] else "")


def _note(row: dict[str, Any]) -> str:
    if row["status"] != "failed":
        return ""
    return safe.plain(f"{row['error_code'] or 'error'}: {row['error'] or ''}")


def _one_row_per_unfinished_clip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept, unfinished = [], set()
    for row in rows:
        if row["status"] != "done":
            key = (row["clip"], row["sha256"], row["status"])
            if key in unfinished:
                continue
            unfinished.add(key)
        kept.append(row)
    return kept


def _file_name(name: str) -> str:
    return name.rpartition("/")[2]


def shorten_path(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters where folders allow: folders are left out in the
    middle ("first/…/last/file.wav", then "…/last/file.wav"); the file name is never cut."""
    if len(name) <= width:
        return name
    folders, _, file = name.rpartition("/")
    parts = folders.split("/") if folders else []
    candidates = [file, f"…/{file}"]
    for keep in range(1, len(parts)):
        tail = "/".join([*parts[-keep:], file])
        candidates += [f"…/{tail}", f"{parts[0]}/…/{tail}" if keep < len(parts) - 1 else ""]
    fitting = [c for c in candidates if c and len(c) <= width]
    return max(fitting, key=len) if fitting else file


def print_submissions(listing: list[dict[str, Any]]) -> None:
    if not listing:
        console.print("no submissions yet; `ser-cli submit PATH` makes one")
        return
    # The adapted column (--adapt) only when some submission was.
    adapted = any(entry.get("adapted") for entry in listing)
    table_rows = [
        [
            entry["submission"][:SHORT_ID],
            entry["created_at"][:16].replace("T", " "),
            entry["kind"],
            *(["yes" if entry.get("adapted") else ""] if adapted else []),
            str(entry["clips"]),
            ", ".join(f"{n} {status}" for status, n in sorted(entry["counts"].items())),
            entry["model_version"] or "",
        ]
        for entry in listing
    ]
    out = Console()
    headers = (
        "id",
        "created (UTC)",
        "kind",
        *(["adapted"] if adapted else []),
        "clips",
        "status",
        "model version",
    )
    table = Table(*headers) if out.is_terminal else Table(*headers, box=None, pad_edge=False)
    if not out.is_terminal:
        out = Console(width=10_000, no_color=True)
    for cells in table_rows:
        table.add_row(*(Text(safe.plain(cell)) for cell in cells))
    out.print(table)
