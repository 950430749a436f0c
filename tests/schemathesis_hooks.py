"""Schemathesis hooks for tests/openapi.rs (SCHEMATHESIS_HOOKS=schemathesis_hooks).

The ingest API refuses an event stamped more than 300 s ahead of the exporter's clock (it would
keep failing-connection gauges up until then), a bound on the wall clock that a JSON schema
cannot state. Generated events whose `time` lies in the future are moved to a minute ago; every
other value Schemathesis draws is sent as drawn. tests/row_isolation.rs asserts the refusal.
"""

import datetime

import schemathesis


def _past(value):
    try:
        t = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value  # not a date-time: left for the API to refuse
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    now = datetime.datetime.now(datetime.timezone.utc)
    if t <= now:
        return value
    return (now - datetime.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


@schemathesis.hook
def map_body(ctx, body):
    events = body.get("events") if isinstance(body, dict) else None
    if isinstance(events, list):
        for e in events:
            if isinstance(e, dict) and isinstance(e.get("time"), str):
                e["time"] = _past(e["time"])
    return body
