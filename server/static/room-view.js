// The room page: stage, gift feed and animations, chat, top gifters, gift tray.
// Protocol handling lives in room-connection.js; this module only draws.

import { api } from "./api.js";
import { RoomConnection } from "./room-connection.js";
import {
  $,
  avatar,
  describeRefusal,
  el,
  formatCount,
  giftIcon,
  hueFor,
  initialOf,
  tierOf,
  toast,
  toastRefusal,
} from "./ui.js";

const MAX_FEED = 60;
const MAX_CHAT = 300;
const MAX_FLOATERS = 48;
const MAX_BURST_QUEUE = 6;
// Backlog after a reconnect is drawn without animation, and only its tail.
const MAX_BACKLOG_DRAWN = 80;
const BURST_MS = { large: 2600, huge: 3800 };
const FLOATERS_PER_TIER = { small: 5, medium: 3, large: 2, huge: 2 };

const STATUS_TEXT = {
  connecting: "Connecting…",
  live: "Connected",
  reconnecting: "Reconnecting…",
  catching_up: "Reconnected — catching up…",
  ended: "This live has ended",
  not_found: "This live has ended / not found",
  unauthorized: "Your session is no longer valid — sign up again",
  too_big: "Disconnected: a message was too large",
};

export class RoomView {
  /** catalog: {gifts: Map id -> gift, ready: Promise}; account: Account. */
  constructor({ catalog, account }) {
    this.catalog = catalog;
    this.account = account;
    this.conn = null;
    this.roomId = null;
    this.room = null;
    this.you = null;
    this.ended = false;
    this.combos = new Map();
    this.burstQueue = [];
    this.burstTimer = null;
    this.bursting = false;
    this.wasReconnecting = false;
    this.sentChats = new Map(); // request_id -> text, to give a refused line back

    this.view = $("#view-room");
    this.stage = $("#stage");
    this.feed = $("#feed");
    this.floatLayer = $("#float-layer");
    this.burstLayer = $("#burst-layer");
    this.chatLog = $("#chat-log");
    this.chatInput = $("#chat-input");
    this.topList = $("#top-gifters");
    this.tray = $("#gift-tray");
    this.status = $("#conn-status");

    this.tray.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-gift-id]");
      if (button) this.sendGift(button.dataset.giftId, button);
    });
    $("#chat-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.sendChat();
    });
    $("#reconnect").addEventListener("click", () => this.conn?.reconnectNow());
    $("#end-live").addEventListener("click", () => this.endLive());
    catalog.ready.then(() => this.drawTray());
  }

  open(roomId) {
    if (this.roomId === roomId && this.conn !== null) return;
    this.close();
    this.roomId = roomId;
    this.reset();
    this.conn = new RoomConnection(roomId, {
      token: this.account.token,
      handlers: {
        welcome: (msg, info) => this.onWelcome(msg, info),
        events: (list) => this.onEvents(list),
        roomState: (msg) => this.onRoomState(msg),
        ack: (msg) => this.onAck(msg),
        error: (msg) => this.onError(msg),
        status: (state, detail) => this.onStatus(state, detail),
      },
    });
    this.conn.start();
  }

  close() {
    if (this.conn !== null) this.conn.stop();
    this.conn = null;
    this.roomId = null;
    clearTimeout(this.burstTimer);
    this.burstQueue = [];
    this.bursting = false;
  }

  /** The signed-in account changed (sign-up, sign-out, expired token). */
  sessionChanged() {
    this.conn?.setToken(this.account.token);
    this.updateChatInput();
  }

  reset() {
    this.room = null;
    this.you = null;
    this.ended = false;
    this.combos.clear();
    this.wasReconnecting = false;
    this.feed.replaceChildren();
    this.floatLayer.replaceChildren();
    this.burstLayer.replaceChildren();
    this.chatLog.replaceChildren();
    this.topList.replaceChildren();
    $("#top-empty").hidden = false;
    $("#room-ended").hidden = true;
    $("#end-live").hidden = true;
    $("#reconnect").hidden = true;
    $("#live-badge").hidden = false;
    this.stage.classList.remove("is-ended");
    $("#room-title").textContent = "Connecting…";
    $("#room-creator").textContent = "";
    this.setHost("", "");
    this.setViewers(0);
    this.updateChatInput();
  }

  // --- protocol handlers ----------------------------------------------------------

  onWelcome(msg, { reconnect }) {
    const room = msg.room && typeof msg.room === "object" ? msg.room : {};
    const creator = room.creator && typeof room.creator === "object" ? room.creator : {};
    this.room = { title: String(room.title ?? ""), creatorId: String(creator.user_id ?? ""), creatorName: String(creator.name ?? "") };
    $("#room-title").textContent = this.room.title || "Untitled live";
    $("#room-creator").textContent = this.room.creatorName ? `@${this.room.creatorName}` : "";
    document.title = `${this.room.title || "Live"} · giftstream`;
    this.setHost(this.room.creatorId, this.room.creatorName);
    this.setViewers(msg.viewers);
    this.drawTop(msg.top);
    this.you = msg.you && typeof msg.you === "object" ? msg.you : null;
    if (this.you !== null && Number.isInteger(this.you.coins)) this.account.setBalance(this.you.coins);
    $("#end-live").hidden = !(this.you !== null && this.you.user_id === this.room.creatorId);
    $("#reconnect").hidden = true;
    if (!reconnect) {
      const mine = this.you !== null && this.you.user_id === this.room.creatorId;
      this.systemLine(
        mine
          ? "You're live! Share this page's address so people can join."
          : `Welcome to ${this.room.creatorName ? `${this.room.creatorName}'s` : "the"} live! Be kind in chat.`,
        "welcome",
      );
    }
    this.updateChatInput();
  }

  onEvents(list) {
    const backlog = list.filter((item) => item.caughtUp);
    const skip = Math.max(0, backlog.length - MAX_BACKLOG_DRAWN);
    let backlogSeen = 0;
    for (const { event, caughtUp } of list) {
      if (caughtUp && backlogSeen++ < skip && event.kind !== "room_ended") continue;
      if (event.kind === "gift") this.drawGift(event, !caughtUp);
      else if (event.kind === "chat") this.drawChat(event);
      else if (event.kind === "room_ended") this.showEnded("This live has ended", "The creator ended the live. Thanks for watching!");
    }
  }

  onRoomState(msg) {
    this.setViewers(msg.viewers);
    this.drawTop(msg.top);
  }

  onAck(msg) {
    if (Number.isInteger(msg.coins)) this.account.setBalance(msg.coins);
  }

  onError(msg) {
    const code = String(msg.code ?? "internal");
    if (code === "unauthorized" && !this.account.token) {
      toast("Sign up to send gifts and chat.", { kind: "info", code });
      this.account.openDialog("signup");
      return;
    }
    toastRefusal({ code, message: msg.message });
    const refusedChat = this.sentChats.get(msg.request_id);
    if (refusedChat !== undefined && !this.chatInput.value) this.chatInput.value = refusedChat;
    if (code === "insufficient_coins") this.account.refreshWallet();
  }

  onStatus(state, detail) {
    const node = this.status;
    node.dataset.state = state;
    delete node.dataset.caughtUp;
    let text = STATUS_TEXT[state] ?? state;
    $("#reconnect").hidden = !(state === "too_big" || state === "unauthorized" || (state === "reconnecting" && detail.attempt >= 3));
    if (state === "reconnecting") {
      node.title = detail.delay ? `Retrying in ${Math.ceil(detail.delay / 1000)} s (attempt ${detail.attempt})` : "";
      if (!this.wasReconnecting && this.room !== null) this.systemLine("Connection lost. Reconnecting…", "warn");
      this.wasReconnecting = true;
    } else {
      node.title = "";
    }
    if (state === "reconnected") {
      const n = detail.count;
      node.dataset.caughtUp = String(n);
      text = `Reconnected — caught up ${n} ${n === 1 ? "event" : "events"}`;
      if (!detail.recovered) text += " (older ones had expired)";
      this.systemLine(text, "ok");
      this.wasReconnecting = false;
    } else if (state === "live") {
      this.wasReconnecting = false;
    }
    node.textContent = text;
    if (state === "ended") {
      this.showEnded("This live has ended", "The creator ended the live. Thanks for watching!");
    } else if (state === "not_found") {
      const ended = /ended/i.test(detail.reason || "");
      this.showEnded(ended ? "This live has ended" : "Live not found", ended ? "Thanks for watching!" : "This live has ended or never existed.");
    } else if (state === "unauthorized") {
      this.account.sessionExpired();
    } else if (state === "too_big") {
      toast("Disconnected: a message was too large for the server.", { code: "too_big", detail: "Press Reconnect to continue watching." });
    }
    this.updateChatInput();
  }

  // --- drawing ----------------------------------------------------------------------

  setHost(userId, name) {
    for (const id of ["#host-avatar", "#host-initial"]) {
      const node = $(id);
      node.textContent = initialOf(name);
      node.style.setProperty("--hue", hueFor(userId || name));
    }
    this.stage.style.setProperty("--stage-hue", hueFor(this.roomId));
  }

  setViewers(n) {
    const value = Number.isInteger(n) && n >= 0 ? n : 0;
    $("#viewer-count").textContent = String(value);
  }

  drawTop(top) {
    const rows = Array.isArray(top) ? top.slice(0, 10) : [];
    this.topList.replaceChildren(
      ...rows.map((row, i) =>
        el(
          "li",
          { class: `top-row rank-${i + 1}`, dataset: { userId: row.user_id } },
          el("span", { class: "top-rank", text: String(i + 1) }),
          avatar(row.user_id, row.name),
          el("span", { class: "top-name", text: String(row.name ?? "") }),
          el("span", { class: "top-coins" }, el("span", { class: "coin", "aria-hidden": "true" }), formatCount(row.coins)),
        ),
      ),
    );
    $("#top-empty").hidden = rows.length > 0;
  }

  drawGift(event, animate) {
    const gift = this.catalog.gifts.get(event.gift_id) ?? { id: event.gift_id, name: String(event.gift_id ?? "gift"), tier: "small" };
    const tier = tierOf(gift);
    const from = event.from && typeof event.from === "object" ? event.from : {};
    const name = String(from.name ?? "someone");
    const count = Number.isInteger(event.count) && event.count > 0 ? event.count : 1;
    const combo = Number.isInteger(event.combo) && event.combo > 0 ? event.combo : count;
    const key = `${from.user_id}|${event.gift_id}`;
    const prev = this.combos.get(key);
    const continues = prev !== undefined && prev.el.isConnected && combo > count && prev.combo < combo;

    const comboNode = el("span", { class: "combo", text: `x${combo}` });
    const item = el(
      "div",
      {
        class: `gift-event tier-${tier}`,
        dataset: { seq: event.seq, giftId: event.gift_id, userId: from.user_id, combo },
        title: `${name} sent ${gift.name} x${combo}`,
      },
      avatar(from.user_id, name),
      el("span", { class: "gift-who" }, el("strong", { class: "gift-from", text: name }), el("span", { class: "gift-what", text: `sent ${gift.name}` })),
      el("span", { class: "gift-icon", "aria-hidden": "true" }, giftIcon(event.gift_id)),
      comboNode,
    );
    if (this.you !== null && from.user_id === this.you.user_id) item.classList.add("mine");
    if (continues) {
      // The same run of the same gift: this banner takes the old one's place.
      if (this.feed.lastElementChild === prev.el) item.classList.add("continues");
      prev.el.classList.add("superseded");
    }
    if (!animate) item.classList.add("caught-up");
    this.feed.append(item);
    while (this.feed.childElementCount > MAX_FEED) this.feed.firstElementChild.remove();
    this.combos.set(key, { el: item, combo });
    if (this.combos.size > 200) this.combos.delete(this.combos.keys().next().value);

    if (!animate) return;
    if (continues) countUp(comboNode, prev.combo, combo);
    comboNode.classList.add("pop");
    this.spawnFloaters(event.gift_id, tier, count);
    if (tier === "large" || tier === "huge") this.queueBurst({ giftId: event.gift_id, tier, name, giftName: gift.name, combo, userId: from.user_id });
  }

  spawnFloaters(giftId, tier, count) {
    const n = Math.min(count, FLOATERS_PER_TIER[tier]);
    for (let i = 0; i < n; i += 1) {
      if (this.floatLayer.childElementCount >= MAX_FLOATERS) break;
      const floater = el(
        "span",
        {
          class: `floater tier-${tier}`,
          style: {
            "--dx": `${Math.round(Math.random() * 110 - 80)}px`,
            "--rot": `${Math.round(Math.random() * 60 - 30)}deg`,
            "--delay": `${i * 110}ms`,
            "--x": `${Math.round(Math.random() * 50)}px`,
          },
        },
        giftIcon(giftId),
      );
      const remove = () => floater.remove();
      floater.addEventListener("animationend", remove);
      setTimeout(remove, 4000);
      this.floatLayer.append(floater);
    }
  }

  queueBurst(burst) {
    if (this.burstQueue.length >= MAX_BURST_QUEUE) return;
    this.burstQueue.push(burst);
    if (!this.bursting) this.nextBurst();
  }

  nextBurst() {
    const burst = this.burstQueue.shift();
    if (burst === undefined || this.conn === null) {
      this.bursting = false;
      return;
    }
    this.bursting = true;
    const confetti = [];
    if (burst.tier === "huge") {
      for (let i = 0; i < 28; i += 1) {
        confetti.push(
          el("span", {
            class: "confetti",
            style: {
              "--cx": `${Math.round(Math.random() * 100)}%`,
              "--cd": `${Math.round(Math.random() * 900)}ms`,
              "--ch": `${Math.round(Math.random() * 360)}`,
              "--cr": `${Math.round(Math.random() * 720 - 360)}deg`,
            },
          }),
        );
      }
    }
    const node = el(
      "div",
      { class: `burst tier-${burst.tier}` },
      el("div", { class: "burst-rays" }),
      el("div", { class: "burst-ring" }),
      el("div", { class: "burst-ring burst-ring-2" }),
      el("div", { class: "burst-icon" }, giftIcon(burst.giftId)),
      el(
        "div",
        { class: "burst-caption" },
        el("strong", { text: burst.name }),
        ` sent ${burst.giftName}`,
        burst.combo > 1 ? el("b", { class: "burst-combo", text: ` x${burst.combo}` }) : null,
      ),
      ...confetti,
    );
    this.burstLayer.append(node);
    this.burstTimer = setTimeout(() => {
      node.remove();
      this.nextBurst();
    }, BURST_MS[burst.tier]);
  }

  drawChat(event) {
    const from = event.from && typeof event.from === "object" ? event.from : {};
    const name = String(from.name ?? "someone");
    const isHost = this.room !== null && from.user_id === this.room.creatorId;
    const line = el(
      "li",
      { class: "chat-line", dataset: { seq: event.seq, userId: from.user_id } },
      el("span", { class: "chat-name", style: { "--hue": hueFor(from.user_id || name) }, text: name }),
      isHost ? el("span", { class: "host-tag", text: "Host" }) : null,
      el("span", { class: "chat-text", text: String(event.text ?? "") }),
    );
    if (this.you !== null && from.user_id === this.you.user_id) line.classList.add("mine");
    this.appendChat(line);
  }

  systemLine(text, kind = "info") {
    this.appendChat(el("li", { class: `chat-system chat-system-${kind}`, text }));
  }

  appendChat(node) {
    const log = this.chatLog;
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    log.append(node);
    while (log.childElementCount > MAX_CHAT) log.firstElementChild.remove();
    if (stick) log.scrollTop = log.scrollHeight;
  }

  showEnded(title, detail) {
    this.ended = true;
    $("#room-ended-title").textContent = title;
    $("#room-ended-detail").textContent = detail;
    $("#room-ended").hidden = false;
    $("#live-badge").hidden = true;
    $("#end-live").hidden = true;
    this.stage.classList.add("is-ended");
    this.updateChatInput();
  }

  drawTray() {
    const gifts = [...this.catalog.gifts.values()];
    this.tray.replaceChildren(
      ...gifts.map((gift) =>
        el(
          "button",
          {
            type: "button",
            class: `gift-btn tier-${tierOf(gift)}`,
            dataset: { giftId: gift.id, tier: tierOf(gift), coins: gift.coins },
            title: `Send ${gift.name} (${formatCount(gift.coins)} ${gift.coins === 1 ? "coin" : "coins"})`,
          },
          el("span", { class: "gift-btn-icon", "aria-hidden": "true" }, giftIcon(gift.id)),
          el("span", { class: "gift-btn-name", text: gift.name }),
          el("span", { class: "gift-btn-price" }, el("span", { class: "coin", "aria-hidden": "true" }), formatCount(gift.coins)),
        ),
      ),
    );
  }

  updateChatInput() {
    const signedIn = Boolean(this.account.token);
    this.chatInput.placeholder = this.ended ? "The live has ended" : signedIn ? "Say something nice…" : "Sign up to chat";
    this.chatInput.disabled = this.ended;
    $("#chat-send").disabled = this.ended;
    this.tray.classList.toggle("is-disabled", this.ended);
  }

  // --- actions ----------------------------------------------------------------------

  /** True when the user may act now; otherwise says why. */
  canAct(what) {
    if (this.ended) {
      const { title } = describeRefusal("room_not_live", "");
      toast(title, { kind: "info", code: "room_not_live" });
      return false;
    }
    if (!this.account.token) {
      toast(`Sign up to ${what}.`, { kind: "info", code: "unauthorized" });
      this.account.openDialog("signup");
      return false;
    }
    if (this.conn === null || !this.conn.open) {
      toast("Not connected right now: reconnecting…", { kind: "info", code: "not_connected" });
      return false;
    }
    return true;
  }

  sendGift(giftId, button) {
    if (!this.canAct("send gifts")) return;
    this.conn.sendGift(giftId, 1);
    button.classList.remove("tapped");
    void button.offsetWidth; // restart the tap animation
    button.classList.add("tapped");
  }

  sendChat() {
    // The server refuses control characters; a pasted tab is just a space.
    const text = this.chatInput.value.replace(/[\u0000-\u001f\u007f]/g, " ").trim();
    if (!text) return;
    if (!this.canAct("chat")) return;
    if (Array.from(text).length > 200) {
      toast("Chat messages are at most 200 characters.", { code: "bad_request" });
      return;
    }
    const requestId = this.conn.sendChat(text);
    this.sentChats.set(requestId, text);
    if (this.sentChats.size > 20) this.sentChats.delete(this.sentChats.keys().next().value);
    this.chatInput.value = "";
  }

  async endLive() {
    if (this.roomId === null) return;
    const button = $("#end-live");
    button.disabled = true;
    try {
      await api("POST", `/api/rooms/${encodeURIComponent(this.roomId)}/end`);
    } catch (err) {
      toastRefusal(err);
    } finally {
      button.disabled = false;
    }
  }
}

/** Count a combo up from `from` to `to` in the node's text ("x12"). */
function countUp(node, from, to) {
  const steps = to - from;
  if (steps <= 1) {
    node.textContent = `x${to}`;
    return;
  }
  const duration = Math.min(600, steps * 45);
  const start = performance.now();
  const frame = (now) => {
    if (!node.isConnected) return;
    const t = Math.min(1, (now - start) / duration);
    node.textContent = `x${Math.round(from + (to - from) * t)}`;
    if (t < 1) requestAnimationFrame(frame);
  };
  node.textContent = `x${from + 1}`;
  requestAnimationFrame(frame);
}
