from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from envelope_mq.bench.kms_economy import allowed_generate_calls
from envelope_mq.bench.report import Report
from envelope_mq.bench.stats import median, percentile, rate, ratio, round_ratios

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


def test_median_of_an_odd_count_is_the_middle_value() -> None:
    assert median([5.0, 1.0, 3.0]) == 3.0


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values() -> None:
    assert median([4.0, 1.0, 3.0, 10.0]) == 3.5


def test_median_is_not_moved_by_one_outlier() -> None:
    assert median([10.0, 11.0, 12.0, 13.0, 10_000.0]) == 12.0


def test_median_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        median([])


def test_median_refuses_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        median([1.0, math.nan, 2.0])


@given(st.lists(finite, min_size=1, max_size=50))
def test_median_splits_the_values_in_halves(values: list[float]) -> None:
    m = median(values)
    assert sum(v <= m for v in values) >= len(values) / 2
    assert sum(v >= m for v in values) >= len(values) / 2


def test_p99_of_a_hundred_values_is_the_99th_smallest() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted
    assert percentile(values, 99) == 99.0


def test_p50_by_nearest_rank_is_a_measured_value() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_p100_is_the_maximum_and_a_tiny_percentile_the_minimum() -> None:
    values = [3.0, 9.0, 1.0, 7.0]
    assert percentile(values, 100) == 9.0
    assert percentile(values, 0.001) == 1.0


def test_p99_of_few_values_is_the_maximum() -> None:
    assert percentile([2.0, 8.0, 5.0], 99) == 8.0


@pytest.mark.parametrize("p", [0, -1, 100.5, math.nan])
def test_percentile_outside_0_to_100_is_an_error(p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0, 2.0], p)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(0.01, 100))
def test_percentile_is_one_of_the_values_with_enough_at_or_below(
    values: list[float], p: float
) -> None:
    q = percentile(values, p)
    assert q in values
    assert sum(v <= q for v in values) >= p / 100 * len(values)


def test_round_ratios_divide_round_by_round() -> None:
    assert round_ratios([10.0, 30.0], [5.0, 10.0]) == [2.0, 3.0]


def test_round_ratios_need_the_same_number_of_rounds() -> None:
    with pytest.raises(ValueError, match="same rounds"):
        round_ratios([1.0, 2.0], [1.0])


def test_round_ratios_need_a_round() -> None:
    with pytest.raises(ValueError, match="no rounds"):
        round_ratios([], [])


def test_median_of_round_ratios_differs_from_ratio_of_medians() -> None:
    ours, theirs = [10.0, 20.0, 100.0], [10.0, 40.0, 25.0]
    assert median(round_ratios(ours, theirs)) == 1.0
    assert ratio(median(ours), median(theirs)) == 0.8


@pytest.mark.parametrize("denominator", [0.0, -1.0, math.nan])
def test_ratio_needs_a_positive_denominator(denominator: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        ratio(1.0, denominator)


def test_rate_is_events_per_second() -> None:
    assert rate(20_000, 2.5) == 8000.0
    with pytest.raises(ValueError, match="positive"):
        rate(1, 0.0)


def test_one_generate_call_is_allowed_per_key_lifetime() -> None:
    assert allowed_generate_calls(1, messages=20_000, seconds=60.0) == 1
    assert allowed_generate_calls(1, messages=2**24 + 1, seconds=60.0) == 2
    assert allowed_generate_calls(1, messages=10, seconds=601.0) == 3
    assert allowed_generate_calls(3, messages=10, seconds=1.0) == 3


def test_report_names_the_missed_targets_only() -> None:
    report = Report()
    report.check("fast enough", 1.2, ">=", 1.0)
    report.check("small enough", 120.0, "<=", 100.0, "MiB")
    report.check("unmeasured", math.nan, ">=", 10.0)
    assert [t.name for t in report.missed] == ["small enough", "unmeasured"]


def test_report_renders_an_unmeasured_value_as_na_and_json_null() -> None:
    report = Report()
    report.add("crypto", "AWS Encryption SDK", math.nan, "µs", note="not installed")
    report.check("times faster", math.nan, ">=", 10.0, "x")
    assert "| AWS Encryption SDK | n/a µs |" in report.table()
    document = json.loads(report.to_json())
    assert document["figures"][0]["value"] is None
    assert document["targets"][0] == {
        "name": "times faster",
        "measured": None,
        "op": ">=",
        "limit": 10.0,
        "unit": "x",
        "passed": False,
    }


def test_table_lists_the_rounds_behind_a_median() -> None:
    report = Report()
    report.add(
        "publish", "envelope-mq", 9000.0, "msg/s", rounds=[8000.0, 9000.0, 9500.0]
    )
    assert "| envelope-mq | 9,000 msg/s | 8,000 9,000 9,500 |  |" in report.table()
