// Drives headless Chromium against two Heralds serving HTTPS, one with
// HTTP/2 and one without: a page on its own origin opens more EventSource
// streams than the six connections a browser allows per host over HTTP/1.1.
// With HTTP/2 every stream opens and gets a message published by fetch;
// without, only six open.
//
// Usage: node h2.mjs https://127.0.0.1:H2 https://127.0.0.1:H1 (their
// certificate is not trusted: the browser is told to accept it).
import { close, launch } from "./launch.mjs";
import http from "node:http";

const [h2, h1] = process.argv.slice(2);
if (!h2 || !h1) {
  console.error("usage: node h2.mjs https://127.0.0.1:H2 https://127.0.0.1:H1");
  process.exit(2);
}
const STREAMS = 10;

const pageServer = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end("<!doctype html><title>Herald HTTP/2 browser test</title>");
});
await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
const context = await launch({ ignoreHTTPSErrors: true });

function fail(message, details) {
  console.error("FAIL:", message, JSON.stringify(details));
  process.exitCode = 1;
}

try {
  const page = await context.newPage();
  page.on("pageerror", (e) => {
    console.error("FAIL: page error:", e.message);
    process.exitCode = 1;
  });
  await page.goto(`http://127.0.0.1:${pageServer.address().port}/`);
  // Opens the streams and waits up to `wait` ms for them; then, when
  // `publish`, publishes to them.
  const run = (base, wait, publish) =>
    page.evaluate(
      async ({ base, streams, wait, publish }) => {
        const sources = [];
        const got = [];
        let opened = 0;
        for (let i = 0; i < streams; i++) {
          const es = new EventSource(`${base}/sse?channels=h2page`);
          sources.push(es);
          es.onopen = () => opened++;
          got.push(new Promise((ok) => (es.onmessage = (e) => ok(JSON.parse(e.data).data))));
        }
        const until = Date.now() + wait;
        while (opened < streams && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
        const result = { opened };
        if (!publish) {
          sources.forEach((es) => es.close());
          return result;
        }
        const res = await fetch(`${base}/api/v1/publish`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ channel: "h2page", data: "hello" }),
        });
        result.subscribers = (await res.json()).subscribers;
        if (opened === streams) result.data = await Promise.all(got);
        sources.forEach((es) => es.close());
        return result;
      },
      { base, streams: STREAMS, wait, publish },
    );

  const over2 = await run(h2, 10000, true);
  console.log("HTTP/2:", JSON.stringify(over2));
  if (over2.opened !== STREAMS || over2.subscribers !== STREAMS) {
    fail("not every stream opened over HTTP/2", over2);
  } else if (!over2.data.every((d) => d === "hello")) {
    fail("a stream missed the message", over2);
  }
  // The control: over HTTP/1.1 the browser holds the rest back (a publish
  // would wait behind them too).
  const over1 = await run(h1, 2000, false);
  console.log("HTTP/1.1:", JSON.stringify(over1));
  if (!(over1.opened <= 6)) fail("more than six streams opened over HTTP/1.1", over1);
  if (!process.exitCode) console.log("OK");
} catch (e) {
  console.error("FAIL:", e.stack || String(e));
  process.exitCode = 1;
} finally {
  await close(context);
  pageServer.close();
}
