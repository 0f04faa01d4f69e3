// DOM helpers, number formatting, toasts, and how gifts look.
// User text (names, chat, titles) only ever goes into the page as text nodes:
// `el` has no way to set innerHTML.

/** Create an element. props: class, text, dataset, style (custom properties too),
 * on<event> listeners, anything else as an attribute. Children: nodes or strings
 * (strings become text nodes). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") {
      for (const [name, v] of Object.entries(value)) if (v !== undefined && v !== null) node.dataset[name] = String(v);
    } else if (key === "style") {
      for (const [name, v] of Object.entries(value)) node.style.setProperty(name, String(v));
    } else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function formatCount(n) {
  const value = Number(n);
  return Number.isFinite(value) ? value.toLocaleString("en-US") : "0";
}

/** Integer cents as dollars, without floating point. */
export function formatCents(cents) {
  const c = Math.max(0, Math.trunc(Number(cents) || 0));
  return `$${Math.floor(c / 100).toLocaleString("en-US")}.${String(c % 100).padStart(2, "0")}`;
}

/** A stable hue for an id, for avatars and chat names. */
export function hueFor(id) {
  let h = 2166136261;
  const s = String(id ?? "");
  for (let i = 0; i < s.length; i += 1) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return (h >>> 0) % 360;
}

export function initialOf(name) {
  const first = Array.from(String(name ?? "").trim())[0];
  return first ? first.toUpperCase() : "?";
}

export function avatar(userId, name, extraClass = "") {
  return el("span", {
    class: `avatar ${extraClass}`.trim(),
    "aria-hidden": "true",
    style: { "--hue": hueFor(userId || name) },
    text: initialOf(name),
  });
}

// --- gifts -----------------------------------------------------------------------

// Every gift has a picture shipped with the page (static/gifts/, Twemoji, CC BY 4.0: see
// its LICENSE.md), so no emoji font is needed; a gift without one gets the wrapped gift.
const GIFT_ART = new Set([
  "rose", "heart_me", "finger_heart", "ice_cream", "doughnut", "cap", "hand_hearts", "corgi",
  "confetti", "money_gun", "swan", "train", "galaxy", "fireworks", "sports_car",
  "interstellar", "lion", "universe",
]);

export function giftArtUrl(giftId) {
  return `/static/gifts/${GIFT_ART.has(giftId) ? giftId : "gift"}.svg`;
}

/** A new <img> of the gift, 1em square: it takes the size of the text around it. */
export function giftIcon(giftId) {
  return el("img", {
    class: "gift-art",
    src: giftArtUrl(giftId),
    alt: "",
    draggable: "false",
    decoding: "async",
  });
}

export const TIERS = ["small", "medium", "large", "huge"];

export function tierOf(gift) {
  return gift && TIERS.includes(gift.tier) ? gift.tier : "small";
}

// --- refusals in words -------------------------------------------------------------

const HUMAN = {
  insufficient_coins: "Not enough coins for that gift. Top up to keep gifting.",
  spending_limit_reached: "You've reached your spending cap for gifts.",
  rate_limited: "Whoa, slow down: you're sending too fast.",
  room_not_live: "This live has ended: gifts and chat are closed.",
  unknown_gift: "That gift isn't available.",
  unauthorized: "Sign up to send gifts and chat.",
  forbidden: "Your account isn't allowed to do that.",
  unavailable: "The server is busy right now. Try again in a moment.",
  internal: "Something went wrong on our side. Please try again.",
  bad_request: "That wasn't accepted.",
  payment_declined: "Your card was declined.",
  insufficient_funds: "Your card has insufficient funds.",
  underage: "You must be 18 or older for that.",
  region_unavailable: "Buying coins isn't available in your region.",
  suspended: "This account is suspended.",
  idempotency_conflict: "That payment was already submitted with different details.",
  unknown_package: "That coin package isn't available.",
  not_found: "Not found.",
  network: "Can't reach the server.",
};

function sentence(text) {
  const s = String(text ?? "").trim();
  if (!s) return "";
  const capital = s[0].toUpperCase() + s.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

/** {title, detail}: a human title for a stable code, and the server's own message
 * as detail when it says something more. */
export function describeRefusal(code, message) {
  const detail = sentence(message);
  const title = Object.hasOwn(HUMAN, code) ? HUMAN[code] : detail || "Something went wrong.";
  return { title, detail: detail && detail !== title ? detail : "" };
}

// --- toasts ------------------------------------------------------------------------

const MAX_TOASTS = 4;

/** Show a short message. kind: error | info | success. The same message again while
 * it is still up is counted ("×3") instead of stacked. */
export function toast(title, { kind = "error", code, detail = "", timeout = 5000 } = {}) {
  const stack = document.getElementById("toast");
  if (!stack) return;
  const key = `${kind}|${code ?? ""}|${title}|${detail}`;
  const same = [...stack.children].find((node) => node.toastKey === key && !node.classList.contains("leaving"));
  if (same) {
    same.toastCount += 1;
    same.querySelector(".toast-count").textContent = `\u00d7${same.toastCount}`;
    same.classList.remove("bump");
    void same.offsetWidth; // restart the bump animation
    same.classList.add("bump");
    clearTimeout(same.toastTimer);
    same.toastTimer = setTimeout(same.dismiss, timeout);
    return;
  }
  const item = el(
    "div",
    { class: `toast-item toast-${kind}`, role: kind === "error" ? "alert" : "status", dataset: { code } },
    el("div", { class: "toast-title" }, el("span", { text: title }), el("span", { class: "toast-count" })),
    detail ? el("div", { class: "toast-detail", text: detail }) : null,
  );
  item.toastKey = key;
  item.toastCount = 1;
  item.dismiss = () => {
    if (!item.isConnected || item.classList.contains("leaving")) return;
    item.classList.add("leaving");
    setTimeout(() => item.remove(), 250);
  };
  item.addEventListener("click", item.dismiss);
  stack.append(item);
  while (stack.children.length > MAX_TOASTS) stack.firstElementChild.remove();
  item.toastTimer = setTimeout(item.dismiss, timeout);
}

/** A toast for an ApiError or an error frame ({code, message}). */
export function toastRefusal(err) {
  const { title, detail } = describeRefusal(err.code, err.message);
  toast(title, { code: err.code, detail });
}

/** Show a refusal inline in a form's error line (and keep it until the next try). */
export function showFormError(node, err) {
  if (!err) {
    node.hidden = true;
    node.textContent = "";
    return;
  }
  const { title, detail } = describeRefusal(err.code, err.message);
  node.textContent = detail ? `${title} ${detail}` : title;
  node.dataset.code = err.code || "";
  node.hidden = false;
}
