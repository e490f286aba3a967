// HTTP helpers: JSON in and out, the admin token kept in sessionStorage, /ws with reconnect back-off.

const TOKEN_KEY = "ticketblitz-admin-token";

export function adminToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setAdminToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Take `#admin=<token>` from the address bar (then remove it, so it is not bookmarked or shared). */
export function tokenFromFragment() {
  const match = /(?:^#|&)admin=([^&]*)/.exec(location.hash);
  if (!match) return;
  setAdminToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

/** fetch + JSON: resolves to {status, body, headers}; network failures reject. */
export async function request(method, path, { body, bearer, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  return { status: response.status, body: data, headers: response.headers };
}

export const getJSON = (path, opts) => request("GET", path, opts);
export const postJSON = (path, body, opts = {}) => request("POST", path, { ...opts, body });

/**
 * The /ws telemetry connection: `onFrame(frame)` for every frame (a `batch` is unwrapped), `onState(state,
 * detail)` for "connecting" | "live" | "down". Reconnects with exponential back-off (0.5 s … 15 s, jittered).
 * When an admin token is set, `{"type":"auth","token":…}` is the first frame sent.
 */
export class Telemetry {
  constructor({ onFrame, onState }) {
    this.onFrame = onFrame;
    this.onState = onState;
    this.delay = 500;
    this.socket = null;
    this.timer = null;
  }

  connect() {
    clearTimeout(this.timer);
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
    }
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    this.onState("connecting");
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      const token = adminToken();
      if (token) socket.send(JSON.stringify({ type: "auth", token }));
    };
    socket.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame && frame.type === "snapshot") {
        this.delay = 500;
        this.onState("live");
      }
      this.dispatch(frame);
    };
    socket.onerror = () => {};  // onclose follows; the state pill says so
    socket.onclose = () => {
      if (this.socket !== socket) return;
      const wait = Math.round(this.delay * (0.75 + Math.random() * 0.5));
      this.delay = Math.min(this.delay * 2, 15000);
      this.onState("down", wait);
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  dispatch(frame) {
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "batch" && Array.isArray(frame.frames)) {
      for (const inner of frame.frames) this.dispatch(inner);
      return;
    }
    this.onFrame(frame);
  }
}
