"""The analysis tables are the same bytes on every rerun, whatever the thread count and the order
the parts arrive in (the aggregate's own test is in test_aggregate.py)."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from .helpers import run_python
from .test_gain import make_sweep

ANALYSIS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import pandas as pd
    from spectra_attn.analysis.gain import atlas_gains, head_gains, verdict
    from spectra_attn.io import write_csv, write_json

    folder, order = Path(sys.argv[1]), sys.argv[2]
    parts = sorted(str(p) for p in folder.glob("atlas_*.parquet"))
    atlas = atlas_gains(parts[::-1] if order == "reversed" else parts)
    write_csv(atlas, folder / f"atlas_gain_{order}.csv")
    sweep = pd.read_parquet(folder / "sweep.parquet")
    trends = pd.read_csv(folder / "trends.csv")
    gains = head_gains(sweep)
    write_csv(gains, folder / f"gain_summary_{order}.csv")
    result = verdict(sweep, trends, gains, n_boot=500, atlas=atlas)
    write_json(folder / f"verdict_{order}.json", result)
    """
)


def test_gain_and_atlas_tables_are_byte_identical_across_reruns_and_threads(tmp_path):
    generator = np.random.default_rng(0)
    for part in range(3):  # samples spread over parts, like the atlas jobs
        rows = [
            {
                "sample_id": part * 4 + sample,
                "layer": layer,
                "head": head,
                "scale": scale,
                "max_attn": generator.random(),
                "entropy": generator.random() * 3,
                "k_eff": generator.random() * 50,
            }
            for sample in range(4)
            for layer in range(3)
            for head in range(8)
            for scale in (0.5, 1.0, 1.5)
        ]
        pd.DataFrame(rows).to_parquet(tmp_path / f"atlas_{part}.parquet")
    sweep = make_sweep({"target": 0.2, "control": 0.02}, noise=0.05)
    sweep.to_parquet(tmp_path / "sweep.parquet")
    trend_rows = [
        {"layer": 2, "head": h, "role": r, "metric": m, "monotonic": True}
        for h, r in ((0, "target"), (5, "control"))
        for m in ("max_attn", "entropy", "k_eff")
    ]
    pd.DataFrame(trend_rows).to_csv(tmp_path / "trends.csv", index=False)

    outputs = {}
    for threads, order in (("1", "sorted"), ("2", "reversed")):
        threading = {v: threads for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        run_python(ANALYSIS, str(tmp_path), order, **threading)
        outputs[order] = [
            (tmp_path / f"{name}_{order}.{ext}").read_bytes()
            for name, ext in (("atlas_gain", "csv"), ("gain_summary", "csv"), ("verdict", "json"))
        ]
    assert outputs["sorted"] == outputs["reversed"]
