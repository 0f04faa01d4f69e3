// The account panel: sign-up, balance, recharge, sign-out. One panel element, shown
// inline in the lobby and inside a dialog on a room page.

import { ApiError, api, getSession, newRequestId, saveSession } from "./api.js";
import { $, describeRefusal, formatCents, formatCount, hueFor, initialOf, showFormError, toast } from "./ui.js";

const DEFAULT_PACKAGE_COINS = 1000;

export class Account {
  constructor() {
    this.listeners = new Set();
    this.wallet = null;
    this.packages = [];
    // A recharge that got no answer (network) is retried with the same key, so it
    // cannot be charged twice; any answer starts a new key.
    this.unanswered = null;

    this.panel = $("#account-panel");
    this.dialog = $("#account-dialog");
    this.balance = $("#balance");

    $("#signup-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.signUp();
    });
    $("#recharge-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.recharge();
    });
    $("#signout").addEventListener("click", () => {
      this.setSession(null, null);
      toast("Signed out.", { kind: "info" });
    });
    $("#account-open").addEventListener("click", () => this.openDialog(this.token ? "profile" : "signup"));
    $("#recharge-open").addEventListener("click", () => this.openDialog("recharge"));
    $("#account-close").addEventListener("click", () => this.closeDialog());
    $("#recharge-later").addEventListener("click", () => this.closeDialog());
    this.dialog.addEventListener("click", (e) => {
      if (e.target === this.dialog) this.closeDialog();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !this.dialog.hidden) this.closeDialog();
    });
    $("#signup-birthdate").max = new Date().toISOString().slice(0, 10);
    this.render();
  }

  get token() {
    const session = getSession();
    return session ? session.token : null;
  }

  get user() {
    const session = getSession();
    return session ? session.user : null;
  }

  onChange(listener) {
    this.listeners.add(listener);
  }

  setSession(token, user) {
    saveSession(token, user);
    this.wallet = null;
    this.unanswered = null;
    this.render();
    for (const listener of this.listeners) listener();
  }

  /** The server said the token is no good (401 or a 4401 close). */
  sessionExpired() {
    if (!this.token) return;
    this.setSession(null, null);
    toast("Your session is no longer valid. Sign up again.", { code: "unauthorized" });
    this.openDialog("signup");
  }

  // --- where the panel lives ----------------------------------------------------------

  /** "inline": in the lobby sidebar; "dialog": in the (closed) account dialog. */
  placePanel(where) {
    this.placement = where;
    const home = where === "inline" ? $("#account-home") : $("#account-slot");
    if (this.panel.parentElement !== home) home.append(this.panel);
    if (where === "inline") this.dialog.hidden = true;
  }

  openDialog(focus) {
    if (this.placement === "dialog") this.dialog.hidden = false;
    this.refreshWallet();
    const target =
      focus === "recharge" && this.token ? $("#recharge-package") : focus === "signup" && !this.token ? $("#signup-name") : null;
    if (target !== null) {
      target.scrollIntoView({ block: "nearest", behavior: "smooth" });
      target.focus({ preventScroll: true });
    } else if (this.placement !== "dialog") {
      this.panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
    }
  }

  closeDialog() {
    this.dialog.hidden = true;
    this.hideOffer();
  }

  closeDialogIfOpen() {
    if (this.placement === "dialog") this.dialog.hidden = true;
    this.hideOffer();
  }

  // --- drawing --------------------------------------------------------------------------

  render() {
    const user = this.user;
    const signedIn = Boolean(this.token);
    $("#signup-section").hidden = signedIn;
    $("#profile-section").hidden = !signedIn;
    $("#recharge-section").hidden = !signedIn;
    $("#wallet-chip").hidden = !signedIn;
    $("#golive-hint").hidden = signedIn;
    const opener = $("#account-open");
    opener.textContent = signedIn ? user?.name || "Account" : "Sign up";
    opener.classList.toggle("btn-primary", !signedIn);
    opener.classList.toggle("btn-ghost", signedIn);
    if (signedIn) {
      $("#profile-name").textContent = user?.name || "";
      const avatarNode = $("#profile-avatar");
      avatarNode.textContent = initialOf(user?.name);
      avatarNode.style.setProperty("--hue", hueFor(user?.user_id || user?.name));
    }
    this.drawWallet();
  }

  drawWallet() {
    const w = this.wallet;
    const coins = w && Number.isInteger(w.coins) ? w.coins : 0;
    this.balance.textContent = String(coins);
    this.balance.dataset.coins = String(coins);
    $("#profile-coins").textContent = formatCount(coins);
    $("#diamonds").textContent = formatCount(w?.diamonds ?? 0);
    const limit = w?.spending_limit;
    $("#spending-limit").textContent =
      limit && typeof limit === "object" && Number.isInteger(limit.coins)
        ? `${formatCount(limit.coins)} / ${limit.period === "monthly" ? "month" : "day"}`
        : "none";
  }

  /** The balance after a gift (ack) or a welcome. */
  setBalance(coins) {
    const before = this.wallet?.coins;
    this.wallet = { ...(this.wallet ?? {}), coins };
    this.drawWallet();
    if (Number.isInteger(before) && before !== coins) {
      const chip = $("#wallet-chip");
      chip.classList.remove("up", "down");
      void chip.offsetWidth; // restart the flash animation
      chip.classList.add(coins > before ? "up" : "down");
    }
  }

  async refreshWallet() {
    if (!this.token) return;
    try {
      this.wallet = await api("GET", "/api/wallet");
      this.drawWallet();
    } catch (err) {
      // 401 signs out through the api module; anything else waits for the next try
      if (!(err instanceof ApiError) || err.status !== 401) console.warn("wallet:", err.message);
    }
  }

  async loadPackages() {
    for (;;) {
      try {
        const data = await api("GET", "/api/coin-packages");
        this.packages = Array.isArray(data?.packages) ? data.packages : [];
        this.drawPackages();
        return;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 3000));
      }
    }
  }

  drawPackages() {
    const select = $("#recharge-package");
    select.replaceChildren(
      ...this.packages.map((p) => {
        const option = document.createElement("option");
        option.value = String(p.id);
        option.textContent = `${formatCount(p.coins)} coins — ${formatCents(p.price_cents)}`;
        return option;
      }),
    );
    const preferred = this.packages.find((p) => p.coins === DEFAULT_PACKAGE_COINS) ?? this.packages[0];
    if (preferred) select.value = String(preferred.id);
  }

  // --- actions ----------------------------------------------------------------------

  async signUp() {
    const error = $("#signup-error");
    const name = $("#signup-name").value.trim();
    const birthdate = $("#signup-birthdate").value.trim();
    const region = ($("#signup-region").value.trim() || "US").toUpperCase();
    if (!name) {
      showFormError(error, { code: "bad_request", message: "Please enter a name." });
      return;
    }
    if (!/^\d{4}-\d{2}-\d{2}$/.test(birthdate)) {
      showFormError(error, { code: "bad_request", message: "Please enter your birthdate." });
      return;
    }
    showFormError(error, null);
    const button = $("#signup-submit");
    button.disabled = true;
    try {
      const answer = await api("POST", "/api/users", { name, birthdate, region });
      this.setSession(answer.token, { user_id: answer.user_id, name });
      this.wallet = { coins: 0, diamonds: 0, locked_diamonds: 0, spending_limit: null };
      this.drawWallet();
      this.refreshWallet();
      if (isAdult(birthdate)) {
        // Signed up to send a gift: the next step is coins, so offer them right away.
        this.offerRecharge(name);
      } else {
        toast(`Welcome, ${name}!`, { kind: "success", detail: "Buying coins needs an 18+ account." });
        this.closeDialogIfOpen();
      }
    } catch (err) {
      showFormError(error, err);
    } finally {
      button.disabled = false;
    }
  }

  /** Just signed up: the recharge, with a welcome, where the sign-up form was. */
  offerRecharge(name) {
    const offer = $("#recharge-offer");
    offer.textContent = `Welcome, ${name}! Get coins to send your first gift.`;
    offer.hidden = false;
    $("#recharge-later").hidden = this.placement !== "dialog";
    this.openDialog("recharge");
  }

  hideOffer() {
    $("#recharge-offer").hidden = true;
    $("#recharge-later").hidden = true;
  }

  async recharge() {
    const error = $("#recharge-error");
    const packageId = $("#recharge-package").value;
    const cardNumber = $("#recharge-card").value.trim();
    if (!packageId) {
      showFormError(error, { code: "unknown_package", message: "Choose a coin package." });
      return;
    }
    if (!cardNumber) {
      showFormError(error, { code: "bad_request", message: "Enter a card number." });
      return;
    }
    showFormError(error, null);
    const body = `${packageId}|${cardNumber}`;
    const key = this.unanswered !== null && this.unanswered.body === body ? this.unanswered.key : newRequestId();
    this.unanswered = { body, key };
    const button = $("#recharge-submit");
    button.disabled = true;
    try {
      const answer = await api("POST", "/api/wallet/recharge", {
        package_id: packageId,
        card_number: cardNumber,
        idempotency_key: key,
      });
      this.unanswered = null;
      if (Number.isInteger(answer?.coins)) this.setBalance(answer.coins);
      const added = Number.isInteger(answer?.added) ? answer.added : null;
      toast(added !== null ? `+${formatCount(added)} coins` : "Coins added", {
        kind: "success",
        detail: `Balance: ${formatCount(answer?.coins ?? 0)} coins.`,
      });
      this.closeDialogIfOpen();
      this.refreshWallet();
    } catch (err) {
      if (!(err instanceof ApiError) || err.code !== "network") this.unanswered = null;
      showFormError(error, err);
      toast(...toastArgs(err));
    } finally {
      button.disabled = false;
    }
  }
}

/** 18 or older today, by the birthdate typed in (the server decides; this only spares an
 * underage user an offer the server would refuse). */
function isAdult(birthdate) {
  const [y, m, d] = birthdate.split("-").map(Number);
  const now = new Date();
  const age = now.getFullYear() - y - (now.getMonth() + 1 < m || (now.getMonth() + 1 === m && now.getDate() < d) ? 1 : 0);
  return age >= 18;
}

function toastArgs(err) {
  const code = err instanceof ApiError ? err.code : "internal";
  const titles = {
    payment_declined: "Payment declined",
    insufficient_funds: "Insufficient funds on the card",
    underage: "Coins are for 18+ accounts only",
    region_unavailable: "Not available in your region",
  };
  const { title, detail } = describeRefusal(code, err.message);
  return [titles[code] ?? "Recharge failed", { code, detail: detail || title }];
}
