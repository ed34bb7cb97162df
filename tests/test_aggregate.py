"""DuckDB map/reduce aggregation against pandas/numpy/scipy on the same rows."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats

from spectra_attn.analysis.aggregate import (
    EXPORTS,
    METRICS,
    histogram_edges,
    partial_aggregate,
    reduce_aggregates,
)

T = 32
BINS = 400


def synthetic_part(seed: int, samples: range) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    rows = []
    for sample in samples:
        for layer in range(2):
            for head in range(3):
                norm = generator.gamma(2.0 + head, 1.0, size=T).astype(np.float32)
                entropy = (np.log(np.arange(1, T + 1)) * (0.3 + 0.2 * head) + 0.1 * norm).astype(
                    np.float32
                )
                entropy[:2] = np.nan
                rows.append(
                    pd.DataFrame(
                        {
                            "sample_id": np.int32(sample),
                            "layer": np.int16(layer),
                            "head": np.int16(head),
                            "token_pos": np.arange(T, dtype=np.int32),
                            "query_norm": norm,
                            "entropy": entropy,
                            "max_attn": generator.beta(2, 5, size=T).astype(np.float32),
                            "k_eff": generator.integers(1, np.arange(1, T + 1) + 1).astype(
                                np.int32
                            ),
                            "sink_attn": generator.beta(1, 3, size=T).astype(np.float32),
                            "gain_max_attn": np.float32(0),
                            "gain_entropy": np.float32(0),
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aggregate")
    frames = [synthetic_part(0, range(0, 3)), synthetic_part(1, range(3, 8))]
    parts, partials = [], []
    for index, frame in enumerate(frames):
        part = tmp / f"part_{index:04d}.parquet"
        # The first part stores undefined entropy as NaN, the second as null: both must work.
        table = pa.table({name: pa.array(frame[name], from_pandas=index == 1) for name in frame})
        pq.write_table(table, part)
        parts.append(str(part))
        partials.append(str(tmp / "partials" / f"part_{index:04d}"))
        partial_aggregate(str(part), partials[-1], context_length=T, bins=BINS)
    summary = reduce_aggregates(
        partials, parts, tmp / "spectra.duckdb", tmp / "exports", context_length=T, bins=BINS
    )
    return pd.concat(frames, ignore_index=True), summary.set_index(["layer", "head"]), tmp


def test_moments_and_correlations_equal_pandas(aggregated):
    rows, summary, _ = aggregated
    for (layer, head), group in rows.groupby(["layer", "head"]):
        got = summary.loc[(layer, head)]
        assert got["rows"] == len(group)
        for m in METRICS:
            values = group[m].dropna().to_numpy(np.float64)
            assert got[f"{m}_count"] == len(values)
            assert got[f"{m}_mean"] == pytest.approx(values.mean(), rel=1e-9)
            assert got[f"{m}_std"] == pytest.approx(values.std(ddof=0), rel=1e-7)
        paired = group.dropna(subset=["entropy"])
        x, y = paired.query_norm.astype(np.float64), paired.entropy.astype(np.float64)
        assert got["pearson_qn_entropy"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-9)
        assert got["spearman_qn_entropy"] == pytest.approx(
            scipy.stats.spearmanr(x, y).statistic, rel=1e-9
        )
        assert got["sink_share"] == pytest.approx(group.sink_attn.astype(np.float64).mean())


def test_quantiles_exact_for_k_eff_and_within_a_bin_otherwise(aggregated):
    rows, summary, _ = aggregated
    for (layer, head), group in rows.groupby(["layer", "head"]):
        got = summary.loc[(layer, head)]
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            key = f"q{round(q * 100):02d}"
            assert got[f"k_eff_{key}"] == pytest.approx(np.quantile(group.k_eff, q))
            for m in ("entropy", "max_attn", "sink_attn"):
                width = np.diff(histogram_edges(m, T, BINS))[0]
                expected = np.quantile(group[m].dropna(), q)
                assert abs(got[f"{m}_{key}"] - expected) <= width, (m, q)


def test_partials_merge_like_one_part(tmp_path, aggregated):
    """Merging two partials gives what one partial of all the rows gives."""
    rows, summary, _ = aggregated
    whole = tmp_path / "whole.parquet"
    rows.to_parquet(whole)
    partial_aggregate(str(whole), tmp_path / "p", context_length=T, bins=BINS)
    single = reduce_aggregates(
        [str(tmp_path / "p")], [str(whole)], tmp_path / "db.duckdb", tmp_path / "x", T, BINS
    ).set_index(["layer", "head"])
    pd.testing.assert_frame_equal(single, summary, check_exact=False, rtol=1e-9)


def test_database_and_exports(aggregated):
    rows, summary, tmp = aggregated
    con = duckdb.connect(str(tmp / "spectra.duckdb"), read_only=True)
    tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
    assert {"head_summary", "position_profile", "histogram_counts"} <= tables
    profile = con.execute(
        "SELECT * FROM position_profile WHERE layer = 1 AND head = 2 ORDER BY token_pos"
    ).df()
    expected = rows[(rows.layer == 1) & (rows["head"] == 2)].groupby("token_pos").max_attn.mean()
    np.testing.assert_allclose(profile.max_attn, expected, rtol=1e-6)
    assert profile.entropy.isna().sum() == 2
    con.close()
    csv = pd.read_csv(tmp / "exports" / "head_summary.csv")
    assert len(csv) == 6 and "spearman_qn_entropy" in csv.columns
    assert len(pd.read_parquet(tmp / "exports" / "position_profile.parquet")) == 6 * T


def test_exports_go_to_the_paths_named(aggregated, tmp_path):
    _, summary, tmp = aggregated
    partials = sorted(str(p) for p in (tmp / "partials").iterdir())
    parts = sorted(str(p) for p in tmp.glob("part_*.parquet"))
    exports = {name: tmp_path / "elsewhere" / f"x_{name}" for name in EXPORTS}
    reduce_aggregates(partials, parts, tmp_path / "db.duckdb", exports, T, BINS)
    for name, path in exports.items():
        assert path.is_file(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.duckdb", "elsewhere"]
    again = pd.read_parquet(exports["head_summary.parquet"]).set_index(["layer", "head"])
    pd.testing.assert_frame_equal(again, summary, check_exact=False, rtol=1e-9)
    with pytest.raises(ValueError, match="position_profile.csv"):
        reduce_aggregates(partials, parts, tmp_path / "db.duckdb", {}, T, BINS)


def test_failures_leave_no_temporaries_and_keep_earlier_outputs(aggregated, tmp_path):
    """A corrupt part fails the map step without a half-written folder and without touching the
    aggregates already there; a missing partial fails the reduce step without a stray database."""
    _, _, tmp = aggregated
    good = tmp_path / "partials" / "part_0000"
    partial_aggregate(str(tmp / "part_0000.parquet"), good, context_length=T, bins=BINS)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(duckdb.Error):
        partial_aggregate(str(corrupt), good, context_length=T, bins=BINS)
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "partials").iterdir()) == ["part_0000"]
    database = tmp_path / "db.duckdb"
    with pytest.raises(duckdb.Error):
        reduce_aggregates(
            [str(good), str(tmp_path / "missing")],
            [str(tmp / "part_0000.parquet")],
            database,
            tmp_path / "exports",
            T,
            BINS,
        )
    assert not database.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.parquet", "partials"]


def test_histograms_are_written_in_a_fixed_order(aggregated, tmp_path):
    """DuckDB's parallel GROUP BY returns groups in any order: the rows are sorted, so a rerun
    writes the same bytes (the counts are integers)."""
    _, _, tmp = aggregated
    for run in ("a", "b"):
        partial_aggregate(
            str(tmp / "part_0001.parquet"), tmp_path / run, context_length=T, bins=BINS
        )
    first, second = ((tmp_path / r / "histograms.parquet").read_bytes() for r in ("a", "b"))
    assert first == second
    table = pq.read_table(tmp_path / "a" / "histograms.parquet").to_pandas()
    keys = list(zip(table.layer, table["head"], table.metric, table.bin, strict=True))
    assert keys == sorted(keys)


def _write_parts(tmp_path, n_parts: int, samples_per_part: int) -> list[str]:
    """Capture parts in small row groups, so that DuckDB's threads share out every file."""
    parts = []
    for index in range(n_parts):
        samples = range(index * samples_per_part, (index + 1) * samples_per_part)
        frame = synthetic_part(100 + index, samples)
        path = tmp_path / f"part_{index:04d}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=96)
        parts.append(str(path))
    return parts


def test_outputs_are_the_same_bytes_across_reruns_and_thread_counts(tmp_path):
    """Partials and exports of three runs of the whole aggregate (map and reduce), on 1, 4 and 4
    DuckDB threads, are byte-identical: no float sum depends on the order threads finish in."""
    parts = _write_parts(tmp_path, n_parts=6, samples_per_part=4)
    outputs = []
    for run, threads in (("a", 1), ("b", 4), ("c", 4)):
        partials = []
        for part in parts:
            partials.append(str(tmp_path / run / "partials" / Path(part).stem))
            partial_aggregate(part, partials[-1], context_length=T, bins=BINS)
        reduce_aggregates(
            partials,
            parts,
            tmp_path / run / "db.duckdb",
            tmp_path / run / "exports",
            T,
            BINS,
            threads=threads,
        )
        files = sorted((tmp_path / run).rglob("*.*"))
        outputs.append(
            {
                str(f.relative_to(tmp_path / run)): f.read_bytes()
                for f in files
                if f.suffix != ".duckdb"
            }
        )
    assert len(outputs[0]) == 6 * 3 + len(EXPORTS)
    assert outputs[0] == outputs[1] == outputs[2]


def test_spearman_is_exact_with_ties(tmp_path):
    """Heavy ties (values on a coarse grid), a head with a constant variable and one with ρ = 1,
    against scipy (average ranks for ties)."""
    from spectra_attn.analysis.aggregate import connect, spearman

    generator = np.random.default_rng(3)
    n = 500
    frames = []
    for head in range(4):
        x = np.round(generator.gamma(2.0, 1.0, size=n), 1).astype(np.float32)
        y = np.round(x * (1 - head) + generator.normal(0, 1, size=n), 0).astype(np.float32)
        if head == 2:
            y[:] = 1.5  # constant: no rank correlation
        if head == 3:
            y = 2 * x + 1  # monotonic: ρ = 1
        y[:2] = np.nan  # undefined entropy: not ranked
        frames.append(
            pd.DataFrame(
                {
                    "layer": np.int16(0),
                    "head": np.int16(head),
                    "token_pos": np.arange(n, dtype=np.int32),
                    "query_norm": x,
                    "entropy": y,
                    "max_attn": np.float32(0.5),
                    "k_eff": np.int32(1),
                    "sink_attn": np.float32(0.5),
                }
            )
        )
    path = tmp_path / "part.parquet"
    pd.concat(frames).to_parquet(path)
    con = connect()
    table = spearman(con, [str(path)]).set_index("head")
    con.close()
    for head, frame in enumerate(frames):
        frame = frame.dropna(subset=["entropy"])
        assert table.loc[head, "tokens"] == len(frame) == n - 2
        assert len(np.unique(frame.query_norm)) < n / 5  # ties indeed
        if head == 2:
            assert np.isnan(table.loc[head, "spearman_qn_entropy"])
            continue
        expected = scipy.stats.spearmanr(frame.query_norm, frame.entropy).statistic
        assert table.loc[head, "spearman_qn_entropy"] == pytest.approx(expected, rel=1e-12)
    assert table.loc[3, "spearman_qn_entropy"] == 1.0
