"""Every Smartflow metric, declared once: name, type, help text and its bounded label set."""
from dataclasses import dataclass

from proxy.routing import PROVIDER_NAMES

# Label values are drawn from fixed sets so a flood of odd requests cannot create series.
NO_PROVIDER = "none"  # the request failed before a provider was chosen
OTHER_MODEL = "other"  # any model name the tier table does not know
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "other")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...] = ()


REQUESTS = Metric("smartflow_requests_total", "counter",
                  "Requests handled by the proxy, failed and cached ones included.",
                  ("provider", "model", "status"))
CACHE_HITS = Metric("smartflow_cache_hits_total", "counter",
                    "Requests answered from the response cache.", ("provider", "model"))
CACHE_MISSES = Metric("smartflow_cache_misses_total", "counter",
                      "Cacheable requests the response cache could not answer.", ("provider", "model"))
TOKENS_INPUT = Metric("smartflow_tokens_input_total", "counter",
                      "Prompt (input) tokens reported by the providers.", ("provider", "model"))
TOKENS_OUTPUT = Metric("smartflow_tokens_output_total", "counter",
                       "Completion (output) tokens reported by the providers.", ("provider", "model"))
PROVIDER_ERRORS = Metric("smartflow_provider_errors_total", "counter",
                         "Requests that failed at or after the provider call (status 5xx: upstream "
                         "error, timeout or gateway fault).", ("provider", "status"))
COST = Metric("smartflow_cost_usd_total", "counter",
              "Spend in US dollars, from the price table (proxy/prices.json and the admin).", ("provider", "model"))
UNPRICED = Metric("smartflow_unpriced_requests_total", "counter",
                  "Requests served by a model the price table has no price for (their cost is unknown, "
                  "not counted as $0).", ("provider", "model"))
FAILOVERS = Metric("smartflow_failovers_total", "counter",
                   "Times a routing policy went on from a failed target to another provider's (or model's) "
                   "target.", ("from", "to"))

TRACE_WRITE_FAILURES = Metric("smartflow_trace_write_failures_total", "counter",
                              "Trace batches the database did not take (database unavailable); "
                              "they stay in the backlog and are retried.")
TRACES_DROPPED = Metric("smartflow_traces_dropped_total", "counter",
                        "Traces lost: dropped from a backlog over its bounds, or not storable even in part.")

COUNTERS = (REQUESTS, CACHE_HITS, CACHE_MISSES, TOKENS_INPUT, TOKENS_OUTPUT, PROVIDER_ERRORS, COST, UNPRICED, FAILOVERS,
            TRACE_WRITE_FAILURES, TRACES_DROPPED)

OVERHEAD = Metric("smartflow_overhead_seconds", "histogram",
                  "The gateway's own time per request: total time minus time waiting on the provider.")
# Gateway overhead lives in the sub-millisecond to tens-of-milliseconds range.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

LATENCY_P50 = Metric("smartflow_latency_p50_seconds", "gauge",
                     "Median end-to-end latency over the last 1,000 requests (roll-up).")
LATENCY_P90 = Metric("smartflow_latency_p90_seconds", "gauge",
                     "90th percentile end-to-end latency over the last 1,000 requests (roll-up).")
LATENCY_P99 = Metric("smartflow_latency_p99_seconds", "gauge",
                     "99th percentile end-to-end latency over the last 1,000 requests (roll-up).")
CACHE_HIT_RATE = Metric("smartflow_cache_hit_rate", "gauge",
                        "Share of cache hits among cache hits and misses over the last 1,000 requests (0..1).")
CACHE_SIZE = Metric("smartflow_cache_size_bytes", "gauge",
                    "Bytes of the answers the MetaCache holds (its own entries, in Redis or in process).")
CACHE_ENTRIES = Metric("smartflow_cache_entries", "gauge", "Answers the MetaCache holds.")
TRACE_BACKLOG = Metric("smartflow_trace_backlog", "gauge",
                       "Traces in memory waiting to be written to the database, over all gateway processes.")
TRACE_BACKLOG_BYTES = Metric("smartflow_trace_backlog_bytes", "gauge",
                             "Estimated bytes of the traces waiting to be written, over all gateway processes.")
BREAKER_OPEN = Metric("smartflow_breaker_open", "gauge",
                      "Routing targets of this provider whose circuit breaker is open (skipped) or probing.",
                      ("provider",))
ROLLUP_AGE = Metric("smartflow_rollup_age_seconds", "gauge",
                    "Age of the roll-up behind the latency and hit-rate gauges.")


def provider_label(provider: str | None) -> str:
    return provider if provider in PROVIDER_NAMES else NO_PROVIDER


def status_label(status: int) -> str:
    first = status // 100
    return f"{first}xx" if 2 <= first <= 5 else "other"


def model_label(model: str | None, tiers) -> str:
    """The tier table's name for the model (dated variants fold into it), else 'other'."""
    if not model or tiers is None:
        return OTHER_MODEL
    entry = tiers.lookup(model)
    return entry.model if entry else OTHER_MODEL
