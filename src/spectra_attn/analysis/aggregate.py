"""Aggregation of capture Parquet parts in DuckDB, as map (one partial per capture part) and
reduce (merge of the partials), so it runs on many machines and past one machine's memory.

Partials merge exactly:
* per (layer, head) and metric: count n, mean and M2 = Σ(x − mean)², merged with Chan et al.'s
  formula  n = Σnᵢ,  mean = Σnᵢ·meanᵢ / n,  M2 = Σ[M2ᵢ + nᵢ(meanᵢ − mean)²];
* the co-moment C = Σ(x − x̄)(y − ȳ) of query_norm and entropy over rows where both are defined,
  merged the same way (C = Σ[Cᵢ + nᵢ(x̄ᵢ − x̄)(ȳᵢ − ȳ)]), giving Pearson's r = C / √(M2ₓ·M2ᵧ);
* fixed-bin histograms (bin edges fixed in advance, so counts add): quantiles of k_eff are exact
  (one bin per integer), the others are read off the histogram to within one bin width;
* per-position sums and counts.
Spearman's ρ needs every row's rank, which no partial carries: the reduce step computes it from
the parts themselves with DuckDB window functions (which spill to disk past memory).

Byte-reproducible: the exports and the partials are the same bytes on every rerun and for any
number of DuckDB threads. Floating-point addition is not associative, and DuckDB's parallel
aggregates add in whatever order its threads finish (two reruns gave Spearman ρ
−0.4649273625507004 and −0.4649273625507025). So
* the float sums run on one DuckDB thread, which adds in scan order (the part's rows in file
  order; the partials in the order given): the map step (one per part, the parts themselves run
  in parallel as jobs) and the merges of the small partials;
* Spearman's ρ, the one heavy query (a sort of every row per head), keeps its threads but adds
  integers only: with a = 2·(average rank of x) = rank + (number of rows ≤ x), an integer, and b
  likewise for y, ρ = (nΣab − ΣaΣb) / √((nΣa² − (Σa)²)(nΣb² − (Σb)²)), the sums exact in HUGEINT
  (in any order), converted to float once;
* the rest (std, Pearson's r, quantiles) is numpy on those results, in a fixed order.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from spectra_attn.io import atomic_dir, atomic_path, remove_stale_temporaries
from spectra_attn.provenance import write_duckdb

logger = logging.getLogger(__name__)

METRICS = ("query_norm", "entropy", "max_attn", "k_eff", "sink_attn")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUERY_NORM_RANGE = (1e-3, 1e4)  # log-spaced bins; values outside land in the end bins


def histogram_edges(metric: str, context_length: int, bins: int) -> np.ndarray:
    """Fixed bin edges of ``metric`` (``bins + 1`` edges; k_eff: one bin per integer)."""
    if metric == "k_eff":
        return np.arange(0.5, context_length + 1.5)
    if metric == "query_norm":
        return np.geomspace(*QUERY_NORM_RANGE, bins + 1)
    upper = math.log(context_length) if metric == "entropy" else 1.0
    return np.linspace(0.0, upper, bins + 1)


def _bin_expression(metric: str, edges: np.ndarray) -> str:
    """SQL for the bin index of ``metric``, clamped into [0, len(edges) − 2]."""
    last = len(edges) - 2
    if metric == "k_eff":
        raw = "k_eff - 1"
    elif metric == "query_norm":
        lo, hi = math.log(float(edges[0])), math.log(float(edges[-1]))
        raw = f"floor((ln(greatest(query_norm, 1e-30)) - {lo!r}) / {(hi - lo) / (last + 1)!r})"
    else:
        lo, hi = float(edges[0]), float(edges[-1])
        raw = f"floor(({metric} - {lo!r}) / {(hi - lo) / (last + 1)!r})"
    return f"least(greatest(TRY_CAST({raw} AS BIGINT), 0), {last})"


def connect(path: str = ":memory:", threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for the capture rows, with ``threads`` threads (DuckDB's default: one
    per core). Statistics propagation is off: it folds ``isnan(x)`` to false from Parquet min/max
    statistics, which ignore NaN, so NaNs would slip through as values (seen with DuckDB 2.0)."""
    con = duckdb.connect(path)
    con.execute("SET disabled_optimizers = 'statistics_propagation'")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    return con


def _rows_sql(files: list[str]) -> str:
    """The capture rows of ``files`` with float NaNs (undefined entropy) read as NULL."""
    listed = ", ".join(f"'{f}'" for f in files)
    cleaned = ", ".join(
        f"CASE WHEN isnan({m}) THEN NULL ELSE {m} END AS {m}" if m != "k_eff" else m
        for m in METRICS
    )
    return f"SELECT layer, head, token_pos, {cleaned} FROM read_parquet([{listed}])"


def partial_aggregate(
    part: str, out_dir: str | Path, context_length: int, bins: int = 1000
) -> None:
    """Map step: the mergeable aggregates of one capture part, as three Parquet files in
    ``out_dir`` (moments.parquet, histograms.parquet, positions.parquet), written atomically
    (into a temporary folder that replaces ``out_dir``). One DuckDB thread: its float sums add
    in the rows' order, so a rerun writes the same bytes (see the module's docstring)."""
    with atomic_dir(out_dir) as tmp:
        con = connect(threads=1)
        try:
            # Decompress the part once: the three queries below would each scan the file again.
            con.execute(f"CREATE TABLE part AS {_rows_sql([part])}")
            rows, heads = con.execute(
                "SELECT count(*), count(DISTINCT (layer, head)) FROM part"
            ).fetchone()
            moments = ", ".join(
                f"count({m}) AS {m}_n, avg({m}) AS {m}_mean, "
                f"coalesce(var_pop({m}), 0) * count({m}) AS {m}_m2"
                for m in METRICS
            )
            paired = "query_norm IS NOT NULL AND entropy IS NOT NULL"
            con.execute(
                f"""COPY (
                    SELECT layer, head, count(*) AS rows, {moments},
                        count(*) FILTER (WHERE {paired}) AS pair_n,
                        avg(query_norm) FILTER (WHERE {paired}) AS pair_mean_x,
                        avg(entropy) FILTER (WHERE {paired}) AS pair_mean_y,
                        coalesce(var_pop(query_norm) FILTER (WHERE {paired}), 0)
                            * count(*) FILTER (WHERE {paired}) AS pair_m2_x,
                        coalesce(var_pop(entropy) FILTER (WHERE {paired}), 0)
                            * count(*) FILTER (WHERE {paired}) AS pair_m2_y,
                        coalesce(covar_pop(query_norm, entropy) FILTER (WHERE {paired}), 0)
                            * count(*) FILTER (WHERE {paired}) AS pair_c
                    FROM part GROUP BY layer, head ORDER BY layer, head
                ) TO '{tmp / "moments.parquet"}' (FORMAT parquet)"""
            )
            histogram_queries = [
                f"""SELECT layer, head, '{m}' AS metric, bin, count(*) AS count FROM (
                        SELECT layer, head,
                            {_bin_expression(m, histogram_edges(m, context_length, bins))} AS bin
                        FROM part WHERE {m} IS NOT NULL)
                    WHERE bin IS NOT NULL GROUP BY ALL"""
                for m in METRICS
            ]
            con.execute(
                f"""COPY (SELECT * FROM ({" UNION ALL ".join(histogram_queries)}) ORDER BY ALL)
                    TO '{tmp / "histograms.parquet"}' (FORMAT parquet)"""
            )
            sums = ", ".join(f"count({m}) AS {m}_n, sum({m}) AS {m}_sum" for m in METRICS)
            con.execute(
                f"""COPY (
                    SELECT layer, head, token_pos, {sums} FROM part
                    GROUP BY layer, head, token_pos ORDER BY layer, head, token_pos
                ) TO '{tmp / "positions.parquet"}' (FORMAT parquet)"""
            )
        finally:
            con.close()
    logger.info("aggregated %d rows of %d heads from %s into %s", rows, heads, part, out_dir)


def _merge_moments(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Chan's merge of the per-part moments (view ``moments``)."""
    columns = []
    for m in METRICS:
        columns.append(f"sum({m}_n) AS {m}_count")
        columns.append(f"sum({m}_n * {m}_mean) / nullif(sum({m}_n), 0) AS {m}_mean")
    merged = ", ".join(columns)
    con.execute(
        f"""CREATE TABLE merged AS
            SELECT layer, head, sum(rows) AS rows, {merged},
                sum(pair_n) AS pair_n,
                sum(pair_n * pair_mean_x) / nullif(sum(pair_n), 0) AS pair_mean_x,
                sum(pair_n * pair_mean_y) / nullif(sum(pair_n), 0) AS pair_mean_y
            FROM moments GROUP BY layer, head"""
    )
    m2 = ", ".join(
        f"sum(p.{m}_m2 + p.{m}_n * power(coalesce(p.{m}_mean, 0) - coalesce(g.{m}_mean, 0), 2))"
        f" AS {m}_m2"
        for m in METRICS
    )
    return con.execute(
        f"""SELECT g.*, {m2},
                sum(p.pair_m2_x + p.pair_n * power(coalesce(p.pair_mean_x - g.pair_mean_x, 0), 2))
                    AS pair_m2_x,
                sum(p.pair_m2_y + p.pair_n * power(coalesce(p.pair_mean_y - g.pair_mean_y, 0), 2))
                    AS pair_m2_y,
                sum(p.pair_c + p.pair_n * coalesce((p.pair_mean_x - g.pair_mean_x)
                    * (p.pair_mean_y - g.pair_mean_y), 0)) AS pair_c
            FROM moments p JOIN merged g USING (layer, head)
            GROUP BY ALL ORDER BY layer, head"""
    ).df()


def histogram_quantiles(
    counts: np.ndarray, edges: np.ndarray, quantiles=QUANTILES, discrete: bool = False
) -> np.ndarray:
    """Quantiles of the values behind ``counts`` ([groups, bins]), defined as numpy's default:
    linear interpolation between the order statistics around position q·(n − 1).

    Each order statistic is located in its bin; ``discrete`` bins hold a single value (their
    centre), so the result is exact; otherwise the c values of a bin are taken as evenly spread
    inside it, so each order statistic, and the quantile, is off by less than one bin width.
    """
    counts = np.asarray(counts, dtype=np.float64)
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1]
    rows = np.arange(counts.shape[0])

    def order_statistic(k: np.ndarray) -> np.ndarray:
        index = np.argmax(cumulative > k[:, None], axis=1)
        if discrete:
            return (edges[index] + edges[index + 1]) / 2
        before = np.where(index > 0, cumulative[rows, index - 1], 0.0)
        inside = np.maximum(counts[rows, index], 1.0)
        fraction = (k - before + 0.5) / inside
        return edges[index] + fraction * (edges[index + 1] - edges[index])

    result = np.full((counts.shape[0], len(quantiles)), np.nan)
    for j, q in enumerate(quantiles):
        position = q * np.maximum(total - 1, 0)
        low, high = np.floor(position), np.ceil(position)
        value_low, value_high = order_statistic(low), order_statistic(high)
        result[:, j] = value_low + (position - low) * (value_high - value_low)
    result[total == 0] = np.nan
    return result


EXPORTS = (
    "head_summary.parquet",
    "head_summary.csv",
    "position_profile.parquet",
    "position_profile.csv",
)


def reduce_aggregates(
    partial_dirs: list[str],
    parts: list[str],
    database: str | Path,
    exports: dict[str, str | Path] | str | Path,
    context_length: int,
    bins: int = 1000,
    threads: int | None = None,
    provenance: dict | None = None,
) -> pd.DataFrame:
    """Reduce step: merge the partials into ``database`` (DuckDB; tables head_summary,
    position_profile, histogram_counts) and export the summaries as Parquet and CSV: ``exports``
    maps each name of :data:`EXPORTS` to its path (the rule's outputs), or is a folder that
    receives them under those names. ``parts`` (the capture parts) are read only for Spearman's
    ρ, whose sort runs on ``threads`` DuckDB threads (default: one per core); the merges run on
    one, so the exports are the same bytes for any ``threads``. Returns head_summary. On
    failure, no temporary database is left behind. ``provenance``
    (:mod:`spectra_attn.provenance`), if given, is the database's table of it."""
    if not isinstance(exports, dict):
        exports = {name: Path(exports) / name for name in EXPORTS}
    if sorted(exports) != sorted(EXPORTS):
        raise ValueError(f"exports must name exactly {', '.join(EXPORTS)}; got {sorted(exports)}")
    database = Path(database)
    database.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(database)  # and their .wal files
    handle, name = tempfile.mkstemp(prefix=f".{database.name}.", suffix=".tmp", dir=database.parent)
    os.close(handle)
    tmp_db = Path(name)
    tmp_db.unlink()  # DuckDB creates the database file itself
    con = connect(str(tmp_db))
    sort_threads = threads or con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.execute("SET threads = 1")  # float sums in the partials' order (module docstring)
    try:
        for name in ("moments", "histograms", "positions"):
            files = ", ".join(f"'{Path(d) / f'{name}.parquet'}'" for d in partial_dirs)
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{files}])")

        summary = _merge_moments(con)
        for m in METRICS:
            summary[f"{m}_std"] = np.sqrt(summary[f"{m}_m2"] / summary[f"{m}_count"])
        summary["pearson_qn_entropy"] = summary["pair_c"] / np.sqrt(
            summary["pair_m2_x"] * summary["pair_m2_y"]
        )
        summary["sink_share"] = summary["sink_attn_mean"]

        con.execute(
            """CREATE TABLE histogram_counts AS SELECT metric, layer, head, bin, sum(count) AS count
               FROM histograms GROUP BY ALL ORDER BY ALL"""
        )
        histograms = con.execute("SELECT * FROM histogram_counts").df()
        row_of = {
            key: i for i, key in enumerate(zip(summary["layer"], summary["head"], strict=True))
        }
        for m in METRICS:
            edges = histogram_edges(m, context_length, bins)
            table = histograms[histograms.metric == m]
            rows = np.fromiter(
                (row_of[key] for key in zip(table["layer"], table["head"], strict=True)),
                dtype=np.int64,
                count=len(table),
            )
            counts = np.zeros((len(summary), len(edges) - 1))
            np.add.at(counts, (rows, table["bin"].to_numpy(np.int64)), table["count"].to_numpy())
            values = histogram_quantiles(counts, edges, discrete=(m == "k_eff"))
            for j, q in enumerate(QUANTILES):
                summary[f"{m}_q{round(q * 100):02d}"] = values[:, j]

        con.execute(f"SET threads = {int(sort_threads)}")  # integer sums only: any order
        ranks = spearman(con, parts)
        con.execute("SET threads = 1")
        summary = summary.merge(ranks, on=["layer", "head"], how="left")
        keep = ["layer", "head", "rows"]
        for m in METRICS:
            keep += [f"{m}_count", f"{m}_mean", f"{m}_std"]
            keep += [f"{m}_q{round(q * 100):02d}" for q in QUANTILES]
        keep += ["pearson_qn_entropy", "spearman_qn_entropy", "sink_share"]
        summary = summary[keep]
        con.register("summary_frame", summary)
        con.execute("CREATE TABLE head_summary AS SELECT * FROM summary_frame")
        means = ", ".join(f"sum({m}_sum) / nullif(sum({m}_n), 0) AS {m}" for m in METRICS)
        con.execute(
            f"""CREATE TABLE position_profile AS
                SELECT layer, head, token_pos, {means} FROM positions
                GROUP BY ALL ORDER BY layer, head, token_pos"""
        )
        for name in ("moments", "histograms", "positions"):  # views onto files outside the database
            con.execute(f"DROP VIEW {name}")
        con.execute("DROP TABLE merged")
        if provenance:
            write_duckdb(con, provenance)
        for name, path in exports.items():
            table, extension = name.split(".")
            options = "FORMAT parquet" if extension == "parquet" else "HEADER"
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as staging:
                con.execute(f"COPY {table} TO '{staging}' ({options})")
    except BaseException:
        con.close()
        tmp_db.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp_db, database)
    logger.info("aggregated %d heads from %d partials", len(summary), len(partial_dirs))
    return summary


def spearman(con: duckdb.DuckDBPyConnection, parts: list[str]) -> pd.DataFrame:
    """Spearman ρ(query_norm, entropy) per (layer, head) over every row with a defined entropy
    (``tokens`` of them): Pearson's r of average ranks, computed by DuckDB from the capture parts
    (its window sorts spill to disk past memory). Head selection uses the same function.

    Exact and independent of the order of the sums: the ranks are doubled into integers and
    every sum is a HUGEINT, so only the final division is floating point."""
    # Average rank of ties = (lowest rank + highest rank) / 2, and the highest rank is the count
    # of rows ≤ the value (the window's default frame runs to the last peer): a = 2·rank is
    # rank() + count(*), from the same ordered window, one sort per variable.
    table = con.execute(
        f"""WITH rows AS (
                SELECT layer, head, query_norm, entropy FROM ({_rows_sql(parts)})
                WHERE entropy IS NOT NULL AND query_norm IS NOT NULL),
            ranked AS (
                SELECT layer, head,
                    CAST(rank() OVER by_x + count(*) OVER by_x AS HUGEINT) AS a,
                    CAST(rank() OVER by_y + count(*) OVER by_y AS HUGEINT) AS b
                FROM rows
                WINDOW by_x AS (PARTITION BY layer, head ORDER BY query_norm),
                    by_y AS (PARTITION BY layer, head ORDER BY entropy))
            SELECT layer, head, count(*) AS tokens,
                -- as text: .df() would round the HUGEINT sums to floats
                CAST(sum(a) AS VARCHAR) AS sa, CAST(sum(b) AS VARCHAR) AS sb,
                CAST(sum(a * a) AS VARCHAR) AS saa, CAST(sum(b * b) AS VARCHAR) AS sbb,
                CAST(sum(a * b) AS VARCHAR) AS sab
            FROM ranked GROUP BY layer, head ORDER BY layer, head"""
    ).df()
    rho = []
    for row in zip(*(table[c] for c in ("tokens", "sa", "sb", "saa", "sbb", "sab")), strict=True):
        # Python integers (not numpy's int64): exact, whatever their size; one rounding at the end.
        n, sa, sb, saa, sbb, sab = (int(value) for value in row)
        covariance, var_a, var_b = n * sab - sa * sb, n * saa - sa * sa, n * sbb - sb * sb
        rho.append(covariance / math.sqrt(var_a * var_b) if var_a > 0 and var_b > 0 else np.nan)
    table["spearman_qn_entropy"] = np.array(rho, dtype=np.float64)
    return table[["layer", "head", "spearman_qn_entropy", "tokens"]]
