"""The gateway's batch histogram is exposed exactly as prometheus_client's Histogram."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from citycard.gateway.metrics import _LATENCY_BUCKETS_S, Metrics

OBSERVED = [(0.0003, 3), (0.0005, 1), (0.001, 2), (0.0015, 1), (0.7, 50), (20.0, 1)]


def _lines(registry: CollectorRegistry, name: str) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if name in line and "_created" not in line]


def test_batch_observations_equal_one_histogram_observation_per_tap() -> None:
    metrics = Metrics()
    for latency_s, n in OBSERVED:
        metrics.tap_latency.observe(latency_s, n)
    reference = CollectorRegistry()
    h = Histogram("citycard_tap_latency_seconds", "Tap received to answer sent, at the gateway",
                  buckets=_LATENCY_BUCKETS_S, registry=reference)
    for latency_s, n in OBSERVED:
        for _ in range(n):
            h.observe(latency_s)
    name = "citycard_tap_latency_seconds"
    got, want = _lines(metrics.registry, name), _lines(reference, name)
    assert [g for g in got if "_sum" not in g] == [w for w in want if "_sum" not in w]
    (got_sum,), (want_sum,) = ([float(x.split()[-1]) for x in lines if "_sum" in x] for lines in (got, want))
    assert abs(got_sum - want_sum) < 1e-9  # n * latency, not n float additions
    assert f'{name}_bucket{{le="0.0005"}} 4.0' in _lines(metrics.registry, name)  # le is inclusive
