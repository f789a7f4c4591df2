// herald.js: a browser client for Herald's native WebSocket protocol
// (docs/api.md). One ES module, no dependencies, no build step.
//
//   import { Herald } from "./herald.js";
//   const h = new Herald("wss://push.example.com", { token, channels: ["news"] });
//   h.on("message", (m) => show(m.channel, m.data)); // {channel, id, offset, epoch, event?, data}
//   h.on("gap", ({ channel, recovery }) => reload(channel)); // missed messages it cannot get back
//   h.on("deleted", ({ channel }) => forget(channel));
//   h.on("state", (s, why) => badge(s));                     // "connecting" | "open" | "closed"
//   await h.subscribe("chat");
//   await h.publish("chat", { text: "hi" }); // when the server allows client publish
//   h.unsubscribe("chat");
//   h.close();
//
// It remembers each channel's position (offset and epoch of the last message
// delivered) and, after a drop, a `{"type":"reconnect"}` hint or a restart,
// reconnects with jittered backoff and resubscribes every channel `since` its
// position: missed messages are replayed, none is delivered twice, and a
// channel that cannot be resumed (`too_old`, `epoch_changed`) emits "gap".
//
// Options: token (a string, or a function returning one or a promise of one,
// asked before every connection), channels, minDelay (500 ms), maxDelay
// (30 s), pingInterval (25 s: a silent connection is pinged, then dropped),
// WebSocket (the constructor to use).
// More events: "targeted" (docs/targeting.md; acknowledged when it asks),
// "presence" ({type: "join" | "leave", channel, user}, on channels the
// server's `presence.events` names), "error" (a command the server refused,
// e.g. a protected channel).

// Close codes after which the same connection would be refused again.
const fatal = (code) =>
  [1002, 1003, 1007, 1008, 1009].includes(code) || (code >= 4000 && code < 4100) || code >= 4300;
// "Reconnect with backoff" (slow consumer).
const slow = (code) => code >= 4100 && code < 4200;
const failure = (e) => Object.assign(new Error(e.message), { code: e.code });

export class Herald {
  constructor(url, options = {}) {
    const u = new URL(url, globalThis.location?.href);
    u.protocol = u.protocol.replace(/^http/, "ws");
    if (!u.pathname.endsWith("/ws")) u.pathname = u.pathname.replace(/\/?$/, "/ws");
    this.url = u.href;
    this.opts = { minDelay: 500, maxDelay: 30000, pingInterval: 25000, ...options };
    this.channels = new Map(); // channel → {offset, epoch} of the last message, null until known
    this.live = new Set(); // channels the current connection has confirmed
    this.waiting = new Map(); // channel → [[resolve, reject], …] of subscribe() calls
    this.pending = new Map(); // command id → [resolve, reject]
    this.handlers = {};
    this.state = "closed";
    this.failures = 0; // connections in a row that never opened, or were too slow
    this.nextId = 1;
    for (const c of options.channels || []) this.channels.set(c, null);
    Promise.resolve().then(() => this._connect()); // once the caller has called on()
  }

  on(event, fn) {
    (this.handlers[event] ||= new Set()).add(fn);
    return () => this.handlers[event].delete(fn);
  }

  // Resolves once the server has subscribed the channel (on this connection,
  // or the next one); rejects if the server refuses it (e.g. `forbidden`).
  subscribe(channel) {
    if (this.stopped) return Promise.reject(new Error("closed"));
    if (this.live.has(channel)) return Promise.resolve();
    const done = new Promise((...settle) =>
      this.waiting.set(channel, [...(this.waiting.get(channel) || []), settle]),
    );
    if (!this.channels.has(channel)) {
      this.channels.set(channel, null);
      if (this.state === "open") this._resume(channel);
    }
    return done;
  }

  unsubscribe(channel) {
    this.channels.delete(channel);
    this.live.delete(channel);
    this._settle(channel, new Error("unsubscribed"));
    if (this.state === "open") this._send({ cmd: "unsubscribe", channel, reply: false });
  }

  // The publish reply {id, offset, epoch, subscribers}. Rejects when not
  // connected, or when the connection drops first (it may have been published).
  publish(channel, data, event) {
    return this._request({ cmd: "publish", channel, data, ...(event && { event }) });
  }

  close() {
    this._stop(1000, "closed by the client");
  }

  // Test hook: closes the socket as a network failure would, not as close().
  _drop() {
    this.ws?.close();
  }

  async _connect() {
    if (this.stopped) return;
    this._setState("connecting");
    const u = new URL(this.url);
    try {
      const t = this.opts.token;
      const token = typeof t === "function" ? await t() : t;
      if (token) u.searchParams.set("token", token);
    } catch (e) {
      this._emit("error", e);
      return this._retry(false, 0);
    }
    if (this.stopped) return;
    const ws = (this.ws = new (this.opts.WebSocket || WebSocket)(u.href));
    let opened = false;
    this.heard = Date.now();
    ws.onopen = () => {
      opened = true;
      this._setState("open");
      for (const channel of this.channels.keys()) this._resume(channel);
    };
    ws.onmessage = (e) => {
      this.heard = Date.now();
      this._frame(ws, e.data);
    };
    ws.onclose = (e) => this._lost(ws, e.code, e.reason, opened);
    const every = this.opts.pingInterval;
    this.watchdog = setInterval(() => {
      const quiet = Date.now() - this.heard;
      if (quiet > 2 * every) this._lost(ws, 1006, "no answer to a ping", opened);
      else if (quiet >= every && ws.readyState === 1) ws.send('{"cmd":"ping"}');
    }, every / 2);
  }

  // Subscribes one channel: from its position when it has one (one channel
  // per `since`), else plainly, learning where it stands from the reply, so
  // a drop before its first message is resumed too.
  _resume(channel) {
    const had = this.channels.get(channel);
    const since = had ? { since: had } : {};
    this._request({ cmd: "subscribe", channel, ...since }).then(
      (r) => {
        if (!this.channels.has(channel)) return; // unsubscribed meanwhile
        if (had && r.recovery !== "recovered") {
          this._emit("gap", { channel, recovery: r.recovery, position: r.position });
        }
        // A replay follows the reply, and is what moves the position then.
        const position = had ? r.recovery !== "recovered" && r.position : r.positions[channel];
        const now = this.channels.get(channel);
        // A live message may have come first: only a later position counts.
        if (position && (!now || now.epoch !== position.epoch || now.offset < position.offset)) {
          this.channels.set(channel, position);
        }
        this.live.add(channel);
        this._settle(channel, null);
      },
      (e) => {
        if (e.lost) return; // the next connection subscribes it again
        this.channels.delete(channel);
        this._settle(channel, e);
        this._emit("error", Object.assign(e, { channel }));
      },
    );
  }

  _frame(ws, text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (m.type === "reconnect") return this._lost(ws, 4200, "reconnect hint", true);
    if (m.type === "deleted") {
      this.channels.delete(m.channel);
      this.live.delete(m.channel);
      this._settle(m.channel, new Error("deleted"));
      return this._emit("deleted", { channel: m.channel });
    }
    if (m.type === "join" || m.type === "leave") {
      return this._emit("presence", { type: m.type, channel: m.channel, user: m.user });
    }
    if (m.type === "message") {
      this._emit("targeted", m);
      if (m.ack) this._send({ cmd: "ack", message_id: m.id, reply: false });
      return;
    }
    if ("result" in m || "error" in m) {
      const waiter = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error && !waiter) this._emit("error", failure(m.error));
      else if (waiter) m.error ? waiter[1](failure(m.error)) : waiter[0](m.result);
      return;
    }
    const at = this.channels.get(m.channel);
    // Unsubscribed, or delivered already (live and again replayed).
    if (at === undefined || (at && at.epoch === m.epoch && m.offset <= at.offset)) return;
    this.channels.set(m.channel, { offset: m.offset, epoch: m.epoch });
    this._emit("message", m);
  }

  // The connection `ws` is over: reconnect, unless the code says not to.
  _lost(ws, code, reason, opened) {
    if (ws !== this.ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState < 2) ws.close();
    clearInterval(this.watchdog);
    this.ws = null;
    this.live.clear();
    for (const [, [, reject]] of this.pending) reject(Object.assign(new Error("connection lost"), { lost: true }));
    this.pending.clear();
    if (this.stopped) return;
    if (fatal(code)) this._stop(code, reason);
    else this._retry(opened && !slow(code), code);
  }

  _stop(code, reason) {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this._lost(this.ws, code, reason);
    for (const channel of this.waiting.keys()) this._settle(channel, new Error(`closed (${code})`));
    this._setState("closed", { code, reason });
  }

  // Reconnects soon after a connection that worked, later and later after
  // connections that did not (a refused handshake looks like any failure).
  _retry(worked, code) {
    this.failures = worked ? 0 : this.failures + 1;
    const { minDelay, maxDelay } = this.opts;
    const delay = this.failures
      ? Math.min(maxDelay, minDelay * 2 ** this.failures) * (0.5 + Math.random() / 2)
      : Math.random() * minDelay;
    this._setState("connecting", { code, delay });
    this.timer = setTimeout(() => this._connect(), delay);
  }

  _request(cmd) {
    if (this.state !== "open") return Promise.reject(new Error("not connected"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, [resolve, reject]);
      this._send({ id, ...cmd });
    });
  }

  _send(cmd) {
    this.ws.send(JSON.stringify(cmd));
  }

  _settle(channel, error) {
    for (const [resolve, reject] of this.waiting.get(channel) || []) error ? reject(error) : resolve();
    this.waiting.delete(channel);
  }

  _setState(state, why) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", state, why);
  }

  _emit(event, ...args) {
    for (const fn of this.handlers[event] || []) {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}
