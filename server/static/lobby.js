// The lobby: live rooms (refreshed every few seconds) and "Go live".

import { api } from "./api.js";
import { $, avatar, el, formatCount, hueFor, toast, toastRefusal } from "./ui.js";

const REFRESH_MS = 3000;

export function roomHref(roomId) {
  return `#/room/${encodeURIComponent(roomId)}`;
}

export class Lobby {
  constructor({ account }) {
    this.account = account;
    this.timer = null;
    this.loading = false;
    this.cards = new Map(); // room_id -> card element
    this.grid = $("#lobby-rooms");
    this.statusLine = $("#lobby-status");
    $("#golive-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.goLive();
    });
  }

  start() {
    if (this.timer !== null) return;
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    if (this.loading) return;
    this.loading = true;
    try {
      const data = await api("GET", "/api/rooms");
      if (this.timer === null) return; // left the lobby meanwhile
      this.draw(Array.isArray(data?.rooms) ? data.rooms : []);
      this.statusLine.textContent = "";
    } catch {
      this.statusLine.textContent = "Can't load the live rooms right now. Retrying…";
    } finally {
      this.loading = false;
    }
  }

  draw(rooms) {
    const live = rooms.filter((r) => r && typeof r.room_id === "string" && (r.status === undefined || r.status === "live"));
    const keep = new Set(live.map((r) => r.room_id));
    for (const [roomId, card] of this.cards) {
      if (!keep.has(roomId)) {
        card.remove();
        this.cards.delete(roomId);
      }
    }
    const ordered = live.map((room) => {
      let card = this.cards.get(room.room_id);
      if (card === undefined) {
        card = this.makeCard(room);
        this.cards.set(room.room_id, card);
      }
      this.fillCard(card, room);
      return card;
    });
    // Moving nodes that are already in place is cheap; only reorder when needed.
    const current = [...this.grid.children];
    if (current.length !== ordered.length || ordered.some((card, i) => current[i] !== card)) {
      this.grid.append(...ordered);
    }
    $("#lobby-empty").hidden = live.length > 0;
  }

  makeCard(room) {
    const hue = hueFor(room.room_id);
    return el(
      "a",
      {
        class: "room-link",
        href: roomHref(room.room_id),
        dataset: { roomId: room.room_id },
        style: { "--h1": hue, "--h2": (hue + 70) % 360 },
      },
      el(
        "div",
        { class: "room-thumb" },
        el("span", { class: "live-badge", text: "LIVE" }),
        el(
          "span",
          { class: "room-viewers" },
          el("span", { class: "eye", "aria-hidden": "true" }),
          el("span", { class: "room-viewer-count", text: "0" }),
        ),
        el("span", { class: "room-avatar-slot" }),
      ),
      el(
        "div",
        { class: "room-meta" },
        el("span", { class: "room-card-title" }),
        el("span", { class: "room-card-creator" }),
      ),
    );
  }

  fillCard(card, room) {
    const creator = room.creator && typeof room.creator === "object" ? room.creator : {};
    const title = String(room.title ?? "") || "Untitled live";
    const name = String(creator.name ?? "");
    setText(card.querySelector(".room-card-title"), title);
    setText(card.querySelector(".room-card-creator"), name ? `@${name}` : "");
    setText(card.querySelector(".room-viewer-count"), formatCount(Number.isInteger(room.viewers) ? room.viewers : 0));
    card.dataset.viewers = String(Number.isInteger(room.viewers) ? room.viewers : 0);
    card.title = `${title}: ${name}`;
    const slot = card.querySelector(".room-avatar-slot");
    if (slot.dataset.name !== name) {
      slot.dataset.name = name;
      slot.replaceChildren(avatar(creator.user_id, name, "avatar-xl"));
    }
  }

  async goLive() {
    if (!this.account.token) {
      toast("Sign up first to go live.", { kind: "info", code: "unauthorized" });
      this.account.openDialog("signup");
      return;
    }
    const input = $("#golive-title");
    const title = input.value.trim() || `${this.account.user?.name || "My"}'s live`;
    const button = $("#golive-submit");
    button.disabled = true;
    try {
      const answer = await api("POST", "/api/rooms", { title });
      input.value = "";
      location.hash = roomHref(answer.room_id);
    } catch (err) {
      toastRefusal(err);
    } finally {
      button.disabled = false;
    }
  }
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
