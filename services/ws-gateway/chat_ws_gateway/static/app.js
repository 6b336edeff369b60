// chat-service demo client: plain JavaScript, no build step, no dependencies.
//
// Reads and writes go to the HTTP/JSON API; live events come over the gateway's WebSocket.
// The client remembers, per conversation, the highest seq it has seen, and sends those
// positions in a "resume" frame on every (re)connect, so nothing sent while it was offline
// is lost; messages are kept by seq, so a message seen twice is shown once.
//
// Threads: the main list shows root-level messages, each with its reply count; "Reply" opens
// the thread in a side panel (GetThread), whose form sends with thread_root_id. Typing: the
// message inputs send a "typing" frame (at most one a second from here; the server passes on
// one per 3 s), and other members' typing shows under the list for expires_in_ms.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  config: null, user: "", token: "", ws: null, retry: 0, retryTimer: null, pingTimer: null,
  pongDeadline: null, convs: new Map(), messages: new Map(), positions: new Map(),
  current: null, reloadTimer: null, signedIn: false,
  thread: null, typing: new Map(), typingSentAt: 0, typingTimer: null,
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
  if (state.thread && state.thread.cid !== cid) $("thread-close").click();
  state.current = cid;
  renderTyping();
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
  const shown = new Map([...list.children].map((li) => [Number(li.dataset.seq), li]));
  const seqs = [...byseq.keys()].sort((a, b) => a - b);
  for (const seq of seqs) {
    const m = byseq.get(seq);
    if (m.thread_root_id) continue;  // replies live in their thread
    if (shown.has(seq)) { updateReplies(shown.get(seq), m); continue; }
    const li = messageItem(m);
    const replies = document.createElement("button");
    replies.type = "button";
    replies.className = "replies";
    replies.addEventListener("click", () => openThread(m.conversation_id, m.id));
    li.append(replies);
    updateReplies(li, m);
    const after = [...list.children].find((el) => Number(el.dataset.seq) > seq);
    list.insertBefore(li, after || null);
  }
  list.scrollTop = list.scrollHeight;
}

function messageItem(m) {
  const li = document.createElement("li");
  li.dataset.seq = String(m.seq);
  li.className = m.sender_id === state.user ? "mine" : "";
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = m.created_at ? new Date(m.created_at).toLocaleTimeString() : "";
  meta.textContent = `${m.sender_id} · #${m.seq} · ${time}`;
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = m.content;
  li.append(meta, body);
  return li;
}

function updateReplies(li, m) {
  const count = Number(m.reply_count || 0);
  const button = li.querySelector(".replies");
  const text = count === 0 ? "Reply" : count === 1 ? "1 reply" : `${count} replies`;
  if (button && button.textContent !== text) button.textContent = text;
}

// --- threads ---------------------------------------------------------------------------------------

async function openThread(cid, rootId) {
  state.thread = { cid, rootId };
  $("thread-panel").hidden = false;
  $("app").classList.add("with-thread");
  $("thread-messages").replaceChildren();
  $("thread-root").replaceChildren();
  try {
    const data = await api("GET", `/v1/conversations/${cid}/threads/${rootId}?limit=100`);
    addMessage(data.root);
    for (const m of data.messages) addMessage(m);
    renderThread();
    renderMessages();
    $("thread-message").focus();
  } catch (e) { showError(e.message); }
}

function renderThread() {
  const t = state.thread;
  if (!t) return;
  const byseq = state.messages.get(t.cid) || new Map();
  const root = [...byseq.values()].find((m) => m.id === t.rootId);
  if (root && !$("thread-root").children.length) {
    const div = messageItem(root);
    $("thread-root").append(div);
  }
  const list = $("thread-messages");
  const shown = new Set([...list.children].map((li) => Number(li.dataset.seq)));
  const replies = [...byseq.values()].filter((m) => m.thread_root_id === t.rootId)
    .sort((a, b) => a.seq - b.seq);
  for (const m of replies) {
    if (shown.has(m.seq)) continue;
    const after = [...list.children].find((el) => Number(el.dataset.seq) > m.seq);
    list.insertBefore(messageItem(m), after || null);
  }
  list.scrollTop = list.scrollHeight;
}

// A live reply changes its root's count: read the root again (one small call) rather than
// guess whether the count already included it.
async function refreshRoot(cid, rootId) {
  try {
    const data = await api("GET", `/v1/conversations/${cid}/threads/${rootId}?limit=1`);
    addMessage(data.root);
    if (cid === state.current) renderMessages();
  } catch (e) { console.warn(e); }
}

$("thread-close").addEventListener("click", () => {
  state.thread = null;
  $("thread-panel").hidden = true;
  $("app").classList.remove("with-thread");
});

$("thread-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const t = state.thread;
  const input = $("thread-message");
  const content = input.value.trim();
  if (!t || !content) return;
  input.value = "";
  try {
    const r = await sendMessage({ conversation_id: t.cid, content, thread_root_id: t.rootId });
    addMessage(r.message);
    renderThread();
    await refreshRoot(t.cid, t.rootId);
  } catch (e) { showError(e.message); input.value = content; }
});

// --- typing ----------------------------------------------------------------------------------------

function sendTyping(cid) {
  const now = Date.now();
  if (!cid || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  if (now - state.typingSentAt < 1000) return;
  state.typingSentAt = now;
  state.ws.send(JSON.stringify({ type: "typing", conversation_id: cid }));
}

function onTyping(frame) {
  if (frame.user_id === state.user) return;
  const key = `${frame.conversation_id} ${frame.user_id}`;
  state.typing.set(key, { cid: frame.conversation_id, user: frame.user_id,
                          until: Date.now() + Number(frame.expires_in_ms || 5000) });
  renderTyping();
}

function stopTyping(cid, user) {
  if (state.typing.delete(`${cid} ${user}`)) renderTyping();
}

function renderTyping() {
  const now = Date.now();
  for (const [key, t] of state.typing) if (t.until <= now) state.typing.delete(key);
  const users = [...state.typing.values()].filter((t) => t.cid === state.current)
    .map((t) => t.user).sort();
  $("typing").textContent = users.length === 0 ? ""
    : users.length === 1 ? `${users[0]} is typing…` : `${users.join(", ")} are typing…`;
  clearTimeout(state.typingTimer);
  if (state.typing.size) {
    const next = Math.min(...[...state.typing.values()].map((t) => t.until)) - now;
    state.typingTimer = setTimeout(renderTyping, Math.max(50, next));
  }
}

$("message").addEventListener("input", () => sendTyping(state.current));
$("thread-message").addEventListener("input", () => sendTyping(state.thread && state.thread.cid));

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const input = $("message");
  const content = input.value.trim();
  if (!content || !state.current) return;
  input.value = "";
  try {
    const r = await sendMessage({ conversation_id: state.current, content });
    if (addMessage(r.message) && r.message.conversation_id === state.current) renderMessages();
  } catch (e) { showError(e.message); input.value = content; }
});

async function sendMessage(fields) {
  const body = { ...fields, idempotency_key: crypto.randomUUID ? crypto.randomUUID()
                   : String(Date.now()) + Math.random() };
  // A send that fails on the network is retried with the same key: never sent twice.
  for (let attempt = 0; ; attempt++) {
    try {
      return await api("POST", "/v1/messages", body);
    } catch (e) {
      if (attempt >= 2 || !(e instanceof TypeError)) throw e;
      await new Promise((ok) => setTimeout(ok, 500 * (attempt + 1)));
    }
  }
}

// --- live events ---------------------------------------------------------------------------------

function onEvent(frame) {
  if (frame.type === "message.created") {
    const m = frame.message;
    const cid = m.conversation_id;
    const fresh = addMessage(m);
    stopTyping(cid, m.sender_id);
    const c = state.convs.get(cid);
    if (!c) { scheduleReload(); return; }
    c.last_seq = Math.max(c.last_seq, Number(m.seq));
    if (m.thread_root_id && fresh) {
      if (state.thread && state.thread.rootId === m.thread_root_id) renderThread();
      refreshRoot(cid, m.thread_root_id);
    }
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
  } else if (frame.type === "typing") {
    onTyping(frame);
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
    state.typing.clear();
    if (state.thread) $("thread-close").click();
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
