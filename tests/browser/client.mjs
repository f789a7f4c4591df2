// clients/js/herald.js in headless Chromium against a running Herald whose
// connections live 1.2–1.8 s and whose `h*` channels keep 20 messages:
// 1. resume: a page subscribes to two channels while this script publishes
//    numbered messages over several forced reconnects; every message arrives
//    exactly once and in order, with no gap; a publish from the page works;
//    a frame over the size limit (close 1009) stops the client for good;
// 2. gap: the page's socket drops and its network stays down (connections
//    go nowhere, with growing delays) while more messages than the history
//    holds are published; on reconnect the client reports `too_old`;
// 3. tokens: a token granting a protected channel subscribes it, is told
//    of its own join there (presence events are on for it), and
//    receives (and acks) a targeted message; without it the subscribe is
//    refused; a channel deleted says so; a refused handshake (bad token) is
//    retried with backoff, not hammered.
//
// Usage: node client.mjs http://127.0.0.1:PORT TOKEN
// (TOKEN: a JWT for `sub` "page" granting the protected channel `hsecret`.)
import { close, launch } from "./launch.mjs";
import fs from "node:fs";
import http from "node:http";

const [herald, token] = process.argv.slice(2);
if (!herald || !token) {
  console.error("usage: node client.mjs http://127.0.0.1:PORT TOKEN");
  process.exit(2);
}
const HISTORY = 20; // what the server keeps per `h*` channel
const MESSAGES = Number(process.env.MESSAGES || 80);
const pause = (ms) => new Promise((r) => setTimeout(r, ms));

function fail(message, details) {
  console.error("FAIL:", message);
  if (details !== undefined) console.error(JSON.stringify(details, null, 2));
  process.exitCode = 1;
}

// The page, on its own origin, with the client and a harness that records
// what each client sees. A "flaky" client's connections go nowhere while
// `offline.on` (this server drops WebSocket upgrades), and are counted.
const clientJs = fs.readFileSync(new URL("../../clients/js/herald.js", import.meta.url));
const pageHtml = `<!doctype html><meta charset="utf-8"><title>herald.js test</title>
<script type="module">
import { Herald } from "/herald.js";
const offline = (window.offline = { on: false, attempts: 0 });
class Flaky extends WebSocket {
  constructor(url) {
    offline.attempts++;
    super(offline.on ? "ws://" + location.host + "/offline" : url);
  }
}
window.clients = {};
window.start = (name, url, { flaky, ...options }) => {
  const log = { messages: [], gaps: [], deleted: [], states: [], errors: [], targeted: [], presence: [] };
  const h = new Herald(url, flaky ? { ...options, WebSocket: Flaky } : options);
  h.on("message", (m) => log.messages.push({ channel: m.channel, offset: m.offset, epoch: m.epoch, n: m.data.n }));
  h.on("gap", (g) => log.gaps.push(g));
  h.on("deleted", (d) => log.deleted.push(d));
  h.on("state", (s, why) => log.states.push([s, why?.code ?? null, Date.now()]));
  h.on("error", (e) => log.errors.push({ code: e.code, channel: e.channel, message: e.message }));
  h.on("targeted", (m) => log.targeted.push(m.data));
  h.on("presence", (p) => log.presence.push(p));
  clients[name] = { h, log };
};
window.ready = true;
</script>`;
const pageServer = http.createServer((req, res) => {
  if (req.url === "/herald.js") {
    res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
    return res.end(clientJs);
  }
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end(pageHtml);
});
await new Promise((r) => pageServer.listen(0, "127.0.0.1", r));
const pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;

async function post(path, body, method = "POST") {
  const res = await fetch(herald + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function publish(channel, n) {
  const res = await post("/api/v1/publish", { channel, data: { n } });
  if (res.status !== 200) throw new Error(`publish ${n} to ${channel}: ${JSON.stringify(res)}`);
  return res.body;
}

const context = await launch();
let page;
const log = (name) => page.evaluate((name) => clients[name].log, name);
const opens = (l) => l.states.filter(([s]) => s === "open").length;

// Polls `get` until `done(value)`, or fails with `what` after `ms`.
async function until(what, ms, get, done) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await get();
    if (done(value)) return value;
    if (Date.now() > end) throw new Error(`timed out: ${what}: ${JSON.stringify(value)}`);
    await pause(50);
  }
}

// The page's client `name` when open (after a reconnect hint it is not for a moment).
const isOpen = (name) => until(`${name} open`, 5000, () => page.evaluate((n) => clients[n].h.state, name), (s) => s === "open");

async function resume() {
  await page.evaluate(
    (url) => start("resume", url, { channels: ["h1", "h2"], minDelay: 100, maxDelay: 2000 }),
    herald,
  );
  await page.evaluate(() => Promise.all(["h1", "h2"].map((c) => clients.resume.h.subscribe(c))));
  const started = Date.now();
  for (let n = 1; n <= MESSAGES; n++) {
    await publish("h1", n);
    await publish("h2", n);
    await pause(40 + Math.random() * 80);
  }
  const want = MESSAGES * 2;
  const got = await until("resume: every message", 15000, () => log("resume"), (l) => l.messages.length >= want);
  await pause(300); // room for a duplicate to show up
  const l = await log("resume");
  for (const channel of ["h1", "h2"]) {
    const ns = l.messages.filter((m) => m.channel === channel).map((m) => m.n);
    const expected = Array.from({ length: MESSAGES }, (_, i) => i + 1);
    if (JSON.stringify(ns) !== JSON.stringify(expected)) {
      fail(`resume: ${channel} messages missing, duplicated or out of order`, { got: ns });
    }
  }
  if (opens(l) < 3) fail(`resume: expected at least two reconnects, saw ${opens(l)} connection(s)`, l.states);
  if (l.gaps.length || l.errors.length) fail("resume: gaps or errors", { gaps: l.gaps, errors: l.errors });
  console.log(
    `resume: ${got.messages.length} messages in ${Date.now() - started} ms over ${opens(l)} connections, ` +
      `closes ${JSON.stringify(l.states.filter(([s]) => s === "connecting").map(([, code]) => code))}`,
  );

  // Messages delivered already and sent again are dropped: ask the server
  // to replay h1's last five (a `subscribe` with an older `since`).
  const replay = await until("resume: replay", 5000, async () => {
    await isOpen("resume");
    return page.evaluate(async () => {
      const { h, log } = clients.resume;
      const { offset, epoch } = h.channels.get("h1");
      const since = { offset: offset - 5, epoch };
      const r = await h._request({ cmd: "subscribe", channel: "h1", since }).catch(() => null);
      await new Promise((ok) => setTimeout(ok, 300));
      return r && { replayed: r.replayed, delivered: log.messages.length };
    });
  }, (r) => r?.replayed === 5);
  if (replay.delivered !== want) fail(`resume: ${replay.delivered - want} replayed message(s) delivered twice`);

  // A publish from the page (server.allow_client_publish), retried if a
  // reconnect gets in the way.
  const reply = await until("page publish", 5000, async () => {
    await isOpen("resume");
    return page.evaluate(() => clients.resume.h.publish("hpub", { n: 1 }).catch((e) => String(e)));
  }, (r) => typeof r === "object");
  if (!(reply.offset >= 1 && reply.epoch)) fail("page publish: unexpected reply", reply);

  // A frame over limits.max_message_size: close 1009, which is not retried.
  await until("close 1009", 10000, async () => {
    await isOpen("resume");
    await page.evaluate(() => clients.resume.h.publish("h1", "x".repeat(70000)).catch(() => {}));
    await pause(500);
    return log("resume");
  }, (l) => l.states.at(-1)[0] === "closed");
  await pause(1500);
  const after = await log("resume");
  const last = after.states.at(-1);
  if (last[0] !== "closed" || last[1] !== 1009) fail("1009: expected a final close 1009", after.states);
  console.log(`1009: closed for good (${JSON.stringify(last.slice(0, 2))})`);
}

async function gap() {
  await page.evaluate(
    (url) => start("gap", url, { channels: ["hgap"], flaky: true, minDelay: 100, maxDelay: 400 }),
    herald,
  );
  await page.evaluate(() => clients.gap.h.subscribe("hgap"));
  for (let n = 1; n <= 3; n++) await publish("hgap", n);
  await until("gap: first messages", 5000, () => log("gap"), (l) => l.messages.length === 3);

  await isOpen("gap");
  const before = await page.evaluate(() => {
    offline.on = true;
    clients.gap.h._drop();
    return offline.attempts;
  });
  await until("gap: disconnected", 5000, () => page.evaluate(() => clients.gap.h.state), (s) => s !== "open");
  for (let n = 4; n <= HISTORY + 8; n++) await publish("hgap", n);
  await pause(1500);
  const tries = (await page.evaluate(() => offline.attempts)) - before;
  await page.evaluate(() => (offline.on = false));
  // Backoff: 100 ms doubling up to 400 ms, halved by jitter at worst, takes
  // a handful of tries in 1.5 s; no backoff would take hundreds.
  if (tries < 2 || tries > 15) fail(`gap: ${tries} connection attempts while offline for 1.5 s`);

  const l = await until("gap: too_old", 5000, () => log("gap"), (l) => l.gaps.length > 0);
  const g = l.gaps[0];
  if (l.gaps.length !== 1 || g.channel !== "hgap" || g.recovery !== "too_old") fail("gap: expected one too_old", l.gaps);
  await publish("hgap", 99);
  const end = await until("gap: live after the gap", 5000, () => log("gap"), (l) => l.messages.length >= 4);
  const ns = end.messages.map((m) => m.n);
  if (JSON.stringify(ns) !== "[1,2,3,99]") fail("gap: expected 1,2,3 then only live messages", ns);
  console.log(`gap: ${JSON.stringify(g)} after ${tries} tries offline; then ${JSON.stringify(ns)}`);
  await page.evaluate(() => clients.gap.h.close());
}

async function tokens() {
  await page.evaluate(
    ([url, token]) => start("granted", url, { token: () => Promise.resolve(token), channels: ["hsecret", "hdel"] }),
    [herald, token],
  );
  await page.evaluate(() => Promise.all(["hsecret", "hdel"].map((c) => clients.granted.h.subscribe(c))));
  await publish("hsecret", 1);
  await publish("hdel", 1);
  await until("tokens: protected message", 5000, () => log("granted"), (l) => l.messages.length === 2);
  // `hsecret` announces joins: the client's own reached it as presence,
  // not as a message, and left its resume position alone.
  const seen = await log("granted");
  if (JSON.stringify(seen.presence) !== '[{"type":"join","channel":"hsecret","user":"page"}]') {
    fail("tokens: presence", seen.presence);
  }
  const at = await page.evaluate(() => clients.granted.h.channels.get("hsecret"));
  if (at?.offset !== 1) fail("tokens: hsecret's position after its first message", at);

  // A targeted send to the token's `sub`, acknowledged by the client.
  const sent = await until("tokens: acked send", 10000, () =>
    post("/api/v1/send", { filter: { user: "page" }, data: "psst", ack: true, timeout_ms: 1000 }),
    (r) => r.status === 200 && r.body.acked === true,
  );
  console.log("tokens: targeted send", JSON.stringify(sent.body));

  const del = await post("/api/v1/channels/hdel", undefined, "DELETE");
  const l = await until("tokens: deleted", 5000, () => log("granted"), (l) => l.deleted.length > 0);
  if (del.status !== 200 || JSON.stringify(l.deleted) !== '[{"channel":"hdel"}]') fail("tokens: delete", { del, l });
  if (!l.targeted.includes("psst")) fail("tokens: no targeted message", l.targeted);
  const kept = await page.evaluate(() => [...clients.granted.h.channels.keys()]);
  if (JSON.stringify(kept) !== '["hsecret"]') fail("tokens: a deleted channel is still resumed", kept);

  // No token: the server refuses the protected channel; the connection stays.
  await page.evaluate((url) => start("anonymous", url, { channels: [] }), herald);
  const refused = await page.evaluate(() => clients.anonymous.h.subscribe("hsecret").then(() => "subscribed", (e) => e.code));
  if (refused !== "forbidden") fail(`tokens: subscribe without a grant: ${refused}`);
  if ((await page.evaluate(() => clients.anonymous.h.state)) !== "open") fail("tokens: refusal closed the connection");

  // A bad token: 401 on every handshake, retried later and later.
  await page.evaluate(
    (url) => start("refused", url, { token: "not-a-jwt", channels: ["h1"], flaky: true, minDelay: 100, maxDelay: 800 }),
    herald,
  );
  const before = await page.evaluate(() => offline.attempts);
  await pause(4000);
  const tries = (await page.evaluate(() => offline.attempts)) - before;
  const r = await log("refused");
  if (opens(r) !== 0 || tries < 3 || tries > 15) fail(`tokens: ${tries} refused handshakes in 4 s`, r.states);
  console.log(`tokens: bad token tried ${tries} times in 4 s`);
  await page.evaluate(() => ["granted", "anonymous", "refused"].forEach((n) => clients[n].h.close()));
}

try {
  page = await context.newPage();
  page.on("pageerror", (e) => fail("page error: " + e.message));
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.ready === true);
  await resume();
  await gap();
  await tokens();
  if (!process.exitCode) console.log("OK");
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await close(context);
  pageServer.close();
}
