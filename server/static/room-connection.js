// One room's WebSocket (DESIGN section 4), with no DOM: connect, welcome, events
// deduplicated by seq, reconnect with backoff and `since=<last seq seen>`, ping,
// and gifts still unanswered resent with the same request_id after a reconnect
// (the server never charges a request_id twice).
//
// handlers: welcome(msg, {reconnect}), events([{event, caughtUp}]), roomState(msg),
//           ack(msg), error(msg), status(state, detail)
// states:   connecting, live, reconnecting, catching_up, reconnected, ended,
//           not_found (4404), unauthorized (4401), too_big (1009)

import { newRequestId } from "./api.js";

const TICK_MS = 5_000;
const PING_EVERY_MS = 20_000;
// No frame at all for this long (pongs included) means the connection is dead even
// if the browser has not noticed.
const SILENCE_LIMIT_MS = 50_000;
const BACKOFF_MS = [500, 1_000, 2_000, 4_000, 8_000, 15_000];
// After a reconnect, how long to wait for the missed events before reporting.
const CATCH_UP_WAIT_MS = 3_000;
// A gift unanswered for longer is not resent: the user has long moved on.
const RESEND_WITHIN_MS = 120_000;
const MAX_PENDING = 300;
const SEEN_LIMIT = 4_096;

// Close codes after which reconnecting by itself would not help.
const TERMINAL = { 4401: "unauthorized", 4404: "not_found", 1009: "too_big" };

export class RoomConnection {
  constructor(roomId, { token = null, handlers = {} } = {}) {
    this.roomId = roomId;
    this.token = token;
    this.h = handlers;
    this.ws = null;
    this.open = false; // the current socket has been welcomed
    this.welcomedOnce = false;
    this.lastSeq = null; // highest seq seen; null until the first welcome
    this.seen = new Set();
    this.seenFloor = -1; // every seq at or below counts as seen
    this.sentSince = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.tickTimer = null;
    this.catchUpTimer = null;
    this.catchUp = null;
    this.lastHeard = 0;
    this.lastPing = 0;
    this.pending = new Map(); // request_id -> {frame, at}
    this.stopped = false;
    this.ended = false;
    this.terminal = null;
    this.switching = false; // reconnecting because the account changed, not the network
    this.onOnline = () => this.reconnectNow();
  }

  start() {
    window.addEventListener("online", this.onOnline);
    this.emit("connecting");
    this.connect();
  }

  /** Leave the room for good. */
  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    clearTimeout(this.catchUpTimer);
    this.drop();
  }

  /** Reconnect at once (the manual button, the browser coming back online). */
  reconnectNow() {
    if (this.stopped || this.ended || this.terminal === "not_found") return;
    if (this.ws !== null && this.terminal === null) return; // connected or connecting
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.terminal = null;
    this.attempt = 0;
    this.emit("reconnecting", { attempt: 0 });
    this.connect();
  }

  /** The account changed: reconnect as the new user (or as a watcher), continuing
   * from the last seq seen. After a 4401 with no new token there is nothing to do. */
  setToken(token) {
    if (token === this.token) return;
    this.token = token;
    this.pending.clear();
    if (this.stopped || this.ended || this.terminal === "not_found") return;
    if (this.terminal === "unauthorized" && !token) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.drop();
    this.terminal = null;
    this.attempt = 0;
    this.switching = this.welcomedOnce;
    this.emit("connecting", { attempt: 0 });
    this.connect();
  }

  /** Send a gift; its request_id, or null when not connected. */
  sendGift(giftId, count = 1) {
    if (!this.open) return null;
    const frame = { type: "gift", request_id: newRequestId(), gift_id: giftId, count };
    if (this.pending.size >= MAX_PENDING) this.pending.delete(this.pending.keys().next().value);
    this.pending.set(frame.request_id, { frame, at: Date.now() });
    this.send(frame);
    return frame.request_id;
  }

  /** Send a chat line; its request_id, or null when not connected. */
  sendChat(text) {
    if (!this.open) return null;
    const frame = { type: "chat", request_id: newRequestId(), text };
    this.send(frame);
    return frame.request_id;
  }

  // --- the socket ----------------------------------------------------------------

  url() {
    const params = new URLSearchParams();
    if (this.token) params.set("token", this.token);
    if (this.lastSeq !== null) params.set("since", String(this.lastSeq));
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = params.toString();
    return `${scheme}//${location.host}/ws/rooms/${encodeURIComponent(this.roomId)}${query ? `?${query}` : ""}`;
  }

  connect() {
    this.retryTimer = null;
    if (this.stopped || this.ended) return;
    this.sentSince = this.lastSeq;
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (err) {
      this.closed(0, String(err));
      return;
    }
    this.ws = ws;
    this.open = false;
    this.lastHeard = Date.now();
    // Handlers check that their socket is still the current one: a socket given up on
    // (stale, replaced) may still report late.
    ws.addEventListener("message", (e) => {
      if (this.ws === ws) this.frame(e.data);
    });
    ws.addEventListener("close", (e) => {
      if (this.ws === ws) this.closed(e.code, e.reason);
    });
  }

  /** Forget the current socket and close it. */
  drop() {
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    clearInterval(this.tickTimer);
    this.tickTimer = null;
    if (ws !== null) {
      try {
        ws.close(1000, "bye");
      } catch {
        // already closing
      }
    }
  }

  closed(code, reason) {
    this.ws = null;
    this.open = false;
    clearInterval(this.tickTimer);
    this.tickTimer = null;
    clearTimeout(this.catchUpTimer);
    this.catchUp = null;
    if (this.stopped) return;
    if (this.ended) {
      this.emit("ended");
      return;
    }
    if (Object.hasOwn(TERMINAL, code)) {
      this.terminal = TERMINAL[code];
      this.emit(this.terminal, { code, reason });
      return;
    }
    this.switching = false;
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.emit("reconnecting", { code, reason, delay, attempt: this.attempt });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  send(frame) {
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  tick() {
    if (this.ws === null) return;
    const now = Date.now();
    if (now - this.lastHeard > SILENCE_LIMIT_MS) {
      this.drop();
      this.closed(4000, "no answer from the server");
      return;
    }
    if (now - this.lastPing >= PING_EVERY_MS) {
      this.lastPing = now;
      this.send({ type: "ping" });
    }
  }

  // --- frames ----------------------------------------------------------------------

  frame(data) {
    this.lastHeard = Date.now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "welcome":
        this.welcome(msg);
        break;
      case "events":
        this.events(Array.isArray(msg.events) ? msg.events : []);
        break;
      case "room_state":
        this.h.roomState?.(msg);
        break;
      case "ack":
        this.pending.delete(msg.request_id);
        this.h.ack?.(msg);
        break;
      case "error":
        if (msg.request_id) this.pending.delete(msg.request_id);
        this.h.error?.(msg);
        break;
      default:
        break; // pong, or a frame type this page does not know yet
    }
  }

  welcome(msg) {
    const reconnect = this.welcomedOnce;
    const seq = Number.isInteger(msg.seq) ? msg.seq : 0;
    this.welcomedOnce = true;
    this.open = true;
    this.attempt = 0;
    this.terminal = null;
    if (this.lastSeq === null) {
      // First join: the room's past is not replayed; everything after seq is news.
      this.lastSeq = seq;
      this.seenFloor = seq;
    }
    this.h.welcome?.(msg, { reconnect });
    if (reconnect) {
      // The events in (since, seq] follow this frame, oldest first.
      this.catchUp = { target: seq, count: 0, recovered: msg.recovered !== false };
      if (this.lastSeq >= seq) this.finishCatchUp();
      else {
        this.emit("catching_up");
        clearTimeout(this.catchUpTimer);
        this.catchUpTimer = setTimeout(() => this.finishCatchUp(), CATCH_UP_WAIT_MS);
      }
    } else {
      this.emit("live");
    }
    this.lastPing = Date.now();
    clearInterval(this.tickTimer);
    this.tickTimer = setInterval(() => this.tick(), TICK_MS);
    this.resendPending();
  }

  events(list) {
    const fresh = [];
    for (const event of list) {
      if (!event || typeof event !== "object" || !Number.isInteger(event.seq)) continue;
      if (event.seq <= this.seenFloor || this.seen.has(event.seq)) continue;
      this.remember(event.seq);
      const caughtUp = this.catchUp !== null && event.seq <= this.catchUp.target;
      if (caughtUp) this.catchUp.count += 1;
      fresh.push({ event, caughtUp });
      if (event.kind === "room_ended") this.ended = true;
    }
    if (fresh.length > 0) this.h.events?.(fresh);
    if (this.catchUp !== null && this.lastSeq >= this.catchUp.target) this.finishCatchUp();
    if (this.ended && !this.stopped) {
      clearTimeout(this.catchUpTimer);
      this.catchUp = null;
      this.drop();
      this.emit("ended");
    }
  }

  remember(seq) {
    this.seen.add(seq);
    if (this.lastSeq === null || seq > this.lastSeq) this.lastSeq = seq;
    if (this.seen.size > SEEN_LIMIT) {
      const oldest = [...this.seen].sort((a, b) => a - b).slice(0, SEEN_LIMIT / 2);
      for (const s of oldest) this.seen.delete(s);
      this.seenFloor = Math.max(this.seenFloor, oldest[oldest.length - 1]);
    }
  }

  finishCatchUp() {
    clearTimeout(this.catchUpTimer);
    this.catchUpTimer = null;
    if (this.catchUp === null) return;
    const { count, recovered } = this.catchUp;
    this.catchUp = null;
    const quiet = this.switching && count === 0 && recovered;
    this.switching = false;
    if (this.open) this.emit(quiet ? "live" : "reconnected", { count, recovered });
  }

  resendPending() {
    const now = Date.now();
    for (const [requestId, entry] of this.pending) {
      if (now - entry.at > RESEND_WITHIN_MS) this.pending.delete(requestId);
      else this.send(entry.frame);
    }
  }

  emit(state, detail = {}) {
    this.h.status?.(state, detail);
  }
}
