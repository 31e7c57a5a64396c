"""Prometheus metrics: requests by route and status with latency, transfers by outcome, transaction retries.

The counters live in their own registry (not prometheus_client's global one) so several apps in one process,
as in the test suite, never collide. ``GET /metrics`` renders it in the text exposition format.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "ledger_http_requests_total", "HTTP requests by route template, method and status.",
    ["method", "route", "status"], registry=REGISTRY,
)
LATENCY = Histogram(
    "ledger_http_request_duration_seconds", "HTTP request latency by route template.",
    ["method", "route"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSFERS = Counter(
    "ledger_transfers_total", "Transfer and funding requests by outcome.", ["outcome"], registry=REGISTRY,
)
RETRIES = Counter(
    "ledger_transaction_retries_total", "Transaction retries by reason.", ["reason"], registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "ledger_notification_backlog", "Outbox messages not yet delivered (sampled at scrape).", registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "ledger_notifications_total", "Notification delivery attempts by result.", ["result"], registry=REGISTRY,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


_TRANSFER_SERIES: dict[str, Any] = {}


def transfer_outcome(outcome: str) -> None:
    series = _TRANSFER_SERIES.get(outcome)
    if series is None:
        series = _TRANSFER_SERIES[outcome] = TRANSFERS.labels(outcome=outcome)
    series.inc()


def transaction_retry(reason: str) -> None:
    RETRIES.labels(reason=reason).inc()


# (method, route, status) -> the labelled counter and histogram: resolving labels costs more than counting.
# As many entries as the labelled series themselves, which the registry keeps anyway.
_REQUEST_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    series = _REQUEST_SERIES.get((method, route, status))
    if series is None:
        series = (REQUESTS.labels(method=method, route=route, status=str(status)),
                  LATENCY.labels(method=method, route=route))
        _REQUEST_SERIES[(method, route, status)] = series
    series[0].inc()
    series[1].observe(seconds)


def render() -> bytes:
    return generate_latest(REGISTRY)
