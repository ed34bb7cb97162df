"""One Parquet file whose row groups are encoded on several threads at once.

pyarrow's ``ParquetWriter`` encodes and compresses a file's row groups one after the other on one
thread; at capture's row rates on a GPU that thread, not the GPU, can bound the job
(benchmarks/RESULTS.md). :class:`PartsWriter` encodes each row group (or run of row groups) as a
standalone Parquet file in memory, on a pool of threads (pyarrow releases the GIL while it
encodes), then appends their bytes to the output in order and ends the file with one footer that
lists every row group. In a Parquet file only the footer holds absolute positions (the pages that
a column chunk consists of only know their own sizes), so moving a part's bytes means shifting the
positions in its footer's row groups by how far the bytes moved; nothing else changes, and the
result is the file that a single writer with the same options would have written, up to where the
row groups lie. The bytes do not depend on the number of threads.

The footer is Thrift (compact protocol); :func:`decode_struct` and :func:`encode_struct` read and
write it losslessly (every field kept as it came, in order), so only the positions this module
knows about change. Parts with what this module would not know how to move (a page index, bloom
filters, column chunks in other files, encryption) are refused rather than written wrongly.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MAGIC = b"PAR1"

# Thrift compact protocol type codes (in a struct's field headers; bools carry their value).
BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)
_INTEGERS = (BYTE, I16, I32, I64)

# Field ids of parquet.thrift (apache/parquet-format) that hold positions in the file.
FILE_METADATA_SCHEMA, FILE_METADATA_NUM_ROWS, FILE_METADATA_ROW_GROUPS = 2, 3, 4
ROW_GROUP_COLUMNS, ROW_GROUP_FILE_OFFSET, ROW_GROUP_ORDINAL = 1, 5, 7
COLUMN_CHUNK_FILE_PATH, COLUMN_CHUNK_FILE_OFFSET, COLUMN_CHUNK_META_DATA = 1, 2, 3
COLUMN_CHUNK_PAGE_INDEX = {
    4: "an offset index",
    6: "a column index",
    8: "encrypted columns",
    9: "encrypted columns",
}
META_DATA_OFFSETS = (9, 10, 11)  # data_page_offset, index_page_offset, dictionary_page_offset
META_DATA_BLOOM_FILTER = 14
FILE_METADATA_ENCRYPTION = (8, 9)

# A field: (id, type code, value). A struct: a list of fields. A list or set: (element type,
# [values]). A map: (key type, value type, [(key, value)]).
Field = tuple[int, int, Any]


class ParquetPartError(ValueError):
    """A part's footer holds something whose positions this module does not know how to move."""


# -- Thrift compact protocol ----------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ParquetPartError("Parquet footer ends inside a value")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value


def _read_value(reader: _Reader, kind: int) -> Any:
    if kind in (BOOL_TRUE, BOOL_FALSE):  # an element of a list, set or map: one byte
        return reader.byte() == BOOL_TRUE
    if kind in _INTEGERS:
        if kind == BYTE:
            return struct.unpack("b", reader.take(1))[0]
        return reader.zigzag()
    if kind == DOUBLE:
        return struct.unpack("<d", reader.take(8))[0]
    if kind == BINARY:
        return reader.take(reader.varint())
    if kind in (LIST, SET):
        header = reader.byte()
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size = reader.varint()
        return (element, [_read_value(reader, element) for _ in range(size)])
    if kind == MAP:
        size = reader.varint()
        if size == 0:
            return (0, 0, [])
        types = reader.byte()
        key, value = types >> 4, types & 0x0F
        pairs = [(_read_value(reader, key), _read_value(reader, value)) for _ in range(size)]
        return (key, value, pairs)
    if kind == STRUCT:
        return _read_struct(reader)
    raise ParquetPartError(f"unknown Thrift compact type {kind} in a Parquet footer")


def _read_struct(reader: _Reader) -> list[Field]:
    fields: list[Field] = []
    last = 0
    while True:
        header = reader.byte()
        if header == 0:
            return fields
        delta, kind = header >> 4, header & 0x0F
        field_id = last + delta if delta else reader.zigzag()
        if kind in (BOOL_TRUE, BOOL_FALSE):
            value: Any = kind == BOOL_TRUE
        else:
            value = _read_value(reader, kind)
        fields.append((field_id, kind, value))
        last = field_id


def decode_struct(data: bytes) -> list[Field]:
    """A Thrift struct in the compact protocol (a Parquet footer), field by field."""
    reader = _Reader(data)
    fields = _read_struct(reader)
    if reader.pos != len(data):
        raise ParquetPartError(f"{len(data) - reader.pos} bytes after the Parquet footer's end")
    return fields


def _varint(out: bytearray, value: int) -> None:
    while True:
        if value < 0x80:
            out.append(value)
            return
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def _zigzag(out: bytearray, value: int) -> None:
    _varint(out, (value << 1) ^ (value >> 63))


def _write_value(out: bytearray, kind: int, value: Any) -> None:
    if kind in (BOOL_TRUE, BOOL_FALSE):
        out.append(BOOL_TRUE if value else BOOL_FALSE)
    elif kind == BYTE:
        out += struct.pack("b", value)
    elif kind in _INTEGERS:
        _zigzag(out, value)
    elif kind == DOUBLE:
        out += struct.pack("<d", value)
    elif kind == BINARY:
        _varint(out, len(value))
        out += value
    elif kind in (LIST, SET):
        element, values = value
        if len(values) < 15:
            out.append(len(values) << 4 | element)
        else:
            out.append(0xF0 | element)
            _varint(out, len(values))
        for item in values:
            _write_value(out, element, item)
    elif kind == MAP:
        key, value_kind, pairs = value
        _varint(out, len(pairs))
        if pairs:
            out.append(key << 4 | value_kind)
            for k, v in pairs:
                _write_value(out, key, k)
                _write_value(out, value_kind, v)
    elif kind == STRUCT:
        _write_struct(out, value)
    else:
        raise ParquetPartError(f"unknown Thrift compact type {kind}")


def _write_struct(out: bytearray, fields: list[Field]) -> None:
    last = 0
    for field_id, kind, value in fields:
        if kind in (BOOL_TRUE, BOOL_FALSE):
            kind = BOOL_TRUE if value else BOOL_FALSE
        delta = field_id - last
        if 0 < delta <= 15:
            out.append(delta << 4 | kind)
        else:
            out.append(kind)
            _zigzag(out, field_id)
        if kind not in (BOOL_TRUE, BOOL_FALSE):
            _write_value(out, kind, value)
        last = field_id
    out.append(0)


def encode_struct(fields: list[Field]) -> bytes:
    """The inverse of :func:`decode_struct`."""
    out = bytearray()
    _write_struct(out, fields)
    return bytes(out)


# -- Parquet parts --------------------------------------------------------------------------------
def _field(fields: list[Field], field_id: int) -> Field | None:
    return next((f for f in fields if f[0] == field_id), None)


def _replace(fields: list[Field], field_id: int, value: Any) -> list[Field]:
    return [(i, kind, value if i == field_id else v) for i, kind, v in fields]


def split_part(data: bytes) -> tuple[memoryview, list[Field]]:
    """A whole Parquet file in memory → (the bytes between the leading magic and the footer, as a
    view: a part can be tens of MB, and it is only written out, not copied; the decoded footer)."""
    if len(data) < 12 or data[:4] != MAGIC or data[-4:] != MAGIC:
        raise ParquetPartError("not a Parquet file (no PAR1 magic at both ends)")
    (footer_size,) = struct.unpack("<I", data[-8:-4])
    footer_start = len(data) - 8 - footer_size
    if footer_start < 4:
        raise ParquetPartError("Parquet footer length points before the file's start")
    return memoryview(data)[4:footer_start], decode_struct(data[footer_start:-8])


def shift_row_groups(footer: list[Field], delta: int, first_ordinal: int) -> list[list[Field]]:
    """The footer's row groups with every position moved by ``delta`` bytes and their ordinals
    numbered from ``first_ordinal``."""
    for field_id in FILE_METADATA_ENCRYPTION:
        if _field(footer, field_id) is not None:
            raise ParquetPartError("encrypted Parquet parts cannot be joined")
    row_groups = _field(footer, FILE_METADATA_ROW_GROUPS)
    moved = []
    for index, row_group in enumerate(row_groups[2][1] if row_groups else []):
        columns = []
        for chunk in _field(row_group, ROW_GROUP_COLUMNS)[2][1]:
            for field_id, what in COLUMN_CHUNK_PAGE_INDEX.items():
                if _field(chunk, field_id) is not None:
                    raise ParquetPartError(f"a Parquet part with {what} cannot be joined")
            if _field(chunk, COLUMN_CHUNK_FILE_PATH) is not None:
                raise ParquetPartError(
                    "a Parquet part with column chunks in other files cannot be joined"
                )
            new_chunk = []
            for field_id, kind, value in chunk:
                if field_id == COLUMN_CHUNK_FILE_OFFSET:
                    value += delta
                elif field_id == COLUMN_CHUNK_META_DATA:
                    if _field(value, META_DATA_BLOOM_FILTER) is not None:
                        raise ParquetPartError("a Parquet part with bloom filters cannot be joined")
                    value = [
                        (i, k, v + delta if i in META_DATA_OFFSETS else v) for i, k, v in value
                    ]
                new_chunk.append((field_id, kind, value))
            columns.append(new_chunk)
        group = []
        for field_id, kind, value in row_group:
            if field_id == ROW_GROUP_COLUMNS:
                value = (value[0], columns)
            elif field_id == ROW_GROUP_FILE_OFFSET:
                value += delta
            elif field_id == ROW_GROUP_ORDINAL:
                value = first_ordinal + index
            group.append((field_id, kind, value))
        moved.append(group)
    return moved


class PartsWriter:
    """Writes one Parquet file from parts encoded on ``threads`` threads at once.

    ``write_parts(makers)``: each maker returns a pyarrow Table that becomes the next row group
    (or row groups, beyond pyarrow's row group size); tables are built and encoded in parallel,
    written in the makers' order, and the call returns when all of them are in the file.
    ``writer_options`` go to ``pyarrow.parquet.ParquetWriter`` for every part, so each row group is
    encoded as a single writer with these options would; the file's schema, key-value metadata and
    created_by come from the first part (every part must have the same schema).
    """

    def __init__(self, path: str | Path, schema, threads: int = 1, **writer_options):
        for option in ("write_page_index", "bloom_filter_options", "encryption_properties"):
            if writer_options.get(option):
                raise ParquetPartError(f"PartsWriter cannot join parts written with {option}")
        self.schema = schema
        # Explicit, should pyarrow's default change: a page index holds positions too.
        self.options = {"write_page_index": False, **writer_options}
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="spectra-encode")
        self._file = open(path, "wb")  # noqa: SIM115 — closed by close()
        self._file.write(MAGIC)
        self._head: list[Field] | None = None  # the first part's footer
        self._row_groups: list[list[Field]] = []
        self._rows = 0
        self._closed = False

    def _encode(self, make: Callable[[], Any]) -> bytes:
        import pyarrow.parquet as pq

        table = make()
        buffer = io.BytesIO()
        with pq.ParquetWriter(buffer, self.schema, **self.options) as writer:
            writer.write_table(table)
        return buffer.getvalue()

    def write_parts(self, makers: Iterable[Callable[[], Any]]) -> None:
        # In order, each as soon as it and those before it are encoded.
        for data in self._pool.map(self._encode, makers):
            self._append(data)

    def _append(self, data: bytes) -> None:
        body, footer = split_part(data)
        if self._head is None:
            self._head = footer
        elif _field(footer, FILE_METADATA_SCHEMA) != _field(self._head, FILE_METADATA_SCHEMA):
            raise ParquetPartError("Parquet parts with different schemas cannot be joined")
        position = self._file.tell()
        self._row_groups += shift_row_groups(footer, position - len(MAGIC), len(self._row_groups))
        self._rows += _field(footer, FILE_METADATA_NUM_ROWS)[2]
        self._file.write(body)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pool.shutdown()
            if self._head is None:  # no part: an empty table's file, footer and all
                self._append(self._encode(lambda: self.schema.empty_table()))
            footer = _replace(self._head, FILE_METADATA_NUM_ROWS, self._rows)
            if _field(footer, FILE_METADATA_ROW_GROUPS) is None:
                raise ParquetPartError("Parquet part without row groups field")
            footer = _replace(footer, FILE_METADATA_ROW_GROUPS, (STRUCT, self._row_groups))
            encoded = encode_struct(footer)
            self._file.write(encoded + struct.pack("<I", len(encoded)) + MAGIC)
        finally:
            self._file.close()

    def abort(self) -> None:
        """Stop without a footer (the caller discards the file)."""
        self._closed = True
        self._pool.shutdown(cancel_futures=True)
        self._file.close()

    def __enter__(self) -> PartsWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
