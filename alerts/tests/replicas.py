#!/usr/bin/env python3
"""Generate replicas.generated.test.yml: every single-instance promtool case of this directory
played again by fleets of two and three instances, expecting exactly the same alerts.

How a fleet sees what one instance saw (README "Running more than one"):
- replicas: every series read from a store (connections, per-connection gauges, provider
  windows, rows rejected, connections removed, regressions, the cap) is exported the same by
  every replica; event counters and the event detectors' gauges are split between the
  instances (each event reaches one instance: push inlets routed by connection, an event
  table's lease), their sum equal to the original at every step; the last rate-limit headroom
  is seen by one instance, the others saw more; health series (up, source up, last success,
  persistence errors) are the original's on instance ote:9877 and healthy on the others.
- shards: instances own disjoint connections (shard="0", "1", "2"): per-connection series live
  on the shard that owns the connection, a source's aggregates are split between the shards
  like counters, and the rest is as for replicas.
The expected alerts do not change: a rule that double counts replicas, misses what is spread
over several instances, or fires once per instance fails here.

Run from anywhere: `python3 alerts/tests/replicas.py` rewrites the file, `--check` exits 1 when
the committed file is out of date (tests/shipped.rs runs it).
"""
import pathlib
import re
import sys
import zlib

import yaml

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "replicas.generated.test.yml"
SOURCES = ["app.test.yml", "exporter.test.yml", "fleet.test.yml", "inactivity.test.yml", "spikes.test.yml"]
JOB = "oauth-token-exporter"
FIRST = "ote:9877"

# Read from a store: the same on every replica.
STATE = {
    "oauth_connections", "oauth_connections_expiring", "oauth_connection_status",
    "oauth_connection_info", "oauth_refresh_token_last_refresh_timestamp_seconds",
    "oauth_refresh_token_age_seconds", "oauth_refresh_token_expiry_timestamp_seconds",
    "oauth_refresh_token_expired", "oauth_access_token_expiry_timestamp_seconds",
    "oauth_provider_refresh_token_lifetime_seconds", "oauth_provider_access_token_lifetime_seconds",
    "oauth_provider_refresh_token_max_lifetime_seconds", "oauth_exporter_connections_truncated",
    "oauth_connections_removed_total", "oauth_refresh_token_regressions_total",
    "oauth_exporter_rows_rejected_total", "oauth_client_secret_expiry_timestamp_seconds",
}
# Per-source aggregates of the state: split between shards.
AGGREGATES = {
    "oauth_connections", "oauth_connections_expiring", "oauth_exporter_connections_truncated",
    "oauth_connections_removed_total", "oauth_refresh_token_regressions_total",
    "oauth_exporter_rows_rejected_total",
}
# Counted from events: split between instances.
EVENTS = {
    "oauth_token_refreshes_total", "oauth_token_refresh_failures_total", "oauth_api_requests_total",
    "oauth_api_unauthorized_total", "oauth_api_forbidden_total", "oauth_api_rate_limited_total",
    "oauth_token_refresh_races_total", "oauth_connections_retrying_invalid_grant",
}
# The instance's own health: the original on the first instance, healthy on the others.
HEALTHY = {
    "up": lambda n: f"1x{n}",
    "oauth_exporter_source_up": lambda n: f"1x{n}",
    "oauth_exporter_source_last_success_timestamp_seconds": lambda n: f"0+60x{n}",
    "oauth_exporter_state_write_errors_total": lambda n: f"0x{n}",
}


def expand(values):
    """promtool's expanding notation to a list of numbers (None for `_`)."""
    out = []
    for tok in values.split():
        m = re.fullmatch(r"(-?[\d.]+)([+-][\d.]+)?x(\d+)", tok)
        if m:
            start, step, n = float(m.group(1)), float(m.group(2) or 0), int(m.group(3))
            out.extend(start + step * i for i in range(n + 1))
        elif tok == "_":
            out.append(None)
        elif re.fullmatch(r"_x(\d+)", tok):
            out.extend([None] * int(tok[2:]))
        else:
            out.append(float(tok))
    return out


def render(vals):
    return " ".join("_" if v is None else (str(int(v)) if v == int(v) else repr(v)) for v in vals)


def split(vals, n, counter):
    """Integer shares of each step's value between n instances that add up to it. Counters
    share their increments in turn (a rotating pointer); gauges share their value."""
    shares = [[] for _ in range(n)]
    if counter:
        totals, turn, last = [0.0] * n, 0, 0.0
        for v in vals:
            if v is None:
                for s in shares:
                    s.append(None)
                continue
            inc = v - last
            last = v
            while inc >= 1:
                totals[turn % n] += 1
                turn += 1
                inc -= 1
            totals[0] += inc  # a fractional rest stays with the first instance
            for i in range(n):
                shares[i].append(totals[i])
    else:
        for v in vals:
            for i in range(n):
                if v is None:
                    shares[i].append(None)
                else:
                    base, rest = divmod(int(v), n)
                    shares[i].append(base + (1 if i < rest else 0) + (v - int(v) if i == 0 else 0))
    return shares


def parse(series):
    m = re.fullmatch(r"([a-zA-Z_:]+)\{(.*)\}", series)
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
    return m.group(1), labels


def fmt(name, labels):
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def instance(i):
    return FIRST if i == 0 else f"ote-{i}:9877"


def with_instance(labels, i):
    return {k: (instance(i) if k == "instance" else v) for k, v in labels.items()}


def owner(connection, n):
    return zlib.crc32(connection.encode()) % n


def fleet(test, n, sharded):
    """The test's input series as a fleet of n instances sees them."""
    out = []
    sources_with_window = {
        parse(s["series"])[1].get("source")
        for s in test["input_series"]
        if parse(s["series"])[0] == "oauth_provider_refresh_token_lifetime_seconds"
    }
    steps = max(len(expand(s["values"])) for s in test["input_series"])
    for s in test["input_series"]:
        name, labels = parse(s["series"])
        vals = expand(s["values"])
        if labels.get("job") != JOB or "instance" not in labels:
            out.append(s)
            continue
        per = None
        if name == "oauth_exporter_shard_info":
            per = [(i, {**with_instance(labels, i), "shard": str(i if sharded else 0)}, vals) for i in range(n)]
        elif name in HEALTHY:
            per = [(0, labels, vals)] + [
                (i, with_instance(labels, i), expand(HEALTHY[name](steps))) for i in range(1, n)
            ]
        elif name == "oauth_api_rate_limit_remaining":
            per = [(0, labels, vals)] + [
                (i, with_instance(labels, i), [None if v is None else v + 1000 * i for v in vals])
                for i in range(1, n)
            ]
        elif name == "oauth_connections_failing" and labels.get("source") in sources_with_window:
            shares = split(vals, n, False) if sharded else [vals] * n
            per = [(i, with_instance(labels, i), shares[i]) for i in range(n)]
        elif name in EVENTS or name == "oauth_connections_failing":
            shares = split(vals, n, name.endswith("_total"))
            per = [(i, with_instance(labels, i), shares[i]) for i in range(n)]
        elif name in STATE:
            if sharded and "connection" in labels:
                i = owner(labels["connection"], n)
                per = [(i, with_instance(labels, i), vals)]
            elif sharded and name in AGGREGATES:
                shares = split(vals, n, name.endswith("_total"))
                per = [(i, with_instance(labels, i), shares[i]) for i in range(n)]
            else:
                per = [(i, with_instance(labels, i), vals) for i in range(n)]
        else:
            raise SystemExit(f"replicas.py: no rule for how a fleet sees {name}; add it above")
        for _, lbls, v in per:
            out.append({"series": fmt(name, lbls), "values": render(v)})
    return out


def main():
    tests = []
    for f in SOURCES:
        doc = yaml.safe_load((HERE / f).read_text())
        for t in doc["tests"]:
            for n, sharded in [(2, False), (3, False), (3, True)]:
                g = dict(t)
                kind = f"{n} shards" if sharded else f"{n} replicas"
                g["name"] = f"{kind}: {t['name']} ({f})"
                g["input_series"] = fleet(t, n, sharded)
                tests.append(g)
    text = (
        "# Generated by alerts/tests/replicas.py from the other tests of this directory; do not edit.\n"
        "# Every single-instance case played again by 2 replicas, 3 replicas and 3 shards, expecting\n"
        "# the same alerts. Regenerate: python3 alerts/tests/replicas.py\n"
        + yaml.safe_dump(
            {"rule_files": ["../oauth-token-exporter.rules.yml"], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
            width=200,
            allow_unicode=True,
        )
    )
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python3 alerts/tests/replicas.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text)


main()
