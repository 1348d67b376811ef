// The debugger page: the list from /debugger/api/events, kept live by /debugger/stream.
// Every value from an event is put in the page as text (textContent, never innerHTML): an event
// property holding markup is shown, not run (and the page's Content-Security-Policy allows no
// inline script besides).
"use strict";

const MAX_ROWS = 2000;          // the list shows at most this many (the server keeps its own bound)
const token = new URLSearchParams(location.search).get("token");
const entries = new Map();      // id -> entry, shown or held while paused
let order = [];                 // ids shown, newest first
let held = [];                  // entries that came while paused, oldest first
let paused = false;
let selected = null;
let view = "pretty";
let stream = null;

const $ = (selector) => document.querySelector(selector);

function withToken(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function filters() {
  const form = new FormData($("#filters"));
  const chosen = {};
  for (const [name, value] of form.entries()) if (value !== "") chosen[name] = value;
  return chosen;
}

function matches(entry, chosen) {
  if (chosen.source && entry.source !== chosen.source) return false;
  if (chosen.type && entry.type !== chosen.type) return false;
  if (chosen.event && entry.event !== chosen.event) return false;
  if (chosen.status && entry.fate.status !== chosen.status) return false;
  if (chosen.q) {
    const text = (typeof entry.payload === "string" ? entry.payload : JSON.stringify(entry.payload)) +
      (entry.reason ? " " + JSON.stringify(entry.reason) : "");
    if (!text.toLowerCase().includes(chosen.q.toLowerCase())) return false;
  }
  return true;
}

async function load() {
  const query = new URLSearchParams({...filters(), limit: "500"});
  const answer = await fetch(withToken("/debugger/api/events?" + query), {headers: {accept: "application/json"}});
  if (!answer.ok) {
    showConnection("failed", (await answer.json()).message || answer.statusText);
    return;
  }
  const body = await answer.json();
  entries.clear();
  held = [];
  order = body.events.map((entry) => { entries.set(entry.id, entry); return entry.id; });
  showSampling(body.sampling);
  showWaiting();
  renderList();
}

function time(received) {
  const at = new Date(received);
  return isNaN(at) ? received : at.toLocaleTimeString([], {hour12: false}) + "." +
    String(at.getMilliseconds()).padStart(3, "0");
}

function row(entry) {
  const tr = document.createElement("tr");
  tr.dataset.id = entry.id;
  tr.append(el("td", time(entry.received_at)), el("td", entry.source), el("td", entry.type || "—"),
            el("td", entry.event || (entry.payload && entry.payload.name) ||
                     (entry.reason && entry.reason.code) || "—"),
            el("td", entry.user_id || entry.anonymous_id || "—"), el("td", size(entry.bytes)));
  const status = el("td");
  status.append(badge(entry.fate.status));
  const contract = entry.contract;
  if (contract && contract.result !== "passed" && contract.result !== "unchecked") {
    status.append(" ", badge(contract.planned === false ? "unplanned" : contract.result,
                             contract.violations.length ? contract.violations.length + " violation(s)" : null));
  }
  tr.append(status);
  if (entry.id === selected) tr.classList.add("selected");
  tr.addEventListener("click", () => select(entry.id));
  return tr;
}

function badge(status, title) {
  const node = el("span", status.replace("_", "-"), "badge " + status);
  if (title) node.title = title;
  return node;
}

function size(bytes) {
  return bytes >= 1024 ? (bytes / 1024).toFixed(1) + " KB" : bytes + " B";
}

function renderList() {
  const body = $("#list tbody");
  body.replaceChildren(...order.map((id) => row(entries.get(id))));
  $("#empty").hidden = order.length > 0;
}

function add(entry) {
  knowSource(entry.source);   // the source filter offers a source from its first entry on
  if (entries.has(entry.id) || !matches(entry, filters())) return;
  entries.set(entry.id, entry);
  if (paused) {
    held.push(entry);
    showWaiting();
    return;
  }
  order.unshift(entry.id);
  $("#list tbody").prepend(row(entry));
  $("#empty").hidden = true;
  while (order.length > MAX_ROWS) {
    entries.delete(order.pop());
    $("#list tbody").lastElementChild.remove();
  }
}

function update(entry) {
  if (!entries.has(entry.id)) return;
  entries.set(entry.id, entry);
  const old = document.querySelector(`#list tr[data-id="${entry.id}"]`);
  if (old) old.replaceWith(row(entry));
  if (selected === entry.id) showDetail(entry);
}

function setPaused(value) {
  paused = value;
  $("#live").textContent = paused ? "Resume" : "Pause";
  $("#live").setAttribute("aria-pressed", String(!paused));
  if (!paused) {
    for (const entry of held) order.unshift(entry.id);
    held = [];
    renderList();
  }
  showWaiting();
}

function showWaiting() {
  const waiting = $("#waiting");
  waiting.hidden = !paused;
  waiting.textContent = held.length + " new";
}

function showConnection(state, title) {
  const node = $("#connection");
  node.className = "badge " + state;
  node.textContent = state;
  node.title = title || "";
}

function showSampling(stats) {
  const skipped = stats.skipped || 0;
  $("#sampling").textContent = skipped
    ? `${skipped.toLocaleString()} events skipped at high rate ` +
      `(at most ${stats.max_events_per_second}/s kept per source)`
    : "";
  for (const name of Object.keys(stats.sources || {})) knowSource(name);
}

function knowSource(name) {
  const select = $("#filters select[name=source]");
  if (name && ![...select.options].some((o) => o.value === name)) select.append(new Option(name, name));
}

// -- the detail ------------------------------------------------------------------------------

function select(id) {
  selected = id;
  for (const tr of document.querySelectorAll("#list tr.selected")) tr.classList.remove("selected");
  const tr = document.querySelector(`#list tr[data-id="${id}"]`);
  if (tr) tr.classList.add("selected");
  showDetail(entries.get(id));
}

function facts(pairs) {
  const dl = $("#detail-facts");
  dl.replaceChildren();
  for (const [name, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    dl.append(el("dt", name), el("dd", value));
  }
}

function showDetail(entry) {
  $("#detail").hidden = false;
  $("#detail-title").textContent = entry.reason ? `Refused: ${entry.reason.code}` :
    `${entry.type || "?"} ${entry.event || ""}`;
  facts([["received", entry.received_at], ["source", entry.source], ["message id", entry.message_id],
         ["user id", entry.user_id], ["anonymous id", entry.anonymous_id], ["HTTP status", entry.http_status],
         ["size", size(entry.bytes) + (entry.payload_truncated ? " (cut: the start is shown)" : "")],
         ["reason", entry.reason ? entry.reason.message : null], ["path", entry.reason ? entry.reason.path : null]]);
  showContract(entry.contract);
  showFate(entry.fate);
  showPayload(entry);
}

function showContract(contract) {
  const box = $("#contract");
  box.replaceChildren();
  if (!contract) return;
  const title = el("h2", "Contract ");
  title.append(badge(contract.result));
  if (contract.planned === false) title.append(" ", badge("unplanned", "no contract for this event"));
  box.append(title);
  if (!contract.violations.length) return;
  const list = el("ul", null, "violations");
  for (const v of contract.violations) {
    const item = el("li");
    item.append(el("code", v.pointer || "/"), " ", v.message + ` (${v.keyword}, ${v.contract}): `, badge(v.action));
    list.append(item);
  }
  if (contract.violations_not_shown) list.append(el("li", `and ${contract.violations_not_shown} more`));
  box.append(list);
}

function showFate(fate) {
  const box = $("#fate");
  box.replaceChildren();
  const title = el("h2", "Fate ");
  title.append(badge(fate.status));
  const duplicate = fate.policy === "duplicate" ? " (already: this send was the duplicate)" : "";
  const said = fate.status === "stored" ? `in ${fate.table}${duplicate}`
    : fate.status === "dropped" ? `by ${fate.policy || "a policy"}`
    : fate.error_type ? `${fate.error_type}: ${fate.error_message || ""}` : "";
  if (said) title.append(" ", el("span", said));
  box.append(title);
  const names = Object.keys(fate.destinations || {});
  if (!names.length) return;
  const list = el("ul", null, "destinations");
  for (const name of names) {
    const d = fate.destinations[name];
    const item = el("li", name + " ");
    item.append(badge(d.status));
    const parts = [d.http_status && `HTTP ${d.http_status}`, d.attempts && `${d.attempts} attempt(s)`,
                   d.latency_ms !== null && d.latency_ms !== undefined && `${d.latency_ms} ms`,
                   d.error_type && `${d.error_type}: ${d.error_message || ""}`].filter(Boolean);
    if (parts.length) item.append(" " + parts.join(", "));
    list.append(item);
  }
  box.append(list);
}

function showPayload(entry) {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view));
  }
  const pre = $("#payload");
  pre.replaceChildren();
  if (typeof entry.payload !== "object" || entry.payload === null) {
    pre.textContent = entry.payload === null ? "(no body)" : entry.payload;
    return;
  }
  const flagged = new Map(((entry.contract && entry.contract.violations) || []).map((v) => [v.pointer, v.message]));
  if (view === "pretty") pre.append(...call(entry.payload, flagged));
  else pre.append(json(entry.payload, "", 0, flagged));
}

// The call as the SDK's user wrote it: analytics.track("Order Completed", {...}).
function call(payload, flagged) {
  const section = (key) => [json(payload[key] || {}, "/" + key, 0, flagged)];
  const text = (value) => el("span", JSON.stringify(value), "json-string");
  const head = (name) => document.createTextNode(`analytics.${name}(`);
  const sep = () => document.createTextNode(", ");
  const parts = {
    track: () => [head("track"), text(payload.event), sep(), ...section("properties")],
    identify: () => [head("identify"), text(payload.userId ?? null), sep(), ...section("traits")],
    page: () => [head("page"), text(payload.category ?? null), sep(), text(payload.name ?? null), sep(),
                 ...section("properties")],
    screen: () => [head("screen"), text(payload.name ?? null), sep(), ...section("properties")],
    group: () => [head("group"), text(payload.groupId ?? null), sep(), ...section("traits")],
    alias: () => [head("alias"), text(payload.userId ?? null), sep(), text(payload.previousId ?? null)],
  }[payload.type];
  if (!parts) return [json(payload, "", 0, flagged)];
  const context = payload.context ? [document.createTextNode("\n\ncontext: "),
                                     json(payload.context, "/context", 0, flagged)] : [];
  return [...parts(), document.createTextNode(")"), ...context];
}

function escapePointer(key) {
  return String(key).replaceAll("~", "~0").replaceAll("/", "~1");
}

// JSON as nested spans, each value knowing its pointer, so violations are highlighted in place.
function json(value, pointer, depth, flagged) {
  const indent = "  ".repeat(depth + 1);
  const close = "  ".repeat(depth);
  let node;
  if (Array.isArray(value) || (value && typeof value === "object")) {
    node = el("span");
    const isArray = Array.isArray(value);
    const keys = isArray ? value.map((_, i) => i) : Object.keys(value);
    node.append(isArray ? "[" : "{");
    keys.forEach((key, index) => {
      node.append("\n" + indent);
      if (!isArray) node.append(el("span", JSON.stringify(key), "json-key"), ": ");
      node.append(json(value[key], pointer + "/" + escapePointer(key), depth + 1, flagged));
      if (index < keys.length - 1) node.append(",");
    });
    node.append(keys.length ? "\n" + close : "", isArray ? "]" : "}");
  } else {
    const kind = value === null ? "null" : typeof value;
    node = el("span", JSON.stringify(value), "json-" + kind);
  }
  if (flagged.has(pointer)) {
    node.classList.add("violation");
    node.title = flagged.get(pointer);
  }
  return node;
}

// -- wiring ----------------------------------------------------------------------------------

function connect() {
  if (stream) stream.close();
  stream = new EventSource(withToken("/debugger/stream"));
  stream.addEventListener("hello", (event) => { showConnection("live"); showSampling(JSON.parse(event.data)); });
  stream.addEventListener("entry", (event) => add(JSON.parse(event.data)));
  stream.addEventListener("fate", (event) => update(JSON.parse(event.data)));
  stream.addEventListener("reset", () => load());
  stream.addEventListener("lagged", () => load());
  stream.onerror = () => showConnection("reconnecting", "the stream broke; the browser retries");
}

let typing = null;
$("#filters").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(load, 250);
});
$("#filters").addEventListener("submit", (event) => { event.preventDefault(); load(); });
$("#live").addEventListener("click", () => setPaused(!paused));
$("#reset").addEventListener("click", async () => {
  await fetch(withToken("/debugger/api/reset"), {method: "POST"});
  load();
});
for (const button of document.querySelectorAll(".tabs button")) {
  button.addEventListener("click", () => {
    view = button.dataset.view;
    if (selected) showPayload(entries.get(selected));
  });
}
setInterval(async () => {   // the sampling notice stays current without a message per skipped event
  const answer = await fetch(withToken("/debugger/api/events?limit=1"));
  if (answer.ok) showSampling((await answer.json()).sampling);
}, 5000);
load().then(connect);
