"""benchmarks/paper_budget.py: the per-level summary's interval is over training seeds."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from benchmarks.paper_budget import summary


def test_summary_is_a_t_interval_over_seeds_per_level():
    table = pd.DataFrame({
        "level": ["full-replay"] * 3 + ["expert"],
        "test_return": [-216.7, -165.4, -236.0, -150.0],
        "normalized_score": [93.6, 98.3, 91.9, 99.0]})
    out = summary(table).set_index("level")
    r = table["test_return"][:3]
    assert out.loc["full-replay", "mean_test_return"] == pytest.approx(r.mean())
    assert out.loc["full-replay", "ci95_over_seeds"] == pytest.approx(
        stats.t.ppf(0.975, 2) * r.std(ddof=1) / 3 ** 0.5)
    assert out.loc["full-replay", "per_seed"] == "-216.7 / -165.4 / -236.0"
    assert out.loc["expert", "seeds"] == 1 and pd.isna(out.loc["expert", "ci95_over_seeds"])
