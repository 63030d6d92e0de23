"""benchmarks.ab's summary: each side's medians and the median of the per-round ratios."""
import pytest

from benchmarks.ab import summarize


def test_the_ratio_is_the_median_of_each_rounds_ratio_not_the_ratio_of_medians():
    def side(p50, p99, rate):
        return {"p50": p50, "p99": p99, "requests_per_s": rate}

    # The machine drifts: round 2 is slow for both sides. Paired, "this" is 10% faster in every round.
    rounds = [{"this": side(900, 2000, 110), "against": side(1000, 2500, 100)},
              {"this": side(1800, 4000, 55), "against": side(2000, 5000, 50)},
              {"this": side(990, 2200, 100), "against": side(1100, 2750, 91)}]
    summary = summarize(rounds)
    assert summary["this"] == side(990, 2200, 100) and summary["against"] == side(1100, 2750, 91)
    assert summary["ratio"]["p50"] == pytest.approx(0.9)
    assert summary["ratio"]["p99"] == pytest.approx(0.8)
    assert summary["ratio"]["requests_per_s"] == pytest.approx(1.1)
