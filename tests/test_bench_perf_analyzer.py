"""bench/perf_analyzer.py's reading of perf_analyzer's ``-f`` CSV: microseconds to ms, rows back in
concurrency order (perf_analyzer sorts them by throughput), a file that is not its CSV refused."""

from __future__ import annotations

import pytest

from bench.perf_analyzer import Point, parse_csv

# The example of perf_analyzer's docs (docs/measurements_metrics.md, "Visualizing Latency vs. Throughput").
CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,69.2,225,2148,64,206,11781,19,0,13891,18795,19753,21018
3,84.2,237,1768,21673,209,11742,17,0,35398,43984,47085,51701
4,84.2,279,1604,33669,233,11731,18,1,47045,56545,59225,64886
2,87.2,235,1973,9151,190,11346,17,0,21874,28557,29768,34766
"""


def test_rows_in_concurrency_order_in_ms() -> None:
    points = parse_csv(CSV)
    assert [p.concurrency for p in points] == [1, 2, 3, 4]
    assert points[0] == Point(concurrency=1, infer_per_s=69.2, p50_ms=13.891, p99_ms=21.018,
                              server_queue_ms=0.064, server_infer_ms=11.781)
    assert points[1].infer_per_s == 87.2 and points[1].server_queue_ms == pytest.approx(9.151)


def test_not_its_csv() -> None:
    with pytest.raises(ValueError, match="not a perf_analyzer CSV"):
        parse_csv("error: unable to set shape for the input\n")
    with pytest.raises(ValueError):
        parse_csv("")
