// Entry point: loads the catalog, wires the account, the lobby and the room page,
// and routes on the URL hash: "#/" is the lobby, "#/room/<room_id>" a room.

import { api, onUnauthorized } from "./api.js";
import { Account } from "./account.js";
import { Lobby } from "./lobby.js";
import { RoomView } from "./room-view.js";
import { $ } from "./ui.js";

/** The gift catalog, fetched once (retried until the server answers). */
function loadCatalog() {
  const catalog = { gifts: new Map(), ready: null };
  catalog.ready = (async () => {
    for (;;) {
      try {
        const data = await api("GET", "/api/gifts");
        for (const gift of Array.isArray(data?.gifts) ? data.gifts : []) {
          if (gift && typeof gift.id === "string") catalog.gifts.set(gift.id, gift);
        }
        return catalog;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 3000));
      }
    }
  })();
  return catalog;
}

function roomIdFromHash(hash) {
  const match = /^#\/room\/([^/?#]+)/.exec(hash);
  if (match === null) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

const catalog = loadCatalog();
const account = new Account();
const lobby = new Lobby({ account });
const room = new RoomView({ catalog, account });

onUnauthorized(() => account.sessionExpired());
account.onChange(() => room.sessionChanged());

function route() {
  const roomId = roomIdFromHash(location.hash);
  const inRoom = roomId !== null;
  $("#view-lobby").hidden = inRoom;
  $("#view-room").hidden = !inRoom;
  document.body.dataset.view = inRoom ? "room" : "lobby";
  $("#nav-lobby").classList.toggle("active", !inRoom);
  if (inRoom) {
    lobby.stop();
    account.placePanel("dialog");
    room.open(roomId);
  } else {
    room.close();
    account.placePanel("inline");
    document.title = "giftstream · live now";
    lobby.start();
  }
  account.refreshWallet();
}

window.addEventListener("hashchange", route);
route();
account.loadPackages();
