#!/usr/bin/env python3
"""Turns the herald-bench JSON reports of one compare.sh run into a Markdown table.

Usage: table.py RESULTS_DIR [--summary]
Files are named <scenario-label>.<server>.json, or <scenario-label>.<server>.r<round>.json when
compare.sh --repeat ran each scenario several times. Then every figure is the median of the
rounds (the full table adds their range), except counts of failures (lost, duplicated, errors),
which are summed over the rounds so that no failure hides behind a median.
--summary prints the condensed table of docs/benchmarks.md (two figures per cell).
Each row is one figure; columns are the servers and Herald's ratio to the best peer
(for "higher is better" figures a ratio above 1 means Herald is ahead; for "lower is better"
figures a ratio below 1 means Herald is ahead). A figure no server has is left out.
Pushca rows (labels with "pushca") are Herald only: the peers do not speak Pushca (n/a).
A highest-sustainable-rate row (fanout --rate max) shows the figures of the chosen rate's
step, and the full table lists every step tried. Each server's chosen rate is its own, so
there the ratio compares only rates and deliveries/s, not latency or CPU at unequal loads.
"""
import json
import os
import re
import statistics
import sys

SERVERS = ["herald", "nchan", "sockudo"]


def get(report, *path):
    v = report
    for p in path:
        if v is None:
            return None
        v = v.get(p)
    return v


def per_delivery_us(r):
    cpu, n = get(r, "server", "cpu_seconds"), r.get("deliveries") or 0
    return cpu * 1e6 / n if cpu is not None and n else None


def mib(kib):
    return kib / 1024.0 if kib is not None else None


def max_rate(r):
    """fanout --rate max: the highest sustainable rate (None if no step was)."""
    return get(r, "search", "max_rate")


def steps_tried(r):
    steps = get(r, "search", "steps")
    return len(steps) if steps is not None else None


def answered(r):
    """Pushca pairs: whether senders were answered (acks, failures or unanswered sends)."""
    return bool(r.get("ack_latency_ms") or r.get("acks") or r.get("ack_failures") or r.get("unacked"))


def ack_lat(key):
    return lambda r: get(r, "ack_latency_ms", key)


def ack_count(key):
    return lambda r: r.get(key) if answered(r) else None


def step_text(step):
    """One step of a rate search, for a table cell."""
    return (f"{fmt(step['rate'])} msg/s: {fmt(step['deliveries_per_second'])} of "
            f"{fmt(step['expected_deliveries_per_second'])} deliveries/s, "
            f"p99 {fmt(step.get('p99_ms'))} ms, {step['verdict']}")


# (label, extractor, better) ; better: "higher", "lower" or None (no ratio)
FIGURES = {
    "fanout": [
        ("highest sustainable msg/s", max_rate, "higher"),
        ("steps tried", steps_tried, None),
        ("deliveries/s", lambda r: r["deliveries_per_second"], "higher"),
        ("publishes/s", lambda r: r["publishes_per_second"], "higher"),
        ("latency p50 ms", lambda r: get(r, "latency_ms", "p50_ms"), "lower"),
        ("latency p90 ms", lambda r: get(r, "latency_ms", "p90_ms"), "lower"),
        ("latency p99 ms", lambda r: get(r, "latency_ms", "p99_ms"), "lower"),
        ("latency p99.9 ms", lambda r: get(r, "latency_ms", "p999_ms"), "lower"),
        ("latency max ms", lambda r: get(r, "latency_ms", "max_ms"), "lower"),
        ("lost", lambda r: r["lost"], "lower"),
        ("duplicated", lambda r: r["duplicated"], "lower"),
        ("connections dropped", lambda r: r["disconnects"], "lower"),
        ("server CPU s", lambda r: get(r, "server", "cpu_seconds"), "lower"),
        ("server CPU µs/delivery", per_delivery_us, "lower"),
        ("server RSS MiB", lambda r: mib(get(r, "server", "rss_after_kib")), "lower"),
        ("generator CPU s", lambda r: r["generator_cpu_seconds"], None),
    ],
    "pairs": [
        ("deliveries/s", lambda r: r["deliveries_per_second"], "higher"),
        ("latency p50 ms", lambda r: get(r, "latency_ms", "p50_ms"), "lower"),
        ("latency p99 ms", lambda r: get(r, "latency_ms", "p99_ms"), "lower"),
        ("latency p99.9 ms", lambda r: get(r, "latency_ms", "p999_ms"), "lower"),
        ("latency max ms", lambda r: get(r, "latency_ms", "max_ms"), "lower"),
        ("lost", lambda r: r["lost"], "lower"),
        ("duplicated", lambda r: r["duplicated"], "lower"),
        ("publish errors", lambda r: r["publish_errors"], "lower"),
        ("sender acks", ack_count("acks"), "higher"),
        ("ack failures", ack_count("ack_failures"), "lower"),
        ("sends never answered", ack_count("unacked"), "lower"),
        ("ack round trip p50 ms", ack_lat("p50_ms"), "lower"),
        ("ack round trip p99 ms", ack_lat("p99_ms"), "lower"),
        ("ack round trip p99.9 ms", ack_lat("p999_ms"), "lower"),
        ("ack round trip max ms", ack_lat("max_ms"), "lower"),
        ("server CPU µs/message", per_delivery_us, "lower"),
        ("server RSS MiB", lambda r: mib(get(r, "server", "rss_after_kib")), "lower"),
        ("generator CPU s", lambda r: r["generator_cpu_seconds"], None),
    ],
    "idle": [
        ("connections open", lambda r: r["connections"], "higher"),
        ("open at end", lambda r: r["alive_at_end"], "higher"),
        ("server RSS MiB", lambda r: mib(get(r, "server", "rss_after_kib")), "lower"),
        ("server RSS KiB/connection", lambda r: get(r, "server", "rss_per_connection_kib"), "lower"),
        ("server CPU s while idle", lambda r: get(r, "server", "cpu_seconds"), "lower"),
    ],
    "connect": [
        ("connections/s", lambda r: r.get("connects_per_second"), "higher"),
        ("connections open", lambda r: r["connections"], "higher"),
        ("connection errors", lambda r: r["connection_errors"], "lower"),
        ("connect p50 ms", lambda r: get(r, "connect_latency_ms", "p50_ms"), "lower"),
        ("connect p99 ms", lambda r: get(r, "connect_latency_ms", "p99_ms"), "lower"),
        ("server CPU s", lambda r: get(r, "server", "cpu_seconds"), "lower"),
        ("server RSS KiB/connection", lambda r: get(r, "server", "rss_per_connection_kib"), "lower"),
    ],
}


# Figures that count failures: summed over rounds, never a median.
TOTALS = {
    "lost", "duplicated", "connections dropped", "publish errors", "ack failures",
    "sends never answered", "connection errors", "lost / duplicated", "errors",
    "ack failures / never answered",
}


def values(reports, extract):
    """The figure from each round's report that has it."""
    out = []
    for r in reports or []:
        try:
            v = extract(r)
        except (KeyError, TypeError):
            v = None
        if v is not None:
            out.append(v)
    return out


def good(reports):
    """The rounds that produced a report (compare.sh leaves a stub for one that failed)."""
    return [r for r in reports or [] if not r.get("failed")]


def incomplete(reports):
    """' (k/N rounds)' when some of the rounds failed, else ''."""
    n, k = len(reports or []), len(good(reports))
    return f" ({k}/{n} rounds)" if k < n else ""


def combine(vs, figure):
    """One figure over the rounds: the median, or the sum for a count of failures."""
    if not vs:
        return None
    return sum(vs) if figure in TOTALS else statistics.median(vs)


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(herald, peers, better):
    peers = [p for p in peers if p is not None]
    if better is None or herald is None or not peers:
        return "—"
    best = max(peers) if better == "higher" else min(peers)
    if best == 0:
        return "=" if herald == 0 else "∞"
    return f"{herald / best:.2f}×"


def lat(key):
    return lambda r: get(r, "latency_ms", key)


def srv(key):
    return lambda r: get(r, "server", key)


IDLE_FIGURES = [
    ("connections held", "higher", [lambda r: r["alive_at_end"]]),
    ("server RSS KiB/connection", "lower", [srv("rss_per_connection_kib")]),
    ("server RSS MiB (all open)", "lower", [lambda r: mib(get(r, "server", "rss_after_kib"))]),
]


# The figures of a highest-sustainable-rate row.
SUSTAINABLE = [
    ("highest sustainable msg/s", "higher", [max_rate]),
    ("deliveries/s at that rate", "higher", [lambda r: r["deliveries_per_second"]]),
    # Each server's own highest rate: latency and CPU at different loads have no ratio.
    ("latency p50 / p99 ms at that rate", None, [lat("p50_ms"), lat("p99_ms")]),
    ("lost / duplicated", "lower", [lambda r: r["lost"], lambda r: r["duplicated"]]),
    ("server CPU µs/delivery at that rate", None, [per_delivery_us]),
    ("steps tried", None, [steps_tried]),
]

# (label prefix, title, [(figure, better, [extractor, ...])])
SUMMARY = [
    ("fanout-1ch-10000sub-r10", "fanout 10,000 WS subs, 1 channel, 10 msg/s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("latency p99.9 / max ms", "lower", [lat("p999_ms"), lat("max_ms")]),
        ("lost / duplicated", "lower", [lambda r: r["lost"], lambda r: r["duplicated"]]),
        ("server CPU µs/delivery", "lower", [per_delivery_us]),
        ("server RSS MiB", "lower", [lambda r: mib(get(r, "server", "rss_after_kib"))]),
    ]),
    ("fanout-1ch-10000sub-sustainable", "fanout 10,000 WS subs, 1 channel, highest sustainable rate",
     SUSTAINABLE),
    ("fanout-1ch-1000sub-r100", "fanout 1,000 subs, 1 channel, 100 msg/s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("latency p99.9 / max ms", "lower", [lat("p999_ms"), lat("max_ms")]),
        ("server CPU µs/delivery", "lower", [per_delivery_us]),
    ]),
    ("fanout-1ch-100sub-r1000", "fanout 100 subs, 1 channel, 1,000 msg/s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("server CPU µs/delivery", "lower", [per_delivery_us]),
    ]),
    ("fanout-1000ch-10000sub-r1000", "fanout 10,000 subs over 1,000 channels, 1,000 msg/s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("latency p99.9 / max ms", "lower", [lat("p999_ms"), lat("max_ms")]),
        ("server CPU µs/delivery", "lower", [per_delivery_us]),
        ("server RSS MiB", "lower", [lambda r: mib(get(r, "server", "rss_after_kib"))]),
    ]),
    ("fanout-sse-1ch-10000sub-r10", "fanout 10,000 SSE subs, 1 channel, 10 msg/s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("latency p99.9 / max ms", "lower", [lat("p999_ms"), lat("max_ms")]),
        ("server CPU µs/delivery", "lower", [per_delivery_us]),
        ("server RSS MiB", "lower", [lambda r: mib(get(r, "server", "rss_after_kib"))]),
    ]),
    ("fanout-sse-1ch-10000sub-sustainable", "fanout 10,000 SSE subs, 1 channel, highest sustainable rate",
     SUSTAINABLE),
    ("pairs-http", "pairs, 1,000 clients, HTTP publish, unpaced (32 requests in flight), 60 s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("server CPU µs/message", "lower", [per_delivery_us]),
        ("generator CPU s (of 60)", None, [lambda r: r["generator_cpu_seconds"]]),
    ]),
    ("pairs-ws", "pairs, 1,000 clients, Herald WS publish, unpaced (32 in flight), 60 s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("server CPU µs/message", "lower", [per_delivery_us]),
        ("generator CPU s (of 60)", None, [lambda r: r["generator_cpu_seconds"]]),
    ]),
    ("pairs-ws-noreply", 'pairs, 1,000 clients, Herald WS publish with "reply": false, unpaced (32 in flight), 60 s', [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("server CPU µs/message", "lower", [per_delivery_us]),
        ("generator CPU s (of 60)", None, [lambda r: r["generator_cpu_seconds"]]),
    ]),
    ("pairs-http-r2890", "pairs, 1,000 clients, HTTP publish at 2,890 msg/s, 60 s", [
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("latency p99.9 / max ms", "lower", [lat("p999_ms"), lat("max_ms")]),
    ]),
    ("pairs-ws-r2890", "pairs, 1,000 clients, Herald WS publish at 2,890 msg/s, 60 s", [
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("latency p99.9 / max ms", "lower", [lat("p999_ms"), lat("max_ms")]),
    ]),
    ("pairs-pushca", "pairs, 1,000 clients, Pushca WS protocol, unpaced (100 in flight), 60 s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("server CPU µs/message", "lower", [per_delivery_us]),
        ("generator CPU s (of 60)", None, [lambda r: r["generator_cpu_seconds"]]),
    ]),
    ("pairs-pushca-r2890", "pairs, 1,000 clients, Pushca WS at 2,890 msg/s, 60 s", [
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("latency p99.9 / max ms", "lower", [lat("p999_ms"), lat("max_ms")]),
    ]),
    ("pairs-pushca-ack", "pairs, 1,000 clients, Pushca WS with acknowledge, unpaced (100 in flight), 60 s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("ack round trip p50 / p99 ms", "lower", [ack_lat("p50_ms"), ack_lat("p99_ms")]),
        ("ack failures / never answered", "lower", [lambda r: r["ack_failures"], lambda r: r["unacked"]]),
    ]),
    ("pairs-pushca-http", "pairs, 800 clients, Pushca REST (/send-notification), unpaced (100 in flight), 60 s", [
        ("deliveries/s", "higher", [lambda r: r["deliveries_per_second"]]),
        ("latency p50 / p99 ms", "lower", [lat("p50_ms"), lat("p99_ms")]),
        ("server CPU µs/message", "lower", [per_delivery_us]),
    ]),
    ("idle", "idle, 19,000 WS connections", IDLE_FIGURES),
    ("idle-sse", "idle, 19,000 SSE connections", IDLE_FIGURES),
    ("idle-pushca", "idle, 19,000 Pushca WS connections (each identified, opened through the router)",
     IDLE_FIGURES),
    ("connect", "connect to 19,000 (200 at a time)", [
        ("connections/s", "higher", [lambda r: r.get("connects_per_second")]),
        ("connect p50 / p99 ms", "lower", [lambda r: get(r, "connect_latency_ms", "p50_ms"),
                                           lambda r: get(r, "connect_latency_ms", "p99_ms")]),
        ("errors", "lower", [lambda r: r["connection_errors"]]),
        ("server CPU s", "lower", [srv("cpu_seconds")]),
    ]),
]


def http_twin(label):
    """The peers' run a Herald-only WebSocket pairs row is compared with: the same load over
    HTTP publish."""
    return label.replace("pairs-ws", "pairs-http").replace("-noreply", "")


def summary(runs):
    print("| scenario | figure | better | " + " | ".join(SERVERS) + " | ratio |")
    print("|---|---|---|" + "---|" * len(SERVERS) + "---|")
    for label, title, figures in SUMMARY:
        reps = dict(runs.get(label, {}))
        via_ws = label.startswith("pairs-ws")
        peers_from = runs.get(http_twin(label), {}) if via_ws else reps
        if not reps and (via_ws or not peers_from):
            continue  # not run (e.g. --only, or a results directory from before the scenario)
        first = True
        for fig, better, extractors in figures:
            cells, ratios = [], []
            vals = {}
            short = False
            for s in SERVERS:
                r = reps.get(s) if s == "herald" else peers_from.get(s)
                vals[s] = [combine(values(r, e), fig) for e in extractors]
                text = " / ".join(fmt(v) for v in vals[s])
                if all(v is None for v in vals[s]):
                    text = "n/a"
                elif via_ws and s != "herald":
                    text = "(HTTP) " + text
                cells.append(text + incomplete(r))
                short = short or bool(incomplete(r))
            # Across transports the generator's own cost differs too (its core is saturated
            # in those rows): the figures stand side by side, with no ratio.
            compared = None if via_ws or short else better
            for i in range(len(extractors)):
                ratios.append(ratio(vals["herald"][i], [vals[s][i] for s in SERVERS if s != "herald"], compared))
            name = title if first else ""
            first = False
            print(f"| {name} | {fig} | {better or ''} | " + " | ".join(cells) + " | " + " / ".join(ratios) + " |")


def main():
    d = sys.argv[1]
    runs = {}
    order = []
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        stem = name[: -len(".json")]
        m = re.fullmatch(r"(.+)\.([a-z-]+)(?:\.r(\d+))?", stem)
        if not m:
            continue
        label, server, rnd = m.group(1), m.group(2), int(m.group(3) or 1)
        try:
            with open(os.path.join(d, name)) as f:
                report = json.load(f)
        except (OSError, ValueError):
            continue
        if label not in runs:
            runs[label] = {}
            order.append(label)
        runs[label].setdefault(server, []).append((rnd, report))
    for reps in runs.values():
        for server, rounds in reps.items():
            reps[server] = [r for _, r in sorted(rounds, key=lambda x: x[0])]
    if "--summary" in sys.argv[2:]:
        summary(runs)
        return
    key = lambda l: (["fanout", "pairs", "idle", "connect"].index(l.split("-")[0]), l)
    # pairs over Herald's WebSocket publish has no peer equivalent: compare with the peers' HTTP run.
    print("| scenario | figure | better | " + " | ".join(SERVERS) + " | Herald ÷ best peer |")
    print("|---|---|---|" + "---|" * len(SERVERS) + "---|")
    for label in sorted(order, key=key):
        reps = runs[label]
        reported = [r for rs in reps.values() for r in good(rs)]
        if not reported:
            continue  # every round failed: nothing to show but the stubs' logs
        kind = reported[0]["scenario"]
        peer_reps = reps
        http_label = http_twin(label)
        via_ws = label.startswith("pairs-ws")
        herald_only = "pushca" in label
        if via_ws and http_label in runs:
            peer_reps = dict(runs[http_label], herald=reps.get("herald"))
        searched = any(get(r, "search") for rs in reps.values() for r in rs)
        for fig, extract, better in FIGURES.get(kind, []):
            if searched and (fig.startswith("latency") or fig.startswith("server CPU")):
                better = None  # at each server's own rate
            vals, spread = {}, {}
            short = False
            for s in SERVERS:
                r = peer_reps.get(s) if s != "herald" else reps.get("herald")
                vs = values(r, extract)
                vals[s] = combine(vs, fig)
                spread[s] = f" ({fmt(min(vs))}–{fmt(max(vs))})" if len(vs) > 1 and fig not in TOTALS else ""
                spread[s] += incomplete(r)
                short = short or bool(incomplete(r))
            if via_ws or short:
                better = None  # across transports, or over fewer rounds for some server
            if all(v is None for v in vals.values()):
                continue
            cells = []
            for s in SERVERS:
                v = fmt(vals[s]) + spread[s]
                if herald_only and s != "herald":
                    v = "n/a"
                elif via_ws and s != "herald" and vals[s] is not None:
                    v += " (http)"
                cells.append(v)
            r = ratio(vals["herald"], [vals[s] for s in SERVERS if s != "herald"], better)
            print(f"| {label} | {fig} | {better or ''} | " + " | ".join(cells) + f" | {r} |")
        # A rate search: every step tried, per server and round.
        rounds = max(len(v) for v in reps.values())
        for k in range(rounds):
            steps = {}
            for s in SERVERS:
                rs = reps.get(s) or []
                steps[s] = (get(rs[k], "search", "steps") or []) if k < len(rs) else []
            name = "step {}" if rounds == 1 else f"round {k + 1}, step {{}}"
            for i in range(max(len(v) for v in steps.values())):
                cells = [step_text(steps[s][i]) if i < len(steps[s]) else "" for s in SERVERS]
                print(f"| {label} | {name.format(i + 1)} |  | " + " | ".join(cells) + " | — |")


if __name__ == "__main__":
    main()
