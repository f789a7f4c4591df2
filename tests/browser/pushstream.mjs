// Drives headless Chromium against a running Herald: a page on its own
// origin subscribes to three push-stream channels (EventSource, WebSocket,
// XHR long-polling); this script publishes numbered messages while the
// server's short TTLs force reconnects, then checks that every transport
// got every message exactly once, in order.
//
// Usage: node pushstream.mjs http://127.0.0.1:PORT/ps
// Env: CHROMIUM (default /usr/bin/chromium), MESSAGES (default 40).
import { close, launch } from "./launch.mjs";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const herald = process.argv[2];
if (!herald) {
  console.error("usage: node pushstream.mjs http://127.0.0.1:PORT/ps");
  process.exit(2);
}
const count = Number(process.env.MESSAGES || 40);
const here = path.dirname(fileURLToPath(import.meta.url));
const channels = { ev: "browser_ev", ws: "browser_ws", lp: "browser_lp" };
const deadline = (ms) => Date.now() + ms;
const pause = (ms) => new Promise((r) => setTimeout(r, ms));

function fail(message, details) {
  console.error("FAIL:", message);
  if (details !== undefined) console.error(JSON.stringify(details, null, 2));
  process.exitCode = 1;
}

// The test page, served from its own origin (cross-origin to Herald, as
// PushaaS apps are).
const page_html = fs.readFileSync(path.join(here, "page.html"));
const pageServer = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(page_html);
});
await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
const pageUrl = `http://127.0.0.1:${pageServer.address().port}/?herald=${encodeURIComponent(herald)}`;

const context = await launch();

try {
  const page = await context.newPage();
  page.on("console", (m) => console.log("[page]", m.text()));
  page.on("pageerror", (e) => fail("page error: " + e.message));
  await page.goto(pageUrl);

  // Publish only once every transport is subscribed (channel stats say so).
  async function subscribers(channel) {
    const res = await fetch(`${herald}/channels-stats?id=${channel}`);
    return res.status === 200 ? (await res.json()).subscribers : 0;
  }
  const ready = deadline(20000);
  for (;;) {
    const counts = await Promise.all(Object.values(channels).map(subscribers));
    if (counts.every((n) => n > 0)) break;
    if (Date.now() > ready) throw new Error("subscribers never connected: " + counts);
    await pause(50);
  }

  const expected = [];
  for (let i = 1; i <= count; i++) {
    const text = `message ${i} ü/&`;
    expected.push(text);
    for (const [kind, channel] of Object.entries(channels)) {
      const headers = kind === "ev" ? { "Event-Id": `e${i}` } : {};
      // pushstream.js publishes encodeURIComponent(text).
      const res = await fetch(`${herald}/pub?id=${channel}`, {
        method: "POST",
        headers,
        body: encodeURIComponent(text),
      });
      if (res.status !== 200) throw new Error(`publish ${i} to ${channel}: ${res.status}`);
    }
    // Spread the messages over several subscriber TTLs.
    await pause(100);
  }

  const done = deadline(60000);
  let state;
  for (;;) {
    state = await page.evaluate(() => ({ results, opens, errors }));
    const complete = Object.values(state.results).every((r) => r.length >= count);
    if (complete || Date.now() > done) break;
    await pause(100);
  }
  for (const kind of Object.keys(channels)) {
    const got = state.results[kind];
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      fail(`${kind}: messages missing, duplicated or out of order`, { got, expected });
    }
    if (state.opens[kind] < 2) {
      fail(`${kind}: expected at least one forced reconnect, saw ${state.opens[kind]} connection(s)`);
    }
  }
  if (state.errors.length) fail("page errors", state.errors);
  console.log(JSON.stringify({ messages: count, connections: state.opens }));
  if (!process.exitCode) console.log("OK");
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await close(context);
  pageServer.close();
}
