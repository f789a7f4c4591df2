// Drives headless Chromium against Herald over ws:// and wss:// (the plain
// socket's path and the TLS path): the browser offers permessage-deflate,
// Herald accepts it, and a large message goes both ways intact: published
// by the page with the WebSocket `publish` command (which Chromium sends
// compressed) and delivered back to it (which Herald sends compressed).
// Then over http:// and https://, an EventSource stream comes as gzip,
// delivers a large message intact, and, when the server ends it (the
// connection's lifetime, a few seconds here; a gzip stream without its
// trailer), reconnects and resumes. tests/compression.rs checks the bytes.
//
// Usage: node compression.mjs ws://127.0.0.1:PLAIN wss://127.0.0.1:TLS
// (the TLS certificate is not trusted: the browser is told to accept it).
import { close, launch } from "./launch.mjs";
import http from "node:http";

const bases = process.argv.slice(2);
if (bases.length !== 2) {
  console.error("usage: node compression.mjs ws://127.0.0.1:PLAIN wss://127.0.0.1:TLS");
  process.exit(2);
}

const pageServer = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end("<!doctype html><title>Herald compression browser test</title>");
});
await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
const context = await launch({ ignoreHTTPSErrors: true });

try {
  const page = await context.newPage();
  page.on("pageerror", (e) => {
    console.error("FAIL: page error:", e.message);
    process.exitCode = 1;
  });
  await page.goto(`http://127.0.0.1:${pageServer.address().port}/`);
  for (const base of bases) {
    const result = await page.evaluate(async (base) => {
      const rows = Array.from({ length: 500 }, (_, i) => ({ symbol: "HRLD", price: 100 + (i % 7) }));
      const ws = new WebSocket(`${base}/ws?channels=deflated`);
      const got = new Promise((ok, no) => {
        const replies = [];
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          if (m.channel === "deflated") ok({ data: m.data, replies });
          else replies.push(m);
        };
        ws.onclose = (e) => no(new Error(`closed ${e.code} ${e.reason}`));
        setTimeout(() => no(new Error("no message in 10 s")), 10000);
      });
      await new Promise((ok, no) => { ws.onopen = ok; ws.onerror = () => no(new Error("refused")); });
      ws.send(JSON.stringify({ id: 1, cmd: "publish", channel: "deflated", data: rows }));
      const { data, replies } = await got;
      ws.close();
      return {
        extensions: ws.extensions,
        intact: JSON.stringify(data) === JSON.stringify(rows),
        bytes: JSON.stringify(rows).length,
        replies,
      };
    }, base);
    console.log(base.split(":")[0], JSON.stringify({ ...result, replies: result.replies.length }));
    if (!result.extensions.startsWith("permessage-deflate")) {
      console.error("FAIL: deflate not agreed over", base, result.extensions);
      process.exitCode = 1;
    }
    if (!result.intact) {
      console.error("FAIL: the message did not come back intact over", base);
      process.exitCode = 1;
    }
    if (result.replies.some((r) => r.error)) {
      console.error("FAIL: the publish was refused over", base, JSON.stringify(result.replies));
      process.exitCode = 1;
    }
  }
  for (const base of bases.map((b) => b.replace(/^ws/, "http"))) {
    const encoding = page
      .waitForResponse((r) => r.url().startsWith(`${base}/sse?`), { timeout: 10000 })
      .then((r) => r.headers()["content-encoding"]);
    const result = await page.evaluate(async (base) => {
      const rows = Array.from({ length: 500 }, (_, i) => ({ symbol: "HRLD", price: 100 + (i % 7) }));
      const es = new EventSource(`${base}/sse?channels=gzipped`);
      let opens = 0;
      const messages = [];
      let wake = () => {};
      es.onopen = () => { opens++; wake(); };
      es.onmessage = (e) => { messages.push(JSON.parse(e.data).data); wake(); };
      const until = async (done, what) => {
        const deadline = Date.now() + 15000;
        while (!done()) {
          if (Date.now() > deadline) throw new Error(`no ${what} (${es.readyState})`);
          await new Promise((r) => { wake = r; setTimeout(r, 100); });
        }
      };
      const publish = (data) =>
        fetch(`${base}/api/v1/publish`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ channel: "gzipped", data }),
        });
      await until(() => opens === 1, "open");
      await publish(rows);
      await until(() => messages.length === 1, "message");
      // The server ends the stream; the browser reconnects and resumes.
      await until(() => opens === 2, "reconnect");
      await publish("after");
      await until(() => messages.length === 2, "message after the reconnect");
      es.close();
      return {
        intact: JSON.stringify(messages[0]) === JSON.stringify(rows),
        after: messages[1],
        opens,
      };
    }, base);
    const encoded = await encoding;
    console.log(base.split(":")[0], "sse", encoded, JSON.stringify(result));
    if (encoded !== "gzip") {
      console.error("FAIL: the stream was not gzip over", base, encoded);
      process.exitCode = 1;
    }
    if (!result.intact || result.after !== "after") {
      console.error("FAIL: SSE messages not intact over", base, JSON.stringify(result));
      process.exitCode = 1;
    }
  }
  if (!process.exitCode) console.log("OK");
} catch (e) {
  console.error("FAIL:", e.stack || String(e));
  process.exitCode = 1;
} finally {
  await close(context);
  pageServer.close();
}
