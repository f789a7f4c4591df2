// Drives headless Chromium against two running Heralds from a page on its
// own origin (cross-origin to both, as most apps' pages are):
// - the first allows any origin: the page subscribes over EventSource and
//   WebSocket, publishes with fetch (a JSON body, so after a preflight) and
//   reads the answer, and both streams get the message;
// - the second allows only another origin: the same calls fail in the
//   browser (tests/cors.rs shows the refused publish takes no effect).
//
// Usage: node native.mjs http://127.0.0.1:OPEN http://127.0.0.1:CLOSED
import { close, launch } from "./launch.mjs";
import http from "node:http";

const [open, closed] = process.argv.slice(2);
if (!open || !closed) {
  console.error("usage: node native.mjs http://127.0.0.1:OPEN http://127.0.0.1:CLOSED");
  process.exit(2);
}

function fail(message, details) {
  console.error("FAIL:", message);
  if (details !== undefined) console.error(JSON.stringify(details, null, 2));
  process.exitCode = 1;
}

const pageServer = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end("<!doctype html><title>Herald native browser test</title>");
});
await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
const pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;

const context = await launch();

// In the page: subscribe over both streams, publish once both are open,
// and report what each stream got (or how each step failed).
async function roundTrip(base) {
  const wsBase = base.replace(/^http/, "ws");
  const within = (ms, promise) =>
    Promise.race([promise, new Promise((_, no) => setTimeout(() => no(new Error("timed out")), ms))]);
  const out = { sse: null, ws: null, publish: null };
  const es = new EventSource(`${base}/sse?channels=b_sse`);
  const ws = new WebSocket(`${wsBase}/ws?channels=b_ws`);
  const sseMessage = new Promise((ok, no) => {
    es.onmessage = (e) => ok(JSON.parse(e.data).data);
    es.onerror = () => es.readyState === EventSource.CLOSED && no(new Error("EventSource refused"));
  });
  const wsMessage = new Promise((ok, no) => {
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.channel === "b_ws") ok(m.data);
    };
    ws.onclose = (e) => no(new Error(`WebSocket closed ${e.code}`));
  });
  // Settled below; marked handled now so a refusal is not an unhandled rejection.
  for (const p of [sseMessage, wsMessage]) p.catch(() => {});
  const opened = await Promise.allSettled([
    within(5000, new Promise((ok, no) => { es.onopen = ok; es.addEventListener("error", no); })),
    within(5000, new Promise((ok, no) => { ws.onopen = ok; ws.addEventListener("error", no); })),
  ]);
  out.opened = opened.map((r) => r.status);
  try {
    const res = await fetch(`${base}/api/v1/publish`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ channels: ["b_sse", "b_ws"], data: "from the page" }),
    });
    out.publish = { status: res.status, body: await res.json() };
  } catch (e) {
    out.publish = { error: String(e) };
  }
  const got = await Promise.allSettled([within(5000, sseMessage), within(5000, wsMessage)]);
  [out.sse, out.ws] = got.map((r) => (r.status === "fulfilled" ? r.value : String(r.reason)));
  es.close();
  ws.close();
  return out;
}

try {
  const page = await context.newPage();
  page.on("pageerror", (e) => fail("page error: " + e.message));
  await page.goto(pageUrl);

  const allowed = await page.evaluate(roundTrip, open);
  console.log("allowed origin:", JSON.stringify(allowed));
  if (JSON.stringify(allowed.opened) !== JSON.stringify(["fulfilled", "fulfilled"])) {
    fail("streams did not open from another origin", allowed);
  }
  if (allowed.publish?.status !== 200 || allowed.publish.body.subscribers !== 2) {
    fail("the page could not publish or read the answer", allowed);
  }
  if (allowed.sse !== "from the page" || allowed.ws !== "from the page") {
    fail("a stream missed the message", allowed);
  }

  const refused = await page.evaluate(roundTrip, closed);
  console.log("refused origin:", JSON.stringify(refused));
  if (JSON.stringify(refused.opened) !== JSON.stringify(["rejected", "rejected"])) {
    fail("streams opened from an origin that is not allowed", refused);
  }
  if (!refused.publish?.error) fail("the page read a refused publish's answer", refused);
  if (!process.exitCode) console.log("OK");
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await close(context);
  pageServer.close();
}
