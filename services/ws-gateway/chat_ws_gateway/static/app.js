// chat-service demo client: plain JavaScript, no build step, no dependencies.
//
// Reads and writes go to the HTTP/JSON API; live events come over the gateway's WebSocket.
// The client remembers, per conversation, the last change position (pos) it has applied, and
// sends those positions in a "resume" frame on every (re)connect, so no change made while it
// was offline is lost; messages are kept by seq, and every message frame replaces the copy
// (an edit, a tombstone), so a change seen twice is shown once.
//
// Threads: the main list shows root-level messages, each with its reply count; "Reply" opens
// the thread in a side panel (GetThread), whose form sends with thread_root_id. Replies are
// ordinary messages: they can be edited, deleted and reacted to like the main list's, and
// carry files like them (the panel's form attaches as the main one does). Typing:
// the message inputs send a "typing" frame (at most one a second from here; the server passes
// on one per 3 s), and other members' typing shows under the list for expires_in_ms.
//
// Attachments (docs/attachments.md): files never pass through the API. For each chosen file
// the client asks for an upload (CreateUpload), posts the file straight to the object store
// with the presigned form it got, then sends the message naming the uploads (attachment_ids);
// a message may be files alone. An image's thumbnail arrives later as message.updated
// (thumbnail_ready), and is shown from a presigned URL (GetAttachmentUrl, thumbnail=true);
// "Download" fetches the file itself from another presigned URL.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  config: null, user: "", token: "", ws: null, retry: 0, retryTimer: null, pingTimer: null,
  pongDeadline: null, convs: new Map(), messages: new Map(), positions: new Map(),
  current: null, reloadTimer: null, messagesTimer: null, signedIn: false,
  thread: null, typing: new Map(), typingSentAt: 0, typingTimer: null, urls: new Map(),
};
const QUICK_REACTIONS = ["👍", "🎉", "❤️"];

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

function see(cid, pos) {
  if (pos > (state.positions.get(cid) || 0)) state.positions.set(cid, pos);
}

async function loadConversations() {
  const data = await api("GET", "/v1/conversations?limit=100");
  for (const s of data.conversations) {
    const c = s.conversation;
    const lastSeq = Number(c.last_seq);
    state.convs.set(c.id, {
      id: c.id, title: c.title, member_ids: c.member_ids, last_seq: lastSeq, role: c.role,
      last_read_seq: Number(s.last_read_seq), unread: Number(s.unread_count),
    });
    // What the list reports is what this client has "seen" as far as resume is concerned;
    // the message history itself is fetched when the conversation is opened.
    see(c.id, Number(c.last_pos));
  }
  for (const cid of [...state.convs.keys()]) {  // left or removed meanwhile
    if (!data.conversations.some((s) => s.conversation.id === cid)) forget(cid);
  }
  renderConversations();
  renderMembers();
}

function forget(cid) {
  state.convs.delete(cid);
  state.messages.delete(cid);
  state.positions.delete(cid);
  if (state.current === cid) {
    state.current = null;
    $("messages").replaceChildren();
    $("conv-title").textContent = "Pick a conversation";
    $("send-form").hidden = true;
  }
  renderConversations();
  renderMembers();
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
  renderMembers();
  try {
    await loadMessages(cid);
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

// --- members -----------------------------------------------------------------------------------

function renderMembers() {
  const c = state.convs.get(state.current);
  $("members-panel").hidden = !c;
  if (!c) return;
  const manager = c.role === "owner" || c.role === "admin";
  $("my-role").textContent = `You are ${c.role || "a member"}.`;
  const list = $("member-list");
  list.replaceChildren();
  for (const user of c.member_ids) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = user === state.user ? `${user} (you)` : user;
    li.append(name);
    if (manager && user !== state.user) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${user}`);
      remove.addEventListener("click", () => act(
        api("DELETE", `/v1/conversations/${c.id}/members/${encodeURIComponent(user)}`)));
      li.append(remove);
    }
    list.append(li);
  }
  $("add-member-form").hidden = !manager;
}

async function act(call) {
  showError("");
  try { await call; } catch (e) { showError(e.message); }
}

$("add-member-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const users = $("add-member").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!users.length || !state.current) return;
  $("add-member").value = "";
  act(api("POST", `/v1/conversations/${state.current}/members`, { member_ids: users })
    .then(() => loadConversations()));
});

$("leave").addEventListener("click", () => {
  const cid = state.current;
  if (!cid) return;
  act(api("DELETE", `/v1/conversations/${cid}/members/${encodeURIComponent(state.user)}`)
    .then(() => forget(cid)));
});

// --- messages ----------------------------------------------------------------------------------

async function loadMessages(cid) {
  const data = await api("GET", `/v1/conversations/${cid}/messages?limit=50`);
  for (const m of data.messages) addMessage(m);
  if (cid === state.current) renderMessages();
}

function scheduleMessagesReload(cid) {
  if (cid !== state.current) return;
  clearTimeout(state.messagesTimer);
  state.messagesTimer = setTimeout(() => {
    loadMessages(cid).catch((e) => showError(e.message));
    const t = state.thread;
    if (t && t.cid === cid) loadThread(cid, t.rootId).catch((e) => showError(e.message));
  }, 150);
}

function addMessage(m) {
  const cid = m.conversation_id;
  const seq = Number(m.seq);
  if (!state.messages.has(cid)) state.messages.set(cid, new Map());
  const byseq = state.messages.get(cid);
  const fresh = !byseq.has(seq);
  const before = byseq.get(seq);
  // An event's message carries no reactions and no thread counts: keep the ones known (a
  // tombstone has no reactions).
  const reactions = m.reactions || (m.deleted ? [] : (before && before.reactions) || []);
  const thread = m.reply_count === undefined && before
    ? { reply_count: before.reply_count, last_reply_at: before.last_reply_at } : {};
  byseq.set(seq, { ...thread, ...m, seq, reactions, attachments: m.attachments || [] });
  return fresh;
}

function messageButton(label, text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function react(m, emoji, mine) {
  const path = `/v1/conversations/${m.conversation_id}/messages/${m.id}/reactions`;
  act((mine ? api("DELETE", `${path}?emoji=${encodeURIComponent(emoji)}`)
            : api("POST", path, { emoji })).then((r) => {
    addMessage(r.message);
    redraw();
  }));
}

function renderMessages() {
  const list = $("messages");
  const byseq = state.messages.get(state.current) || new Map();
  list.dataset.cid = String(state.current);
  // Messages change (edits, tombstones, reactions, reply counts): the list is drawn again
  // each time.
  list.replaceChildren();
  for (const seq of [...byseq.keys()].sort((a, b) => a - b)) {
    const m = byseq.get(seq);
    if (m.thread_root_id) continue;  // replies live in their thread
    const li = messageItem(m);
    const replies = document.createElement("button");
    replies.type = "button";
    replies.className = "replies";
    replies.addEventListener("click", () => openThread(m.conversation_id, m.id));
    li.append(replies);
    updateReplies(li, m);
    list.append(li);
  }
  list.scrollTop = list.scrollHeight;
}

// One message with its controls: reactions, and Edit/Delete where the user may.
function messageItem(m) {
  const li = document.createElement("li");
  li.dataset.seq = String(m.seq);
  li.className = (m.sender_id === state.user ? "mine" : "") + (m.deleted ? " deleted" : "");
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = m.created_at ? new Date(m.created_at).toLocaleTimeString() : "";
  meta.textContent = `${m.sender_id} · #${m.seq} · ${time}` + (m.edited_at ? " · edited" : "");
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = m.deleted ? "message deleted" : m.content;
  li.append(meta, body);
  if (!m.deleted && m.attachments.length) li.append(attachmentList(m));
  if (!m.deleted) {
    const row = document.createElement("span");
    row.className = "reactions";
    const shown = new Set();
    for (const r of m.reactions || []) {
      shown.add(r.emoji);
      const b = messageButton(`${r.emoji} ${r.count}${r.reacted_by_me ? ", yours" : ""}`,
                              `${r.emoji} ${r.count}`, () => react(m, r.emoji, r.reacted_by_me));
      b.className = "reaction" + (r.reacted_by_me ? " mine" : "");
      b.setAttribute("aria-pressed", String(Boolean(r.reacted_by_me)));
      row.append(b);
    }
    for (const emoji of QUICK_REACTIONS) {
      if (!shown.has(emoji)) {
        const b = messageButton(`React ${emoji}`, emoji, () => react(m, emoji, false));
        b.className = "reaction quick";
        row.append(b);
      }
    }
    if (m.sender_id === state.user) {
      row.append(messageButton("Edit", "Edit", () => {
        const content = window.prompt("Edit message", m.content);
        if (content === null || !content.trim() || content === m.content) return;
        act(api("PATCH", `/v1/conversations/${m.conversation_id}/messages/${m.id}`,
                { content }).then((r) => { addMessage(r.message); redraw(); }));
      }));
    }
    const c = state.convs.get(m.conversation_id);
    if (m.sender_id === state.user || (c && (c.role === "owner" || c.role === "admin"))) {
      row.append(messageButton("Delete", "Delete", () => act(
        api("DELETE", `/v1/conversations/${m.conversation_id}/messages/${m.id}`)
          .then((r) => { addMessage(r.message); redraw(); }))));
    }
    li.append(row);
  }
  return li;
}

// --- attachments -------------------------------------------------------------------------------

const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

function sizeText(bytes) {
  const n = Number(bytes);
  return n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB`
    : `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// A presigned GET of an attachment or its thumbnail, reused (also while it is being asked for)
// as long as it has a minute left: the list is drawn again on every change, and the browser
// then keeps the image it already has.
function attachmentUrl(id, thumbnail) {
  const key = `${id} ${thumbnail}`;
  const known = state.urls.get(key);
  if (known && (known.expires === null || known.expires - Date.now() > 60000)) return known.url;
  const entry = { url: null, expires: null };
  entry.url = api("GET", `/v1/attachments/${id}/url` + (thumbnail ? "?thumbnail=true" : ""))
    .then((r) => { entry.expires = new Date(r.expires_at).getTime(); return r.url; });
  entry.url.catch(() => state.urls.delete(key));
  state.urls.set(key, entry);
  return entry.url;
}

function attachmentList(m) {
  const list = document.createElement("ul");
  list.className = "attachments";
  list.setAttribute("aria-label", "Attachments");
  for (const a of m.attachments) {
    const li = document.createElement("li");
    li.dataset.id = a.id;
    if (INLINE_IMAGES.has(a.content_type) && a.thumbnail_ready) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = a.filename;
      attachmentUrl(a.id, true).then((url) => { img.src = url; })
        .catch((e) => showError(e.message));
      li.append(img);
    }
    const name = document.createElement("span");
    name.className = "file";
    const pending = INLINE_IMAGES.has(a.content_type) && !a.thumbnail_ready;
    name.textContent = `${a.filename} (${sizeText(a.size_bytes)})` +
                       (pending ? " · preview coming…" : "");
    li.append(name, messageButton(`Download ${a.filename}`, "Download", () => act(download(a))));
    list.append(li);
  }
  return list;
}

// Fetches the file from the store and saves it under its (sanitised) name: the store's CORS
// lets this page read it, and a blob URL makes the browser save rather than show it.
async function download(a) {
  const res = await fetch(await attachmentUrl(a.id, false));
  if (!res.ok) throw new Error(`download of ${a.filename}: ${res.status}`);
  const href = URL.createObjectURL(await res.blob());
  const link = document.createElement("a");
  link.href = href;
  link.download = a.filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60000);
}

// One chosen file: CreateUpload, then the presigned form to the store (its fields first, the
// file last, named "file"); the upload id to list in attachment_ids.
async function uploadFile(cid, file) {
  const ticket = await api("POST", `/v1/conversations/${cid}/uploads`, {
    filename: file.name, content_type: file.type || "application/octet-stream",
    size_bytes: file.size,
  });
  const form = new FormData();
  for (const [name, value] of Object.entries(ticket.fields || {})) form.append(name, value);
  form.append("file", file);
  const res = await fetch(ticket.url, { method: ticket.method || "POST", body: form });
  if (!res.ok) {
    const text = await res.text().catch(() => "");
    const code = (/<Code>([^<]*)<\/Code>/.exec(text) || [])[1] || res.statusText;
    throw new Error(`upload of ${file.name} refused by the store: ${code}`);
  }
  return ticket.upload_id;
}

// The uploads of the files chosen in a composer (the main one or the thread's), one after
// the other, with progress in its list line; the upload ids to send as attachment_ids.
async function uploadChosen(cid, files, listId) {
  $(listId).textContent = `Uploading ${files.length} file(s)…`;
  const ids = [];
  for (const file of files) ids.push(await uploadFile(cid, file));
  return ids;
}

// The files chosen in a composer's file input, listed under it.
function renderChosenFiles(inputId, listId) {
  const files = [...$(inputId).files];
  $(listId).textContent = files.length
    ? "Attached: " + files.map((f) => `${f.name} (${sizeText(f.size)})`).join(", ") : "";
}

$("attach").addEventListener("change", () => renderChosenFiles("attach", "attach-list"));
$("thread-attach").addEventListener("change",
                                    () => renderChosenFiles("thread-attach", "thread-attach-list"));

// The main list and the open thread, both drawn from the messages known.
function redraw() {
  renderMessages();
  renderThread();
}

function updateReplies(li, m) {
  const count = Number(m.reply_count || 0);
  const button = li.querySelector(".replies");
  const text = count === 0 ? "Reply" : count === 1 ? "1 reply" : `${count} replies`;
  if (button && button.textContent !== text) button.textContent = text;
}

// --- threads ---------------------------------------------------------------------------------------

async function openThread(cid, rootId) {
  if (!state.thread || state.thread.rootId !== rootId) {  // files chosen for another thread
    $("thread-attach").value = "";
    renderChosenFiles("thread-attach", "thread-attach-list");
  }
  state.thread = { cid, rootId };
  $("thread-panel").hidden = false;
  $("app").classList.add("with-thread");
  $("thread-messages").replaceChildren();
  $("thread-root").replaceChildren();
  try {
    await loadThread(cid, rootId);
    $("thread-message").focus();
  } catch (e) { showError(e.message); }
}

async function loadThread(cid, rootId) {
  const data = await api("GET", `/v1/conversations/${cid}/threads/${rootId}?limit=100`);
  addMessage(data.root);
  for (const m of data.messages) addMessage(m);
  renderThread();
  if (cid === state.current) renderMessages();
}

function renderThread() {
  const t = state.thread;
  if (!t) return;
  const byseq = state.messages.get(t.cid) || new Map();
  const root = [...byseq.values()].find((m) => m.id === t.rootId);
  $("thread-root").replaceChildren(...(root ? [messageItem(root)] : []));
  const list = $("thread-messages");
  const replies = [...byseq.values()].filter((m) => m.thread_root_id === t.rootId)
    .sort((a, b) => a.seq - b.seq);
  list.replaceChildren(...replies.map(messageItem));
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
  $("thread-attach").value = "";
  renderChosenFiles("thread-attach", "thread-attach-list");
});

// A reply: text, files, or both, as the main composer sends (files are uploaded first, then
// the reply names them).
$("thread-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const t = state.thread;
  const input = $("thread-message");
  const content = input.value.trim();
  const files = [...$("thread-attach").files];
  if (!t || (!content && !files.length)) return;
  input.value = "";
  $("thread-send").disabled = true;
  try {
    const fields = { conversation_id: t.cid, content, thread_root_id: t.rootId };
    if (files.length) {
      fields.attachment_ids = await uploadChosen(t.cid, files, "thread-attach-list");
    }
    const r = await sendMessage(fields);
    $("thread-attach").value = "";
    renderChosenFiles("thread-attach", "thread-attach-list");
    addMessage(r.message);
    renderThread();
    await refreshRoot(t.cid, t.rootId);
  } catch (e) {
    showError(e.message); input.value = content;
    renderChosenFiles("thread-attach", "thread-attach-list");
  } finally {
    $("thread-send").disabled = false;
  }
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
  const files = [...$("attach").files];
  const cid = state.current;
  if ((!content && !files.length) || !cid) return;
  input.value = "";
  $("send").disabled = true;
  try {
    const fields = { conversation_id: cid, content };
    if (files.length) fields.attachment_ids = await uploadChosen(cid, files, "attach-list");
    const r = await sendMessage(fields);
    $("attach").value = "";
    renderChosenFiles("attach", "attach-list");
    if (addMessage(r.message) && r.message.conversation_id === state.current) renderMessages();
  } catch (e) {
    showError(e.message); input.value = content; renderChosenFiles("attach", "attach-list");
  } finally {
    $("send").disabled = false;
  }
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
                                                    Number(hit.message.seq),
                                                    hit.message.thread_root_id));
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
// older than the newest page), outlined; a thread reply is shown in its thread.
async function jumpTo(cid, seq, rootId) {
  await openConversation(cid);
  if (rootId) {
    await openThread(cid, rootId);
    const reply = $("thread-messages").querySelector(`li[data-seq="${seq}"]`);
    if (reply) { reply.classList.add("found"); reply.scrollIntoView({ block: "center" }); }
    return;
  }
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

const MEMBERSHIP = new Set(["member.added", "member.removed", "member.role_changed",
                            "conversation.updated"]);

function onEvent(frame) {
  if (frame.pos !== undefined && frame.type !== "resumed") see(frame.conversation_id, frame.pos);
  if (frame.type === "message.updated" || frame.type === "message.deleted") {
    addMessage(frame.message);
    if (frame.conversation_id === state.current) renderMessages();
    if (state.thread && state.thread.cid === frame.conversation_id) renderThread();
  } else if (frame.type === "reaction.added" || frame.type === "reaction.removed") {
    // Counts are the server's: read the page again rather than count here.
    scheduleMessagesReload(frame.conversation_id);
  } else if (MEMBERSHIP.has(frame.type)) {
    if (frame.type === "member.removed" && frame.user_id === state.user) {
      forget(frame.conversation_id);
    } else {
      scheduleReload();
    }
  } else if (frame.type === "message.created") {
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
  ws.onclose = (ev) => disconnected(ev.code);
}

// The socket is gone (closed by either side, or dropped by us when the browser went offline):
// say so, and reconnect with backoff; the positions are kept, so the next socket resumes.
async function disconnected(code) {
  clearInterval(state.pingTimer);
  clearTimeout(state.pongDeadline);
  if (!state.signedIn) return;
  setStatus(`Disconnected (${code}); reconnecting…`, "offline");
  if (code === 4001 || code === 1006 && state.retry > 1) {
    try { state.token = await getToken(state.user); } catch (_) { /* retried below */ }
  }
  const delay = Math.min(10000, 500 * 2 ** state.retry) * (0.75 + Math.random() / 2);
  state.retry += 1;
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, delay);
}

window.addEventListener("online", () => { if (state.signedIn) { state.retry = 0; connect(); } });
// The browser knows the network is gone before TCP does: drop the socket now (the positions
// are kept) and resume when it is back.
// Not ws.close() alone: its closing handshake cannot reach the server while offline, and the
// browser may wait a long time before it reports the close.
window.addEventListener("offline", () => {
  if (!state.ws) return;
  const ws = state.ws;
  state.ws = null;
  ws.onclose = null;
  ws.close();
  disconnected(1006);
});
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
