"""One Parquet file from parts encoded at once: the footer codec against pyarrow's own footers and
metadata, the joined file against pyarrow and DuckDB reading it."""

from __future__ import annotations

import io
import struct

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spectra_attn.model import parquet_parts as pp

OPTIONS = dict(compression="zstd", use_dictionary=["sample_id"])


def example_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    values = rng.random(rows).astype(np.float32)
    values[::7] = np.nan  # nulls, as capture's undefined entropy
    return pa.table(
        {
            "sample_id": pa.array(np.repeat(np.arange(10, dtype=np.int32), -(-rows // 10))[:rows]),
            "head": pa.array(rng.integers(0, 32, rows).astype(np.int16)),
            "value": pa.array(values, from_pandas=True),
            "k": pa.array(rng.integers(0, 500, rows).astype(np.int32)),
            "name": pa.array([f"s{i % 13}" for i in range(rows)]),
            "tokens": pa.array([[i, i + 1][: i % 3] for i in range(rows)], pa.list_(pa.int32())),
        }
    ).replace_schema_metadata({"spectra_version": "test", "rope": "pre"})


def parquet_bytes(table: pa.Table, **options) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def raw_footer(data: bytes) -> bytes:
    (size,) = struct.unpack("<I", data[-8:-4])
    return data[-8 - size : -8]


def field(fields, field_id):
    return next(f[2] for f in fields if f[0] == field_id)


@pytest.mark.parametrize(
    "options",
    [
        OPTIONS,
        dict(compression="snappy", row_group_size=3000),
        dict(write_statistics=False),
        dict(row_group_size=10_000 // 15 + 1),  # a list of exactly 15: the long form's threshold
    ],
)
def test_a_footer_decodes_and_encodes_to_the_same_bytes(options):
    data = parquet_bytes(example_table(10_000), **options)
    body, footer = pp.split_part(data)
    assert pp.encode_struct(footer) == raw_footer(data)
    assert data[4 : 4 + len(body)] == body


def test_the_compact_protocol_by_hand():
    # Field 1 (delta 1) of type i32 holding -1 (zigzag 1); field 20 (long form, zigzag 40) of type
    # i64 holding -65 (zigzag 129 = 0x81 0x01); a list of 15 binaries (long form: 0xF8, then 15).
    fields = [(1, pp.I32, -1), (20, pp.I64, -65), (21, pp.LIST, (pp.BINARY, [b"a"] * 15))]
    encoded = bytes([0x15, 0x01, 0x06, 40, 0x81, 0x01, 0x19, 0xF8, 15]) + b"\x01a" * 15 + b"\x00"
    assert pp.encode_struct(fields) == encoded
    assert pp.decode_struct(encoded) == fields


def test_the_decoded_positions_are_those_pyarrow_reads():
    data = parquet_bytes(example_table(10_000), row_group_size=4000, **OPTIONS)
    _, footer = pp.split_part(data)
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    groups = field(footer, pp.FILE_METADATA_ROW_GROUPS)[1]
    assert len(groups) == metadata.num_row_groups == 3
    assert field(footer, pp.FILE_METADATA_NUM_ROWS) == 10_000
    for i, group in enumerate(groups):
        expected = metadata.row_group(i)
        assert field(group, 3) == expected.num_rows
        chunks = field(group, pp.ROW_GROUP_COLUMNS)[1]
        assert len(chunks) == expected.num_columns
        for j, chunk in enumerate(chunks):
            column = expected.column(j)
            meta = field(chunk, pp.COLUMN_CHUNK_META_DATA)
            assert field(chunk, pp.COLUMN_CHUNK_FILE_OFFSET) == column.file_offset
            assert field(meta, 9) == column.data_page_offset
            dictionary = next((v for i, _, v in meta if i == 11), None)
            assert dictionary == column.dictionary_page_offset
            assert field(meta, 7) == column.total_compressed_size
            assert field(meta, 5) == column.num_values


def write_joined(path, parts: list[pa.Table], threads: int, **options) -> None:
    with pp.PartsWriter(path, parts[0].schema, threads, **(options or OPTIONS)) as writer:
        writer.write_parts([lambda part=part: part for part in parts[:3]])
        writer.write_parts([lambda part=part: part for part in parts[3:]])


def test_joined_parts_read_back_as_the_whole_table_in_pyarrow_and_duckdb(tmp_path):
    table = example_table(50_000)
    parts = [table.slice(start, 5_000) for start in range(0, 50_000, 5_000)]
    path = tmp_path / "joined.parquet"
    write_joined(path, parts, threads=3)

    joined = pq.ParquetFile(path)
    assert joined.metadata.num_rows == 50_000
    assert joined.metadata.num_row_groups == 10
    assert joined.schema_arrow.metadata == table.schema.metadata
    assert joined.read().equals(table)
    for i, part in enumerate(parts):  # each row group at the position its footer gives
        assert joined.read_row_group(i).equals(part)

    got = (
        duckdb.connect()
        .execute(
            f"SELECT count(*), count(value), sum(value), sum(k), sum(head), count(DISTINCT name), "
            f"sum(len(tokens)) FROM '{path}'"
        )
        .fetchone()
    )
    values = table["value"].to_numpy(zero_copy_only=False)
    assert got[:2] == (50_000, int(np.isfinite(values).sum()))
    assert got[2] == pytest.approx(float(np.nansum(values.astype(np.float64))), rel=1e-12)
    assert got[3:] == (
        int(table["k"].to_numpy().sum()),
        int(table["head"].to_numpy().astype(np.int64).sum()),
        13,
        sum(i % 3 for i in range(50_000)),
    )


def test_the_bytes_do_not_depend_on_the_number_of_threads(tmp_path):
    table = example_table(30_000)
    parts = [table.slice(start, 4_000) for start in range(0, 30_000, 4_000)]
    write_joined(tmp_path / "one.parquet", parts, threads=1)
    write_joined(tmp_path / "four.parquet", parts, threads=4)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "four.parquet").read_bytes()


def test_a_part_beyond_pyarrows_row_group_size_keeps_all_its_row_groups(tmp_path):
    big = pa.table({"x": pa.array(np.arange(1_100_000, dtype=np.int32))})
    path = tmp_path / "big.parquet"
    write_joined(path, [big.slice(0, 10), big.slice(10)], threads=2, compression="zstd")
    joined = pq.ParquetFile(path)
    assert joined.metadata.num_row_groups == 3  # 10 rows, then 1,048,576 + the rest
    assert joined.read().equals(big)
    total = duckdb.connect().execute(f"SELECT sum(x::BIGINT) FROM '{path}'").fetchone()[0]
    assert total == sum(range(1_100_000))


def test_no_parts_give_an_empty_file_with_the_schema(tmp_path):
    schema = example_table(1).schema
    with pp.PartsWriter(tmp_path / "empty.parquet", schema, 2, **OPTIONS):
        pass
    empty = pq.read_table(tmp_path / "empty.parquet")
    assert empty.num_rows == 0
    written_by_pyarrow = pq.read_table(io.BytesIO(parquet_bytes(schema.empty_table())))
    assert empty.schema.equals(written_by_pyarrow.schema, check_metadata=True)


def test_row_groups_move_by_the_given_distance_and_are_numbered_in_order():
    def group(offset):
        meta = [(1, pp.I32, 1), (9, pp.I64, offset + 30), (11, pp.I64, offset + 4)]
        chunk = [(2, pp.I64, offset + 90), (3, pp.STRUCT, meta)]
        return [(1, pp.LIST, (pp.STRUCT, [chunk])), (3, pp.I64, 5), (5, pp.I64, offset + 4)]

    footer = [(4, pp.LIST, (pp.STRUCT, [group(0), group(100)]))]
    moved = pp.shift_row_groups(
        [(4, pp.LIST, (pp.STRUCT, [g + [(7, pp.I16, 0)] for g in field(footer, 4)[1]]))],
        1000,
        first_ordinal=5,
    )
    assert [field(g, 5) for g in moved] == [1004, 1104]
    assert [field(g, 7) for g in moved] == [5, 6]
    chunks = [field(g, 1)[1][0] for g in moved]
    assert [field(c, 2) for c in chunks] == [1090, 1190]
    assert [(field(field(c, 3), 9), field(field(c, 3), 11)) for c in chunks] == [
        (1030, 1004),
        (1130, 1104),
    ]
    assert [field(field(c, 3), 1) for c in chunks] == [1, 1]  # not a position: unchanged
    assert pp.decode_struct(pp.encode_struct(moved[0])) == moved[0]


def test_parts_whose_footers_hold_other_positions_are_refused():
    with pytest.raises(pp.ParquetPartError, match="write_page_index"):
        pp.PartsWriter("unused", example_table(1).schema, write_page_index=True)
    data = parquet_bytes(example_table(1000), write_page_index=True)
    _, footer = pp.split_part(data)
    with pytest.raises(pp.ParquetPartError, match="offset index"):
        pp.shift_row_groups(footer, 10, 0)


def test_parts_with_another_schema_are_refused(tmp_path):
    table = example_table(100)
    writer = pp.PartsWriter(tmp_path / "x.parquet", table.schema, 1)
    writer.write_parts([lambda: table])
    with pytest.raises(pp.ParquetPartError, match="different schemas"):
        writer._append(parquet_bytes(table.drop_columns(["name"])))
    writer.abort()


def test_what_is_not_a_parquet_file_is_named():
    with pytest.raises(pp.ParquetPartError, match="not a Parquet file"):
        pp.split_part(b"PAR1 something else entirely")
    data = parquet_bytes(example_table(10))
    with pytest.raises(pp.ParquetPartError):
        pp.split_part(data[:-8] + struct.pack("<I", len(data)) + b"PAR1")
