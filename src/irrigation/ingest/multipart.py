"""The `file` part of a multipart/form-data upload, streamed: its bytes are passed on as they
arrive, so an upload of any size is never held in memory (nor spooled to a temporary file,
as Starlette's form parser would) before the import stores it."""

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from irrigation.common.errors import Invalid

FILE_FIELD = "file"
# A part's headers are a few short lines; anything larger is not a form a client would send.
MAX_HEADER_BYTES = 8 * 1024
MAX_HEADER_COUNT = 16


@dataclass
class _PartHeaders:
    name: str = ""
    filename: str | None = None
    content_type: str | None = None


@dataclass
class FilePart:
    """The `file` part's own headers, and its bytes still to be read from the request."""

    filename: str | None
    content_type: str | None
    chunks: AsyncIterator[bytes]


# Events of the parser, in the order they occur: a part's headers, a piece of its data, its
# end. The callbacks of python-multipart only record them; the generators below act on them.
_Event = tuple[str, _PartHeaders | bytes | None]


class _Recorder:
    def __init__(self, boundary: bytes) -> None:
        self.events: list[_Event] = []
        self.is_finished = False
        self._headers = _PartHeaders()
        self._field = bytearray()
        self._value = bytearray()
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": lambda: self.events.append(("end", None)),
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": lambda: self.events.append(("part", self._headers)),
                "on_end": self._end,
            },
            max_header_count=MAX_HEADER_COUNT,
            max_header_size=MAX_HEADER_BYTES,
        )

    def _part_begin(self) -> None:
        self._headers = _PartHeaders()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.events.append(("data", bytes(data[start:end])))

    def _header_end(self) -> None:
        name = bytes(self._field).strip().lower()
        value, options = parse_options_header(bytes(self._value))
        if name == b"content-disposition":
            self._headers.name = options.get(b"name", b"").decode("latin-1")
            filename = options.get(b"filename")
            self._headers.filename = filename.decode("utf-8", "replace") if filename else None
        elif name == b"content-type":
            self._headers.content_type = value.decode("latin-1") or None
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self.is_finished = True


def _boundary(content_type: str) -> bytes:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise Invalid("a multipart/form-data body needs a `boundary` in its Content-Type")
    return boundary


async def _events(body: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[_Event]:
    try:
        recorder = _Recorder(boundary)
    except FormParserError as exc:  # a boundary longer than any client makes
        raise Invalid(f"the multipart boundary is not usable: {exc}") from None
    async for chunk in body:
        try:
            recorder.parser.write(chunk)
        except FormParserError as exc:
            raise Invalid(f"the multipart body is malformed: {exc}", field="body") from None
        events, recorder.events = recorder.events, []
        for event in events:
            yield event
        if recorder.is_finished:
            return
    # Without its closing boundary the body was cut short: the file may be too.
    raise Invalid("the multipart body ended before its closing boundary", field="body")


async def open_file_part(body: AsyncIterator[bytes], content_type: str) -> FilePart:
    """Read up to the headers of the `file` part (other parts are skipped); its data then
    streams from `FilePart.chunks`, which ends only once the whole body is read and valid."""
    events = _events(body, _boundary(content_type))
    async for kind, value in events:
        if kind == "part" and isinstance(value, _PartHeaders) and value.name == FILE_FIELD:
            return FilePart(value.filename, value.content_type, _file_data(events))
    raise Invalid(f"the multipart body has no `{FILE_FIELD}` part", field=f"body.{FILE_FIELD}")


async def _file_data(events: AsyncIterator[_Event]) -> AsyncIterator[bytes]:
    async for kind, value in events:
        if kind == "end":
            break
        if isinstance(value, bytes):
            yield value
    async for kind, value in events:
        if kind == "part" and isinstance(value, _PartHeaders) and value.name == FILE_FIELD:
            raise Invalid(f"only one `{FILE_FIELD}` part may be sent", field=f"body.{FILE_FIELD}")
