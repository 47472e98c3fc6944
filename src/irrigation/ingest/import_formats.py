"""History file formats, NDJSON and CSV: the checks a file's start must pass, and reading
a file line by line into readings and parse_error rejects (plain blocking code, run in a
thread).

Items are the file's data lines (every line after the CSV header, blank ones included), so
`total`, `processed` and a quarantined item's `item_index` (0-based) all count the same
things: NDJSON line number = item_index + 1, CSV line number = item_index + 2. A record can
therefore never span lines (no quoted newlines in CSV)."""

import csv
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import TypeAdapter, ValidationError

from irrigation.common.errors import Invalid
from irrigation.ingest.models import QuarantineReason
from irrigation.ingest.schemas import ReadingIn
from irrigation.ingest.validation import Rejected, parse_items

# A line longer than this is a parse_error, read past in bounded pieces: a file without
# newlines never ends up in memory whole.
MAX_LINE_BYTES = 64 * 1024
RAW_TEXT_CHARS = 1_000
READ_BLOCK = 1024 * 1024
BOM = b"\xef\xbb\xbf"


class ImportFormat(StrEnum):
    ndjson = "ndjson"
    csv = "csv"


CSV_REQUIRED = ("sensor_id", "ts", "value")
CSV_OPTIONAL = ("unit", "quality")


def check_start(path: Path, file_format: ImportFormat) -> None:
    """422 for what no line-by-line quarantine can help: an empty file, a CSV without a
    usable header or without rows."""
    with path.open("rb") as f:
        first = f.readline(MAX_LINE_BYTES + 1).removeprefix(BOM)
        rest = f.read(MAX_LINE_BYTES)
    if not (first + rest).strip() and len(rest) < MAX_LINE_BYTES:
        raise Invalid("the file is empty", field="body")
    if file_format == ImportFormat.csv:
        _csv_columns(first)
        if not rest:
            raise Invalid("the CSV file has a header but no rows", field="body")


def _csv_columns(header: bytes) -> list[str]:
    try:
        columns = [c.strip() for c in next(csv.reader((header.decode("utf-8"),)), [])]
    except (UnicodeDecodeError, csv.Error):
        columns = []
    expected = f"{','.join(CSV_REQUIRED)}[,unit][,quality]"
    missing = [c for c in CSV_REQUIRED if c not in columns]
    unknown = [c for c in columns if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown or len(set(columns)) != len(columns):
        raise Invalid(
            f"the CSV header must name the columns {expected} (any order); got {columns}",
            field="body",
        )
    return columns


# Reading the file ---------------------------------------------------------------------------


def count_lines(path: Path, file_format: ImportFormat) -> int:
    """Data lines, by counting newlines in 1 MiB blocks (about a second per GiB)."""
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(0, lines - 1) if file_format == ImportFormat.csv else lines


def _next_line(f: BinaryIO) -> bytes | None:
    """The next line, b"" at the end, None for a line too long (read past, not kept)."""
    line = f.readline(MAX_LINE_BYTES + 1)
    if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
        return line
    while (more := f.readline(MAX_LINE_BYTES)) and not more.endswith(b"\n"):
        pass
    return None


@dataclass
class Reader:
    file: BinaryIO
    file_format: ImportFormat
    columns: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, file_format: ImportFormat, skip: int) -> "Reader":
        f = path.open("rb")
        try:
            if f.peek(len(BOM))[: len(BOM)] == BOM:
                f.read(len(BOM))
            reader = cls(f, file_format)
            if file_format == ImportFormat.csv:
                reader.columns = _csv_columns(_next_line(f) or b"")
            for _ in range(skip):
                if _next_line(f) == b"":
                    break
        except BaseException:
            f.close()
            raise
        return reader

    def next_chunk(self, size: int) -> list[ReadingIn | Rejected]:
        lines: list[bytes | None] = []
        while len(lines) < size and (line := _next_line(self.file)) != b"":
            lines.append(line)
        if self.file_format == ImportFormat.csv:
            return _parse_csv(lines, self.columns)
        return _parse_ndjson(lines)

    def close(self) -> None:
        self.file.close()


_readings = TypeAdapter(list[ReadingIn])


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")[:RAW_TEXT_CHARS]


def _parse_error(position: int, raw: Any, detail: str) -> Rejected:
    return Rejected(position, raw, QuarantineReason.parse_error, detail)


def _too_long(position: int) -> Rejected:
    return _parse_error(position, None, f"line is longer than {MAX_LINE_BYTES} bytes")


def _parse_ndjson(lines: list[bytes | None]) -> list[ReadingIn | Rejected]:
    if None not in lines:
        # A clean chunk is one call into pydantic-core. The count check catches a line
        # holding two values ("{...},{...}"), which would shift every item after it.
        try:
            joined = b"[" + b",".join(line for line in lines if line is not None) + b"]"
            typed = _readings.validate_json(joined)
            if len(typed) == len(lines):
                return list(typed)
        except ValidationError:
            pass
    raw_items: list[Any] = []
    rejected: dict[int, Rejected] = {}
    for position, line in enumerate(lines):
        if line is None:
            rejected[position] = _too_long(position)
            continue
        try:
            raw_items.append(json.loads(line))
        except ValueError as exc:
            rejected[position] = _parse_error(position, _text(line), f"not valid JSON: {exc}")
    return _merge(len(lines), rejected, raw_items)


def _parse_csv(lines: list[bytes | None], columns: list[str]) -> list[ReadingIn | Rejected]:
    raw_items: list[Any] = []
    rejected: dict[int, Rejected] = {}
    for position, line in enumerate(lines):
        if line is None:
            rejected[position] = _too_long(position)
            continue
        try:
            # One reader per line: an unclosed quote must not swallow the lines after it.
            fields = next(csv.reader((line.decode("utf-8").rstrip("\r\n"),), strict=True), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            rejected[position] = _parse_error(position, _text(line), f"not valid CSV: {exc}")
            continue
        if len(fields) != len(columns):
            rejected[position] = _parse_error(
                position, _text(line), f"expected {len(columns)} fields, got {len(fields)}"
            )
            continue
        # An empty optional field means "not given" (unit unchecked, quality 100).
        raw_items.append(
            {
                name: _cell(name, value.strip())
                for name, value in zip(columns, fields, strict=True)
                if value.strip() or name in CSV_REQUIRED
            }
        )
    return _merge(len(lines), rejected, raw_items)


def _cell(name: str, text: str) -> Any:
    """CSV has no types: numbers are converted here, since ReadingIn is strict about them
    (a cell that does not convert stays text and fails validation as a parse_error)."""
    convert = {"value": float, "quality": int}.get(name)
    if convert is None:
        return text
    try:
        return convert(text)
    except ValueError:
        return text


def _merge(
    count: int, rejected: dict[int, Rejected], raw_items: list[Any]
) -> list[ReadingIn | Rejected]:
    """Line-level rejects back in their places among the items parse_items judged."""
    judged = iter(parse_items(raw_items))
    return [rejected[p] if p in rejected else next(judged) for p in range(count)]
