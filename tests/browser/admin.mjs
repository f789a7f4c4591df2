// Drives headless Chromium through push-api's admin page on a running
// Herald: the redirect from the prefix, a refused and an accepted login,
// creating a channel, publishing to it while an EventSource subscriber on
// the push-stream route (in the same page) receives the message, the
// channel's stats, deleting it; API errors and hostile ids shown as text.
//
// Usage: node admin.mjs http://127.0.0.1:PORT   (or env HERALD)
// Env: CHROMIUM (default /usr/bin/chromium), PUSHAPI_PREFIX (/push-api),
// PUSHSTREAM_PREFIX (/ps), PUSHAPI_USER (app), PUSHAPI_PASSWORD (abc123).
import { close, launch } from "./launch.mjs";

const base = (process.argv[2] || process.env.HERALD || "").replace(/\/+$/, "");
if (!base) {
  console.error("usage: node admin.mjs http://127.0.0.1:PORT");
  process.exit(2);
}
const apiPrefix = process.env.PUSHAPI_PREFIX || "/push-api";
const psPrefix = process.env.PUSHSTREAM_PREFIX || "/ps";
const user = process.env.PUSHAPI_USER || "app";
const password = process.env.PUSHAPI_PASSWORD || "abc123";
const channel = `admin_${Date.now().toString(36)}`;
const hostile = `<img src=x onerror="window.__xss=1">&amp;`;
const content = `hello admin <b>&</b> ü/?`;

function fail(message, details) {
  console.error("FAIL:", message);
  if (details !== undefined) console.error(JSON.stringify(details, null, 2));
  process.exitCode = 1;
}

// Awaits `promise`, saying what was awaited if it fails (times out).
async function until(what, promise) {
  try {
    return await promise;
  } catch (e) {
    throw new Error(`${what}: ${e.message}`);
  }
}

function check(ok, message, details) {
  if (!ok) throw new Error(message + (details === undefined ? "" : ": " + JSON.stringify(details)));
}

// The API as the page's user sees it, for checks behind the page's back.
async function api(method, p) {
  const res = await fetch(`${base}${apiPrefix}/api/v1/${p}`, {
    method,
    headers: { Authorization: "Basic " + Buffer.from(`${user}:${password}`).toString("base64") },
  });
  return res.status;
}

const context = await launch();

try {
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  page.on("console", (m) => {
    console.log("[page]", m.type(), m.text());
    if (/Content Security Policy/i.test(m.text())) fail("CSP violation: " + m.text());
  });
  page.on("pageerror", (e) => fail("page error: " + e.message));
  // A browser login prompt (or any dialog) means the page let one through.
  page.on("dialog", (d) => {
    fail(`unexpected ${d.type()} dialog: ${d.message()}`);
    d.dismiss();
  });

  const errorBox = page.locator("#error");
  const notice = page.locator("#notice");
  const rowOf = (id) => page.locator("#channels-body tr").filter({ has: page.locator("td", { hasText: id }) });
  async function submitted(button) {
    await page.getByRole("button", { name: button, exact: true }).click();
  }
  async function noticeSays(text) {
    try {
      await page.waitForFunction((t) => document.getElementById("notice").textContent.includes(t), text);
    } catch (e) {
      const shown = await errorBox.textContent();
      throw new Error(`notice ${JSON.stringify(text)} (error box: ${JSON.stringify(shown)}): ${e.message}`);
    }
    check(await errorBox.isHidden(), "an error shown alongside the notice", await errorBox.textContent());
  }
  async function errorSays(pattern) {
    await until(`error ${pattern}`, errorBox.waitFor({ state: "visible" }));
    const text = await errorBox.textContent();
    check(pattern.test(text), `error box says ${JSON.stringify(text)}, expected ${pattern}`);
    return text;
  }

  // 1. The prefix redirects to the page. (The bare prefix: `<prefix>/`, with
  // the slash, is not routed; the nested router's `/` is `<prefix>`.)
  const res = await page.goto(`${base}${apiPrefix}`);
  const from = res.request().redirectedFrom();
  check(from !== null, "no redirect from the prefix");
  check((await from.response()).status() === 301, "redirect status", (await from.response()).status());
  check(new URL(page.url()).pathname === `${apiPrefix}/admin`, "landed on", page.url());
  check(res.status() === 200, "page status", res.status());
  check(/script-src 'self'/.test(res.headers()["content-security-policy"] || ""), "CSP header", res.headers());
  check(await page.title() === "push-api admin", "title", await page.title());
  check(await page.locator("#app").isHidden(), "the app shows before login");
  // The stylesheet loaded and applies (not blocked by the CSP).
  const maxWidth = await page.evaluate(() => getComputedStyle(document.body).maxWidth);
  check(maxWidth !== "none", "admin/app.css not applied", maxWidth);

  // 2. A wrong password is refused, with a clear error.
  await page.getByLabel("User").fill(user);
  await page.getByLabel("Password").fill(password + "-wrong");
  await submitted("Log in");
  const refused = await errorSays(/401.*wrong user or password/);
  check(await page.locator("#app").isHidden(), "the app shows after a refused login");
  console.log("refused login:", refused);

  // 3. The right one gets in.
  await page.getByLabel("Password").fill(password);
  await submitted("Log in");
  await until("the app after login", page.locator("#app").waitFor({ state: "visible" }));
  await noticeSays("Logged in.");
  check((await page.locator("#session-user").textContent()) === user, "session user");
  check(await page.locator("#login").isHidden(), "login form still shown");

  // 4. Create the channel; it is listed. A second create shows the API error.
  await page.getByLabel("Channel ID").fill(channel);
  await page.getByLabel("TTL (seconds)").fill("600");
  await submitted("Create channel");
  await noticeSays(`Channel ${channel} created.`);
  await until(`${channel} listed`, rowOf(channel).waitFor({ state: "visible" }));
  const cells = await rowOf(channel).locator("td").allTextContents();
  check(cells[0] === channel && cells[1] === "600" && /^\d{4}-\d\d-\d\dT.*Z$/.test(cells[2]), "row", cells);
  await page.getByLabel("Channel ID").fill(channel);
  await submitted("Create channel");
  const duplicate = await errorSays(/HTTP 400, code 11: a channel with this id already exists/);
  console.log("duplicate create:", duplicate);

  // Ids are data: shown as text, never as markup.
  await page.getByLabel("Channel ID").fill(hostile);
  await page.getByLabel("TTL (seconds)").fill("0");
  await submitted("Create channel");
  await noticeSays("created.");
  await until(
    "the hostile id listed as text",
    page.waitForFunction(
      (id) => [...document.querySelectorAll("#channels-body td:first-child")].some((td) => td.textContent === id),
      hostile,
    ),
  );
  check((await page.locator("#channels-body img").count()) === 0, "a channel id became markup");
  check(!(await page.evaluate(() => window.__xss)), "a channel id ran script");

  // 5. A push-stream EventSource in the page; publish through the form.
  const opened = await page.evaluate(
    (url) =>
      new Promise((resolve, reject) => {
        window.__got = [];
        const es = new EventSource(url);
        es.onmessage = (e) => window.__got.push(e.data);
        es.onopen = () => resolve(true);
        es.onerror = () => reject(new Error("EventSource error before open"));
        setTimeout(() => reject(new Error("EventSource did not open")), 8000);
      }),
    `${psPrefix}/ev/${channel}`,
  );
  check(opened, "EventSource open");
  // Global stats see the subscriber.
  for (let i = 0; ; i++) {
    await page.getByRole("button", { name: "Refresh stats" }).click();
    const n = Number(await page.locator("#global-subscribers").textContent());
    if (n >= 1) break;
    check(i < 50, "global stats never showed the subscriber", n);
    await page.waitForTimeout(100);
  }
  check((await page.locator("#global-stats td[data-field=agent]").first().textContent()) === "herald", "agent row");

  await page.getByLabel("Channels (comma-separated)").fill(` ${channel} , `);
  await page.getByLabel("Content").fill(content);
  await submitted("Publish");
  await noticeSays(`Message published to ${channel}.`);
  await until("the message at the page's EventSource", page.waitForFunction(() => window.__got.length > 0));
  const got = (await page.evaluate(() => window.__got)).map((d) => JSON.parse(d));
  check(got.length === 1, "messages received", got);
  check(got[0].channel === channel && got[0].id === 1, "message", got[0]);
  // push-api path-escapes the content; pushstream.js decodes it.
  check(decodeURIComponent(got[0].text) === content, "message text", got[0].text);

  // 6. The channel's stats.
  await page.getByRole("button", { name: `Stats of ${channel}` }).click();
  await until(
    "the channel's stats",
    page.locator("#channel-stats-table td[data-field=published_messages]").waitFor(),
  );
  const published = Number(
    await page.locator("#channel-stats-table td[data-field=published_messages]").textContent(),
  );
  const subscribers = Number(await page.locator("#channel-stats-table td[data-field=subscribers]").textContent());
  check(published >= 1 && subscribers >= 1, "channel stats", { published, subscribers });
  check(
    (await page.locator("#channel-stats-title").textContent()) === `Stats of channel ${channel}`,
    "channel stats title",
  );

  // 7. Delete both channels; they are gone, from the page and the API.
  for (const id of [channel, hostile]) {
    await page.getByRole("button", { name: `Delete ${id}`, exact: true }).click();
    await noticeSays(`Channel ${id} deleted.`);
    await until(`${id} gone from the list`, rowOf(id).waitFor({ state: "detached" }));
    check((await api("GET", "channels/" + encodeURIComponent(id))) === 404, `${id} still stored`);
  }
  check(await page.locator("#channels-empty").isVisible(), "'No channels.' not shown");

  // 8. Log out: back to the login form.
  await page.getByRole("button", { name: "Log out" }).click();
  await until("the login form after logout", page.locator("#login").waitFor({ state: "visible" }));
  check(await page.locator("#app").isHidden(), "the app shows after logout");

  // 9. `<prefix>/admin/` leads to the same page, its relative URLs right.
  await page.goto(`${base}${apiPrefix}/admin/`);
  await page.getByLabel("User").fill(user);
  await page.getByLabel("Password").fill(password);
  await submitted("Log in");
  await until("the app after login at admin/", page.locator("#app").waitFor({ state: "visible" }));
  await until("'No channels.' at admin/", page.locator("#channels-empty").waitFor({ state: "visible" }));
  const slashWidth = await page.evaluate(() => getComputedStyle(document.body).maxWidth);
  check(slashWidth === maxWidth, "admin/app.css not applied at admin/", slashWidth);

  console.log(JSON.stringify({ channel, published, subscribers, message: got[0] }));
  if (!process.exitCode) console.log("OK");
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await close(context);
}
