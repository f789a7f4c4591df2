#!/usr/bin/env python3
"""Tests of bench/table.py on small hand-made reports: medians over rounds, failure counts
summed, ratios against the best peer. Run: python3 bench/test_table.py"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import table  # noqa: E402


def connect_report(rate, cpu, errors, p99):
    return {
        "scenario": "connect",
        "connects_per_second": rate,
        "connections": 19000,
        "connection_errors": errors,
        "connect_latency_ms": {"p50_ms": 8.0, "p99_ms": p99},
        "server": {"cpu_seconds": cpu, "rss_per_connection_kib": 6.0},
    }


def render(reports, *args):
    """table.py's output for a directory holding `reports` ({file name: report})."""
    with tempfile.TemporaryDirectory() as d:
        for name, report in reports.items():
            with open(os.path.join(d, name), "w") as f:
                json.dump(report, f)
        out = io.StringIO()
        argv = sys.argv
        sys.argv = ["table.py", d, *args]
        try:
            with contextlib.redirect_stdout(out):
                table.main()
        finally:
            sys.argv = argv
        return out.getvalue()


def row(text, figure):
    """The cells of the first row naming `figure`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if figure in cells:
            return cells
    raise AssertionError(f"no row {figure!r} in:\n{text}")


class Rounds(unittest.TestCase):
    reports = {
        "connect.herald.r1.json": connect_report(19000, 0.60, 0, 30.0),
        "connect.herald.r2.json": connect_report(20000, 0.50, 1, 20.0),
        "connect.herald.r3.json": connect_report(15000, 0.58, 2, 40.0),
        "connect.nchan.r1.json": connect_report(17000, 0.40, 5, 25.0),
        "connect.nchan.r2.json": connect_report(16000, 0.45, 0, 26.0),
        "connect.nchan.r3.json": connect_report(18500, 0.70, 0, 27.0),
    }

    def test_full_table_gives_the_median_and_range_and_ratio(self):
        text = render(self.reports)
        cells = row(text, "connections/s")
        self.assertEqual(cells[3], "19,000 (15,000–20,000)")
        self.assertEqual(cells[4], "17,000 (16,000–18,500)")
        self.assertEqual(cells[6], "1.12×")
        cpu = row(text, "server CPU s")
        self.assertEqual(cpu[3], "0.58 (0.50–0.60)")
        self.assertEqual(cpu[6], f"{0.58 / 0.45:.2f}×")

    def test_failures_are_summed_over_rounds(self):
        text = render(self.reports)
        cells = row(text, "connection errors")
        self.assertEqual(cells[3:5], ["3", "5"])

    def test_summary_uses_medians(self):
        text = render(self.reports, "--summary")
        cells = row(text, "connect p50 / p99 ms")
        self.assertEqual(cells[3], "8.00 / 30.0")
        self.assertEqual(cells[4], "8.00 / 26.0")
        self.assertEqual(row(text, "errors")[3:5], ["3", "5"])

    def test_a_failed_round_shows_and_withholds_the_ratio(self):
        reports = dict(self.reports)
        reports["connect.nchan.r3.json"] = {"failed": True, "log": "connect.nchan.r3.log"}
        for args in [(), ("--summary",)]:
            text = render(reports, *args)
            cells = row(text, "connections/s")
            self.assertIn("(2/3 rounds)", cells[4], text)
            self.assertNotIn("rounds", cells[3], text)
            self.assertEqual(cells[6], "—", text)
        # Every round of a scenario failed: the row is left out, not a crash.
        only_stubs = {"connect.herald.json": {"failed": True}}
        self.assertNotIn("connections/s", render(only_stubs))

    def test_one_round_names_files_without_a_round(self):
        text = render({
            "connect.herald.json": connect_report(19000, 0.60, 0, 30.0),
            "connect.nchan.json": connect_report(20000, 0.50, 0, 20.0),
        })
        cells = row(text, "connections/s")
        self.assertEqual(cells[3:5], ["19,000", "20,000"])
        self.assertEqual(cells[6], "0.95×")


def pairs_report(rate):
    return {
        "scenario": "pairs",
        "deliveries_per_second": rate,
        "deliveries": rate * 60,
        "latency_ms": {"p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0, "max_ms": 4.0},
        "lost": 0,
        "duplicated": 0,
        "publish_errors": 0,
        "generator_cpu_seconds": 58.0,
        "server": {"cpu_seconds": 59.0},
    }


class WebSocketPairs(unittest.TestCase):
    """Herald-only WebSocket pairs rows take the peers' figures from the HTTP run."""

    reports = {
        "pairs-http.herald.json": pairs_report(70000),
        "pairs-http.nchan.json": pairs_report(60000),
        "pairs-ws-noreply.herald.json": pairs_report(90000),
    }

    def test_summary_compares_with_the_peers_http_run(self):
        text = render(self.reports, "--summary")
        title = 'pairs, 1,000 clients, Herald WS publish with "reply": false, unpaced (32 in flight), 60 s'
        cells = next(row for row in (l.strip("|").split("|") for l in text.splitlines())
                     if row[0].strip() == title)
        cells = [c.strip() for c in cells]
        self.assertEqual(cells[3:5], ["90,000", "(HTTP) 60,000"])
        # The generator's cost differs between the transports: no ratio across them.
        self.assertEqual(cells[6], "—")

    def test_a_row_herald_did_not_run_is_left_out(self):
        reports = {k: v for k, v in self.reports.items() if "noreply" not in k}
        self.assertNotIn("reply", render(reports, "--summary"))

    def test_full_table_too(self):
        lines = [l for l in render(self.reports).splitlines() if "deliveries/s" in l]
        noreply = [l for l in lines if "reply" in l]
        self.assertEqual(len(noreply), 1, lines)
        cells = [c.strip() for c in noreply[0].strip("|").split("|")]
        self.assertEqual(cells[3:5], ["90,000", "60,000 (http)"])
        self.assertEqual(cells[6], "—")


if __name__ == "__main__":
    unittest.main()
