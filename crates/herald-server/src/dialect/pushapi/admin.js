// push-api admin: logs in with the basic-auth credentials, then drives the
// publisher API with them. URLs are relative to the page (<prefix>/admin),
// so the app works under any prefix. Data is only ever rendered as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // The Authorization value, in memory only; null when logged out.
  let authorization = null;
  // The channel whose stats are shown, if any.
  let statsChannel = null;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    describe() {
      if (this.status === 0) return this.message;
      const code = this.code === undefined || this.code === null ? "" : `, code ${this.code}`;
      return `HTTP ${this.status}${code}: ${this.message}`;
    }
  }

  function basic(user, password) {
    // btoa takes Latin-1 only: encode UTF-8 bytes first.
    let binary = "";
    for (const b of new TextEncoder().encode(`${user}:${password}`)) {
      binary += String.fromCharCode(b);
    }
    return "Basic " + btoa(binary);
  }

  // Calls api/v1/<path>; resolves to the parsed JSON body (or null), rejects
  // with an ApiError carrying push-api's {"code","message"} when there is one.
  async function api(method, path, body, auth = authorization) {
    const init = {
      method,
      headers: { Authorization: auth },
      // The credentials go in our own header: no cookies, and no browser
      // login prompt on a 401.
      credentials: "omit",
      cache: "no-store",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch("api/v1/" + path, init);
    } catch (e) {
      throw new ApiError(0, null, `Cannot reach push-api (${e.message}).`);
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (res.ok) return data;
    if (res.status === 401) {
      throw new ApiError(401, null, "wrong user or password");
    }
    if (data && typeof data.message === "string") {
      throw new ApiError(res.status, data.code, data.message);
    }
    throw new ApiError(res.status, null, text.trim() || res.statusText || "request failed");
  }

  // Builds an element: props are properties, except `data` (data-*) and
  // `attrs` (attributes); children are appended as nodes or as text.
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "data") Object.assign(node.dataset, value);
      else if (key === "attrs") for (const [k, v] of Object.entries(value)) node.setAttribute(k, v);
      else node[key] = value;
    }
    node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
    return node;
  }

  function text(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function showError(e) {
    const message = e instanceof ApiError ? e.describe() : String(e && e.message ? e.message : e);
    $("error").textContent = message;
    $("error").hidden = false;
    $("notice").textContent = "";
  }

  function showNotice(message) {
    $("error").hidden = true;
    $("error").textContent = "";
    $("notice").textContent = message;
  }

  // Runs an action with its button(s) disabled; reports failures. A 401
  // after login means the credentials no longer pass: back to the login.
  async function run(controls, action) {
    for (const c of controls) c.disabled = true;
    try {
      await action();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401 && authorization !== null) {
        logout();
      }
      showError(e);
    } finally {
      for (const c of controls) c.disabled = false;
    }
  }

  function controlsOf(form) {
    return Array.from(form.querySelectorAll("button, input, textarea"));
  }

  // --- Session -------------------------------------------------------------

  async function login(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const user = $("login-user").value;
    const auth = basic(user, $("login-password").value);
    await run(controlsOf(form), async () => {
      await api("GET", "auth", undefined, auth);
      authorization = auth;
      $("login-password").value = "";
      $("session-user").textContent = user;
      $("session").hidden = false;
      $("login").hidden = true;
      $("app").hidden = false;
      showNotice("Logged in.");
      await Promise.all([loadChannels(), loadGlobalStats()]);
    });
  }

  function logout() {
    authorization = null;
    statsChannel = null;
    $("session").hidden = true;
    $("app").hidden = true;
    $("login").hidden = false;
    $("channels-body").replaceChildren();
    $("global-stats").replaceChildren();
    $("channel-stats-table").replaceChildren();
    $("channel-stats").hidden = true;
    $("login-password").focus();
  }

  // --- Channels ------------------------------------------------------------

  async function loadChannels() {
    const channels = (await api("GET", "channels")) || [];
    const rows = channels.map((c) =>
      el(
        "tr",
        { data: { channel: text(c.id) } },
        el("td", {}, text(c.id)),
        el("td", {}, c.ttl === 0 ? "0 (kept)" : text(c.ttl)),
        el("td", {}, el("time", { dateTime: text(c.created) }, text(c.created))),
        el(
          "td",
          { className: "actions" },
          el("button", {
            type: "button",
            className: "stats",
            textContent: "Stats",
            attrs: { "aria-label": `Stats of ${text(c.id)}` },
            onclick: (e) => run([e.currentTarget], () => loadChannelStats(text(c.id))),
          }),
          el("button", {
            type: "button",
            className: "delete",
            textContent: "Delete",
            attrs: { "aria-label": `Delete ${text(c.id)}` },
            onclick: (e) => run([e.currentTarget], () => deleteChannel(text(c.id))),
          }),
        ),
      ),
    );
    $("channels-body").replaceChildren(...rows);
    $("channels-empty").hidden = rows.length > 0;
    $("channels").hidden = rows.length === 0;
  }

  async function createChannel(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const id = $("create-id").value.trim();
    const ttl = Number($("create-ttl").value);
    await run(controlsOf(form), async () => {
      if (!id) throw new Error("Give the channel an ID.");
      if (!Number.isInteger(ttl) || ttl < 0) throw new Error("The TTL is a whole number of seconds, 0 or more.");
      await api("POST", "channels", { id, ttl });
      $("create-id").value = "";
      showNotice(`Channel ${id} created.`);
      await loadChannels();
    });
  }

  async function deleteChannel(id) {
    await api("DELETE", "channels/" + encodeURIComponent(id));
    showNotice(`Channel ${id} deleted.`);
    await loadChannels();
  }

  // --- Messages ------------------------------------------------------------

  async function publish(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const channels = $("publish-channels")
      .value.split(",")
      .map((c) => c.trim())
      .filter((c) => c !== "");
    const content = $("publish-content").value;
    await run(controlsOf(form), async () => {
      if (channels.length === 0) throw new Error("Give at least one channel.");
      if (content === "") throw new Error("The message is empty: push-api would publish nothing.");
      await api("POST", "messages", { channels, content });
      showNotice(`Message published to ${channels.join(", ")}.`);
      if (statsChannel !== null && channels.includes(statsChannel)) {
        await loadChannelStats(statsChannel);
      }
    });
  }

  // --- Stats ---------------------------------------------------------------

  // One column per agent, one row per figure.
  function statsTable(table, rows) {
    const fields = [];
    for (const row of rows) {
      for (const key of Object.keys(row)) if (!fields.includes(key)) fields.push(key);
    }
    const head = el(
      "tr",
      {},
      el("th", { scope: "col" }, "Figure"),
      ...rows.map((r, i) => el("th", { scope: "col" }, text(r.hostname ?? `agent ${i + 1}`))),
    );
    const body = fields.map((field) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, field),
        ...rows.map((r) => el("td", { data: { field } }, text(r[field]))),
      ),
    );
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
  }

  async function loadGlobalStats() {
    const stats = (await api("GET", "stats/global")) || {};
    const aggregated = stats.aggregated || {};
    $("global-subscribers").textContent = text(aggregated.subscribers);
    $("global-time").textContent = aggregated.time ? `(at ${text(aggregated.time)})` : "";
    statsTable($("global-stats"), Array.isArray(stats.all) ? stats.all : []);
  }

  async function loadChannelStats(id) {
    statsChannel = id;
    const section = $("channel-stats");
    section.hidden = false;
    $("channel-stats-title").textContent = `Stats of channel ${id}`;
    $("channel-stats-table").replaceChildren();
    $("channel-stats-missing").hidden = true;
    let stats;
    try {
      stats = await api("GET", "stats/channels/" + encodeURIComponent(id));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        // push-stream has no such channel yet: nothing published, nobody subscribed.
        $("channel-stats-missing").textContent = `No stats for ${id} yet (${e.describe()}).`;
        $("channel-stats-missing").hidden = false;
        return;
      }
      throw e;
    }
    statsTable($("channel-stats-table"), Array.isArray(stats && stats.all) ? stats.all : []);
  }

  // --- Wiring --------------------------------------------------------------

  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => {
    logout();
    showNotice("");
  });
  $("create-form").addEventListener("submit", createChannel);
  $("publish-form").addEventListener("submit", publish);
  $("channels-refresh").addEventListener("click", (e) => run([e.currentTarget], loadChannels));
  $("global-refresh").addEventListener("click", (e) => run([e.currentTarget], loadGlobalStats));
  $("channel-stats-refresh").addEventListener("click", (e) =>
    run([e.currentTarget], () => (statsChannel === null ? undefined : loadChannelStats(statsChannel))),
  );
  $("login-user").focus();
})();
