"""The original project's CSV of capture's rows, for scripts written against the original project.

Kept apart from :mod:`spectra_attn.model.capture` so that exporting needs only pyarrow (the rule
runs in the data environment, without torch or numba).
"""

from __future__ import annotations

import logging

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from spectra_attn.columns import ORIGINAL_CSV_COLUMNS
from spectra_attn.io import atomic_path

logger = logging.getLogger(__name__)


def export_original_csv(parts: list[str], out_path: str) -> None:
    """Concatenate capture parts into the original project's CSV format, atomically, part by
    part."""
    rows = 0
    with atomic_path(out_path) as tmp:
        writer = None
        for part in parts:
            table = pq.read_table(part, columns=list(ORIGINAL_CSV_COLUMNS))
            if writer is None:
                writer = pacsv.CSVWriter(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is not None:
            writer.close()
    logger.info("wrote %d rows to %s from %d parts", rows, out_path, len(parts))
