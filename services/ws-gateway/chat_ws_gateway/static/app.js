// chat-service demo client: plain JavaScript, no build step, no dependencies.
//
// Reads and writes go to the HTTP/JSON API; live events come over the gateway's WebSocket.
// The client remembers, per conversation, the highest seq it has seen, and sends those
// positions in a "resume" frame on every (re)connect, so nothing sent while it was offline
// is lost; messages are kept by seq, so a message seen twice is shown once.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  config: null, user: "", token: "", ws: null, retry: 0, retryTimer: null, pingTimer: null,
  pongDeadline: null, convs: new Map(), messages: new Map(), positions: new Map(),
  current: null, reloadTimer: null, signedIn: false,
};

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (cls || "");
}

function showError(text) { $("error").textContent = text || ""; }

async function api(method, path, body) {
  const res = await fetch(state.config.api_url + path, {
    method,
    headers: { "Authorization": "Bearer " + state.token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const message = (data.error && data.error.message) || data.message || res.statusText;
    throw new Error(`${method} ${path}: ${message}`);
  }
  return data;
}

async function getToken(user) {
  if (!state.config.dev_tokens) return $("token").value.trim();
  const res = await fetch("/demo/token", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user_id: user }),
  });
  if (!res.ok) throw new Error("could not get a development token");
  return (await res.json()).access_token;
}

// --- conversations ---------------------------------------------------------------------------

function convName(c) {
  if (c.title) return c.title;
  const others = c.member_ids.filter((m) => m !== state.user);
  return others.length ? others.join(", ") : "(just you)";
}

function see(cid, seq) {
  if (seq > (state.positions.get(cid) || 0)) state.positions.set(cid, seq);
}

async function loadConversations() {
  const data = await api("GET", "/v1/conversations?limit=100");
  for (const s of data.conversations) {
    const c = s.conversation;
    const lastSeq = Number(c.last_seq);
    state.convs.set(c.id, {
      id: c.id, title: c.title, member_ids: c.member_ids, last_seq: lastSeq,
      last_read_seq: Number(s.last_read_seq), unread: Number(s.unread_count),
    });
    // What the list reports is what this client has "seen" as far as resume is concerned;
    // the message history itself is fetched when the conversation is opened.
    see(c.id, lastSeq);
  }
  renderConversations();
}

function scheduleReload() {
  clearTimeout(state.reloadTimer);
  state.reloadTimer = setTimeout(() => loadConversations().catch((e) => showError(e.message)), 200);
}

function renderConversations() {
  const list = $("conv-list");
  list.replaceChildren();
  const convs = [...state.convs.values()].sort((a, b) => b.last_seq - a.last_seq ||
                                                          convName(a).localeCompare(convName(b)));
  for (const c of convs) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = c.id;
    button.setAttribute("aria-current", String(c.id === state.current));
    const name = document.createElement("span");
    name.textContent = convName(c);
    button.append(name);
    if (c.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = String(c.unread);
      badge.setAttribute("aria-label", `${c.unread} unread`);
      button.append(badge);
    }
    button.addEventListener("click", () => openConversation(c.id));
    li.append(button);
    list.append(li);
  }
}

async function openConversation(cid) {
  state.current = cid;
  const c = state.convs.get(cid);
  $("conv-title").textContent = c ? convName(c) : "Conversation";
  $("send-form").hidden = false;
  renderConversations();
  renderMessages();
  try {
    const data = await api("GET", `/v1/conversations/${cid}/messages?limit=50`);
    for (const m of data.messages) addMessage(m);
    renderMessages();
    await markRead(cid);
    $("message").focus();
  } catch (e) { showError(e.message); }
}

async function markRead(cid) {
  const c = state.convs.get(cid);
  if (!c || document.hidden) return;
  const r = await api("POST", `/v1/conversations/${cid}/read`, { up_to_seq: 0 });
  c.last_read_seq = Number(r.last_read_seq);
  c.unread = Number(r.unread_count);
  renderConversations();
}

$("create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const members = $("new-members").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const r = await api("POST", "/v1/conversations", { member_ids: members,
                                                      title: $("new-title").value.trim() });
    $("new-members").value = ""; $("new-title").value = "";
    await loadConversations();
    await openConversation(r.conversation.id);
  } catch (e) { showError(e.message); }
});

// --- messages ----------------------------------------------------------------------------------

function addMessage(m) {
  const cid = m.conversation_id;
  const seq = Number(m.seq);
  if (!state.messages.has(cid)) state.messages.set(cid, new Map());
  const byseq = state.messages.get(cid);
  const fresh = !byseq.has(seq);
  byseq.set(seq, { ...m, seq });
  see(cid, seq);
  return fresh;
}

function renderMessages() {
  const list = $("messages");
  const byseq = state.messages.get(state.current) || new Map();
  if (list.dataset.cid !== String(state.current)) {  // another conversation: start over
    list.replaceChildren();
    list.dataset.cid = String(state.current);
  }
  const shown = new Set([...list.children].map((li) => Number(li.dataset.seq)));
  const seqs = [...byseq.keys()].sort((a, b) => a - b);
  for (const seq of seqs) {
    if (shown.has(seq)) continue;
    const m = byseq.get(seq);
    const li = document.createElement("li");
    li.dataset.seq = String(seq);
    li.className = m.sender_id === state.user ? "mine" : "";
    const meta = document.createElement("span");
    meta.className = "meta";
    const time = m.created_at ? new Date(m.created_at).toLocaleTimeString() : "";
    meta.textContent = `${m.sender_id} · #${seq} · ${time}`;
    const body = document.createElement("span");
    body.className = "content";
    body.textContent = m.content;
    li.append(meta, body);
    const after = [...list.children].find((el) => Number(el.dataset.seq) > seq);
    list.insertBefore(li, after || null);
  }
  list.scrollTop = list.scrollHeight;
}

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const input = $("message");
  const content = input.value.trim();
  if (!content || !state.current) return;
  const body = { conversation_id: state.current, content,
                 idempotency_key: crypto.randomUUID ? crypto.randomUUID()
                   : String(Date.now()) + Math.random() };
  input.value = "";
  // A send that fails on the network is retried with the same key: never sent twice.
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await api("POST", "/v1/messages", body);
      if (addMessage(r.message) && r.message.conversation_id === state.current) renderMessages();
      return;
    } catch (e) {
      if (attempt >= 2 || !(e instanceof TypeError)) { showError(e.message); input.value = content; return; }
      await new Promise((ok) => setTimeout(ok, 500 * (attempt + 1)));
    }
  }
});

// --- search ------------------------------------------------------------------------------------

// The content with each highlight in a <mark>, built as DOM nodes (never HTML). Highlights
// are code point ranges: Array.from splits the string into code points, not UTF-16 units.
function highlighted(content, highlights) {
  const chars = Array.from(content);
  const out = document.createElement("span");
  let pos = 0;
  for (const h of highlights || []) {
    const start = Number(h.start || 0), end = Number(h.end || 0);
    out.append(chars.slice(pos, start).join(""));
    const mark = document.createElement("mark");
    mark.textContent = chars.slice(start, end).join("");
    out.append(mark);
    pos = end;
  }
  out.append(chars.slice(pos).join(""));
  return out;
}

let searchTimer = null;
async function runSearch() {
  const query = $("search").value;
  const list = $("search-results");
  if (!query.trim()) { list.replaceChildren(); return; }
  try {
    const data = await api("GET", "/v1/messages:search?limit=10&query=" +
                                  encodeURIComponent(query));
    if ($("search").value !== query) return;  // a newer query is on its way
    list.replaceChildren();
    for (const hit of data.hits || []) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      const meta = document.createElement("span");
      meta.className = "meta";
      const c = state.convs.get(hit.conversation_id);
      meta.textContent = `${c ? convName(c) : "conversation"} · ${hit.message.sender_id}`;
      button.append(meta, highlighted(hit.message.content, hit.highlights));
      button.addEventListener("click", () => jumpTo(hit.conversation_id,
                                                    Number(hit.message.seq)));
      li.append(button);
      list.append(li);
    }
  } catch (e) {
    // A half-typed query (only "-", a lone quote) is refused by the API: not worth a message.
    list.replaceChildren();
  }
}

$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 200);
});
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });

// Opens the hit's conversation and shows the message (loading the page it is on when it is
// older than the newest page), outlined.
async function jumpTo(cid, seq) {
  await openConversation(cid);
  const byseq = state.messages.get(cid);
  if (!byseq || !byseq.has(seq)) {
    try {
      const data = await api("GET", `/v1/conversations/${cid}/messages?limit=50` +
                                    `&after_seq=${Math.max(0, seq - 1)}`);
      for (const m of data.messages) addMessage(m);
      renderMessages();
    } catch (e) { showError(e.message); return; }
  }
  for (const el of $("messages").querySelectorAll("li.found")) el.classList.remove("found");
  const li = $("messages").querySelector(`li[data-seq="${seq}"]`);
  if (li) { li.classList.add("found"); li.scrollIntoView({ block: "center" }); }
}

// --- live events ---------------------------------------------------------------------------------

function onEvent(frame) {
  if (frame.type === "message.created") {
    const m = frame.message;
    const cid = m.conversation_id;
    const fresh = addMessage(m);
    const c = state.convs.get(cid);
    if (!c) { scheduleReload(); return; }
    c.last_seq = Math.max(c.last_seq, Number(m.seq));
    if (cid === state.current) {
      renderMessages();
      if (fresh && m.sender_id !== state.user) markRead(cid).catch(() => {});
    } else if (fresh && m.sender_id !== state.user) {
      c.unread = c.last_seq - c.last_read_seq;
    }
    renderConversations();
  } else if (frame.type === "conversation.read") {
    const c = state.convs.get(frame.conversation_id);
    if (c && frame.user_id === state.user) {  // read in another tab or device
      c.last_read_seq = Math.max(c.last_read_seq, Number(frame.last_read_seq));
      c.unread = Math.max(0, c.last_seq - c.last_read_seq);
      renderConversations();
    }
  } else if (frame.type === "pong") {
    clearTimeout(state.pongDeadline);
  } else if (frame.type === "error") {
    console.warn("gateway error frame", frame);
  }
}

function connect() {
  clearTimeout(state.retryTimer);
  if (state.ws) { state.ws.onclose = null; state.ws.close(); }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // The token travels as a subprotocol: browsers cannot set an Authorization header here.
  const ws = new WebSocket(`${scheme}//${location.host}${state.config.ws_path}`,
                           ["bearer", state.token]);
  state.ws = ws;
  setStatus(state.retry ? "Reconnecting…" : "Connecting…", "offline");
  ws.onopen = () => {
    state.retry = 0;
    ws.send(JSON.stringify({ type: "resume", positions: Object.fromEntries(state.positions) }));
    setStatus(`Connected as ${state.user}`, "online");
    clearInterval(state.pingTimer);
    state.pingTimer = setInterval(() => {
      // A dropped network is often silent: no pong in time means reconnect.
      ws.send(JSON.stringify({ type: "ping" }));
      clearTimeout(state.pongDeadline);
      state.pongDeadline = setTimeout(() => ws.close(), 10000);
    }, 20000);
  };
  ws.onmessage = (ev) => {
    try { onEvent(JSON.parse(ev.data)); } catch (e) { console.error(e); }
  };
  ws.onclose = async (ev) => {
    clearInterval(state.pingTimer);
    clearTimeout(state.pongDeadline);
    if (!state.signedIn) return;
    setStatus(`Disconnected (${ev.code}); reconnecting…`, "offline");
    if (ev.code === 4001 || ev.code === 1006 && state.retry > 1) {
      try { state.token = await getToken(state.user); } catch (_) { /* retried below */ }
    }
    const delay = Math.min(10000, 500 * 2 ** state.retry) * (0.75 + Math.random() / 2);
    state.retry += 1;
    state.retryTimer = setTimeout(connect, delay);
  };
}

window.addEventListener("online", () => { if (state.signedIn) { state.retry = 0; connect(); } });
// The browser knows the network is gone before TCP does: drop the socket now (the positions
// are kept) and resume when it is back.
window.addEventListener("offline", () => { if (state.ws) state.ws.close(); });
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.current) markRead(state.current).catch(() => {});
});

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const user = $("user").value.trim();
  if (!user) return;
  try {
    state.signedIn = false;
    if (state.ws) { state.ws.onclose = null; state.ws.close(); }
    state.token = await getToken(user);
    state.user = user;
    state.convs.clear(); state.messages.clear(); state.positions.clear();
    state.current = null;
    $("messages").replaceChildren();
    $("conv-title").textContent = "Pick a conversation";
    $("send-form").hidden = true;
    $("app").hidden = false;
    await loadConversations();
    state.signedIn = true;
    state.retry = 0;
    connect();
  } catch (e) { showError(e.message); setStatus("Signed out"); }
});

(async () => {
  state.config = await (await fetch("/demo/config.json")).json();
  if (!state.config.dev_tokens) {
    $("token").hidden = false;
    $("token-label").hidden = false;
  }
  const preset = new URLSearchParams(location.search).get("user");
  if (preset) { $("user").value = preset; $("signin-form").requestSubmit(); }
})();
