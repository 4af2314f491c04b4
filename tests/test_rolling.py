"""Rolling windows: rates over the last bucket, sparkline series, expiry, latency percentiles."""

from __future__ import annotations

import pytest

from rakka_trio._accounting._rolling import RollingWindow


def test_rates_cover_the_last_window_only() -> None:
    w = RollingWindow(bucket_seconds=10.0, buckets=30)
    for i in range(100):  # 10/s of "ok" for 10 s, starting at t=1000
        w.add(1000.0 + i * 0.1, "ok")
    for i in range(50):  # then 5/s of "5xx" for the next 10 s
        w.add(1010.0 + i * 0.2, "5xx")
    stats = w.statistics(1020.0)
    assert stats.rates["5xx"] == pytest.approx(5.0)
    assert stats.rates.get("ok", 0.0) == pytest.approx(0.0)
    assert stats.share(["5xx"]) == pytest.approx(1.0)


def test_the_sliding_estimate_weights_the_previous_bucket() -> None:
    w = RollingWindow(bucket_seconds=10.0, buckets=30)
    for i in range(100):
        w.add(1000.0 + i * 0.1, "ok")  # the bucket [1000, 1010)
    # 2.5 s into the next bucket: 75 % of the previous bucket is still inside the window.
    stats = w.statistics(1012.5)
    assert stats.counts["ok"] == pytest.approx(75.0)
    assert stats.rates["ok"] == pytest.approx(7.5)


def test_old_buckets_expire_and_series_are_oldest_first() -> None:
    w = RollingWindow(bucket_seconds=10.0, buckets=6)
    w.add(1000.0, "ok", 3)
    w.add(1010.0, "ok", 5)
    w.add(1030.0, "5xx", 2)
    stats = w.statistics(1035.0)
    # Six buckets ending with the one in progress: 980, 990, 1000, 1010, 1020, 1030.
    assert stats.series["ok"] == (0, 0, 3, 5, 0, 0)
    assert stats.series["5xx"] == (0, 0, 0, 0, 0, 2)
    later = w.statistics(1100.0)  # everything fell out of the ring
    assert later.series == {}
    assert later.rates == {}


def test_a_long_window_averages_over_the_history_seen() -> None:
    w = RollingWindow(bucket_seconds=10.0, buckets=30)
    for i in range(60):
        w.add(1000.0 + i, "ok")  # 1/s for 60 s
    stats = w.statistics(1060.0, window=60.0)
    assert stats.rates["ok"] == pytest.approx(1.0, rel=0.05)
    young = RollingWindow()
    young.add(5.0, "ok", 4)
    assert young.statistics(7.0, window=60.0).rates["ok"] == pytest.approx(2.0)


def test_latency_percentiles_come_from_recent_buckets() -> None:
    w = RollingWindow(bucket_seconds=10.0, buckets=30)
    for _ in range(100):
        w.add_latency(1000.0, 10.0)  # an old slow period
    for i in range(1, 101):
        w.add_latency(1025.0, i / 1000)  # 1..100 ms now
    stats = w.statistics(1026.0)
    assert stats.latency_p50 == pytest.approx(0.050)
    assert stats.latency_p99 == pytest.approx(0.099)
    assert w.statistics(2000.0).latency_p95 is None


def test_invalid_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        RollingWindow(bucket_seconds=0)
    with pytest.raises(ValueError):
        RollingWindow(buckets=1)


def test_total_series_sum_labels_per_bucket() -> None:
    w = RollingWindow(bucket_seconds=10.0, buckets=4)
    w.add(1000.0, "ok", 3)
    w.add(1010.0, "5xx", 2)
    w.add(1012.0, "ok", 1)
    w.add(1015.0, "cancelled", 1)
    stats = w.statistics(1019.0)
    assert stats.total_series() == (0, 0, 3, 4)
    assert stats.total_series(exclude=["ok", "cancelled"]) == (0, 0, 0, 2)
    assert stats.total_series(["429"]) == (0, 0, 0, 0)
    assert RollingWindow().statistics(5.0).total_series() == ()


def test_an_unused_or_long_idle_window_is_empty_without_a_ring() -> None:
    w = RollingWindow(bucket_seconds=10.0, buckets=30)
    assert w.idle(0.0) and w._counts is None  # nothing allocated before the first event
    empty = w.statistics(123.0)
    assert (empty.rates, empty.series, empty.latency_p50) == ({}, {}, None)
    w.add(1000.0, "ok")
    assert not w.idle(1000.0) and not w.idle(1299.0)
    assert w.idle(1300.0)  # 30 buckets later the event has left the ring
    assert w.statistics(1300.0).rates == {}
    w.add(1301.0, "5xx")  # and the ring starts over cleanly
    assert w.statistics(1302.0).series == {"5xx": (0,) * 29 + (1,)}
