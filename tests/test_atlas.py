"""The gain atlas (temperature rescaling of every head) against the hook-based sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spectra_attn.analysis.gain import atlas_gains, compare_with_sweep
from spectra_attn.gates import CheckFailed, require
from spectra_attn.model.atlas import atlas_table
from spectra_attn.model.attention import CaptureSettings
from spectra_attn.model.intervention import HeadSpec, run_sweep
from spectra_attn.model.loading import use_capture_attention

from .test_capture import input_ids, tiny_model

SCALES = [0.5, 1.0, 1.5]


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_atlas_equals_the_hook_based_sweep(rope, tmp_path):
    model = tiny_model("llama")
    use_capture_attention(model)
    settings = CaptureSettings(rope=rope)
    tokens = input_ids(batch=2).numpy().astype(np.int32)
    atlas = atlas_table(model, tokens, np.arange(2), settings, SCALES, batch_size=2)
    assert len(atlas) == 2 * 2 * 4 * len(SCALES)  # samples × layers × heads × scales
    atlas.to_parquet(tmp_path / "atlas.parquet")
    sweeps = [
        run_sweep(model, tokens, np.arange(2), HeadSpec(1, head, role), SCALES, settings)[1]
        for head, role in ((2, "target"), (0, "control"))
    ]
    report = compare_with_sweep([str(tmp_path / "atlas.parquet")], pd.concat(sweeps), 1e-5)
    assert report["passed"], report
    assert report["compared_rows"] == 2 * 2 * len(SCALES)
    # A sweep of another head (wrong pairing) would not match.
    shifted = pd.concat(sweeps).assign(head=lambda f: (f["head"] + 1) % 4)
    assert not compare_with_sweep([str(tmp_path / "atlas.parquet")], shifted, 1e-5)["passed"]
    # A head whose sweep shares no scale with the atlas is not compared: that fails, naming it,
    # even though the other head matches.
    offset = pd.concat([sweeps[0], sweeps[1].assign(scale=sweeps[1]["scale"] * 1.1)])
    report = compare_with_sweep([str(tmp_path / "atlas.parquet")], offset, 1e-5)
    assert not report["passed"] and report["heads"] == ["L1_H2"]
    with pytest.raises(CheckFailed, match=r"atlas_vs_sweep failed for L1_H2: .* sweep of L1_H0"):
        require(report)


def test_atlas_gains_and_percentiles(tmp_path):
    rows = []
    for head, gain in enumerate([0.1, 0.3, 0.2, 0.0]):
        for scale in (0.5, 1.0, 1.5):
            for sample in range(3):
                rows.append(
                    {
                        "sample_id": sample,
                        "layer": 0,
                        "head": head,
                        "scale": scale,
                        "max_attn": 0.2 + gain * np.log(scale),
                        "entropy": 2.0,
                        "k_eff": 10.0,
                    }
                )
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    gains = atlas_gains([str(tmp_path / "a.parquet")]).set_index("head")
    np.testing.assert_allclose(gains.gain_max_attn, [0.1, 0.3, 0.2, 0.0], atol=1e-12)
    assert gains.percentile_max_attn.tolist() == [50.0, 100.0, 75.0, 25.0]
