// Flowyard web UI: makes the server-rendered pages live. No framework, no build step.
"use strict";

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)flowyard_csrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function postJSON(url, body) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (e) {
    return { ok: false, status: 0, data: { error: { message: `cannot reach the control plane (${e.message}); try again` } } };
  }
  let data = {};
  try { data = await response.json(); } catch (e) { /* an empty or non-JSON answer */ }
  return { ok: response.ok, status: response.status, data };
}

function errorText(result) {
  return (result.data && result.data.error && result.data.error.message) || `HTTP ${result.status}`;
}

function stamp(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", "") : "";
}

// An EventSource reconnects by itself after a broken stream, but gives up for good when a
// reconnect is answered with an error (a server stopping or starting answers 503): then a new
// one is opened a moment later, from where the page is (``url()`` is asked again).
function followEvents(url, handlers, onTrouble) {
  let source = null, stopped = false;
  function open() {
    source = new EventSource(url());
    for (const [kind, handler] of Object.entries(handlers)) source.addEventListener(kind, handler);
    source.addEventListener("error", () => {
      if (onTrouble) onTrouble();
      if (source.readyState === EventSource.CLOSED && !stopped) setTimeout(open, 1000);
    });
  }
  open();
  return { close() { stopped = true; source.close(); } };
}

// --- runs list: re-read the rows when runs change ---
function liveRunsList() {
  const table = document.getElementById("runs");
  if (!table || table.dataset.live !== "yes") return;
  const rows = document.getElementById("run-rows");
  let reading = false, again = false;
  async function reread() {
    if (reading) { again = true; return; }
    reading = true;
    try {
      const params = new URLSearchParams(location.search);
      params.set("rows", "1");
      const response = await fetch(`/runs?${params}`, { credentials: "same-origin" });
      if (response.ok) rows.innerHTML = await response.text();
    } catch (e) {
      // The control plane is away (restarting): the stream's next "ready" reads again.
    } finally {
      reading = false;
      if (again) { again = false; reread(); }
    }
  }
  // A reconnect may have missed changes: "ready" reads once more.
  followEvents(() => "/api/v1/events", { changed: reread, ready: reread });
}

// --- run page: state, logs, cancel ---
function liveRun() {
  const head = document.getElementById("run");
  if (!head) return;
  const runId = head.dataset.run;
  const logs = document.getElementById("logs");
  const follow = document.getElementById("log-follow");
  const search = document.getElementById("log-search");
  const status = document.getElementById("log-status");
  let last = [0, 0];
  let count = 0;

  function after(line) {
    return line.attempt > last[0] || (line.attempt === last[0] && line.seq > last[1]);
  }
  function matches(text) {
    const needle = search.value.toLowerCase();
    return !needle || text.toLowerCase().includes(needle);
  }
  function append(lines) {
    const fragment = document.createDocumentFragment();
    for (const line of lines) {
      if (!after(line)) continue; // never show a line twice, whatever the stream resends
      last = [line.attempt, line.seq];
      const row = document.createElement("span");
      row.className = `line lv-${line.level} ${line.stream}`;
      row.dataset.pos = `${line.attempt}:${line.seq}`;
      const time = document.createElement("span");
      time.className = "t";
      time.textContent = stamp(line.time) + " ";
      row.append(time, document.createTextNode(line.text + "\n"));
      if (!matches(line.text)) row.classList.add("hidden");
      fragment.append(row);
      count += 1;
    }
    logs.append(fragment);
    status.textContent = `${count} lines`;
    if (follow.checked) logs.scrollTop = logs.scrollHeight;
  }
  search.addEventListener("input", () => {
    for (const row of logs.children) row.classList.toggle("hidden", !matches(row.textContent));
  });
  follow.addEventListener("change", () => { if (follow.checked) logs.scrollTop = logs.scrollHeight; });

  const lines = followEvents(
    () => `/api/v1/runs/${runId}/logs?after=${last[0]}:${last[1]}`,
    {
      lines: (e) => append(JSON.parse(e.data)),
      end: () => { lines.close(); status.textContent = `${count} lines · run ended`; },
      open: () => { status.textContent = `${count} lines`; },
    },
    () => { status.textContent = `${count} lines · reconnecting…`; },
  );

  const cancel = document.getElementById("cancel");
  let shown = -1;
  function showRun(run) {
    // The Cancel answer and the run's event stream race: an older version never wins.
    if (run.version < shown) return;
    shown = run.version;
    const state = document.getElementById("run-state");
    state.textContent = run.state.type;
    state.className = `state state-${run.state.type.toLowerCase()}`;
    document.getElementById("run-state-name").textContent = run.state.name;
    document.getElementById("run-state-message").textContent = run.state.message;
    document.getElementById("run-start").textContent = stamp(run.start_time);
    document.getElementById("run-end").textContent = stamp(run.end_time);
    document.getElementById("run-agent").textContent = run.agent_name;
    document.getElementById("run-infrastructure").firstElementChild.textContent = run.infrastructure_id;
    const ended = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"].includes(run.state.type);
    cancel.disabled = ended || run.state.type === "CANCELLING";
    head.dataset.terminal = ended ? "yes" : "no";
  }
  if (head.dataset.terminal !== "yes") {
    const changes = followEvents(() => `/api/v1/runs/${runId}/events`, {
      run: (e) => showRun(JSON.parse(e.data).run),
      end: () => changes.close(),
    });
  }
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const result = await postJSON(`/api/v1/runs/${runId}/cancel`, { reason: "cancelled from the web UI" });
    const error = document.getElementById("cancel-error");
    if (result.ok) { error.textContent = ""; showRun(result.data.run); }
    else { error.textContent = errorText(result); cancel.disabled = false; }
  });
}

// --- deployment page: the Run form from the parameter schema, and Pause ---
function field(name, schema, value, required) {
  const wrap = document.createElement("div");
  const id = `param-${name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = (schema.title || name) + (required ? " *" : "");
  wrap.append(label);
  let input;
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (Array.isArray(schema.enum)) {
    input = document.createElement("select");
    for (const option of schema.enum) {
      const element = document.createElement("option");
      element.value = JSON.stringify(option);
      element.textContent = String(option);
      if (JSON.stringify(option) === JSON.stringify(value)) element.selected = true;
      input.append(element);
    }
    input.dataset.kind = "enum";
  } else if (type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = value === true;
    input.dataset.kind = "boolean";
  } else if (type === "integer" || type === "number" || type === "string") {
    input = document.createElement("input");
    input.type = "text";
    if (type !== "string") input.inputMode = "decimal";
    input.value = value === undefined || value === null ? "" : String(value);
    input.dataset.kind = type;
  } else {
    input = document.createElement("textarea");
    input.rows = 3;
    input.value = value === undefined ? "" : JSON.stringify(value, null, 2);
    input.dataset.kind = "json";
  }
  input.id = id;
  input.name = name;
  wrap.append(input);
  if (schema.description) {
    const description = document.createElement("div");
    description.className = "desc";
    description.textContent = schema.description;
    wrap.append(description);
  }
  return wrap;
}

function readField(input) {
  const kind = input.dataset.kind;
  if (kind === "boolean") return input.checked;
  if (kind === "enum") return JSON.parse(input.value);
  const text = input.value;
  if (text === "") return undefined;
  if (kind === "integer" || kind === "number") {
    // Sent as typed when it is not a number: the server's validation says what is wrong.
    const number = Number(text);
    return text.trim() !== "" && Number.isFinite(number) ? number : text;
  }
  if (kind === "json") {
    try { return JSON.parse(text); } catch (e) { return text; }
  }
  return text;
}

function runForm() {
  const form = document.getElementById("run-form");
  if (!form) return;
  const schema = JSON.parse(document.getElementById("parameter-schema").textContent || "{}");
  const defaults = JSON.parse(document.getElementById("parameter-defaults").textContent || "{}");
  const fields = document.getElementById("run-fields");
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  for (const [name, property] of Object.entries(properties)) {
    const value = name in defaults ? defaults[name] : property.default;
    fields.append(field(name, property, value, required.has(name)));
  }
  if (!Object.keys(properties).length) {
    fields.innerHTML = '<p class="muted">This flow takes no parameters.</p>';
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const parameters = {};
    for (const input of fields.querySelectorAll("input, select, textarea")) {
      const value = readField(input);
      if (value !== undefined) parameters[input.name] = value;
    }
    const error = document.getElementById("run-error");
    error.textContent = "";
    const result = await postJSON(`/api/v1/deployments/${encodeURIComponent(form.dataset.deployment)}/runs`, { parameters });
    if (result.ok) location.assign(`/runs/${result.data.run.id}`);
    else error.textContent = errorText(result);
  });
  for (const button of document.querySelectorAll("button.pause")) {
    button.addEventListener("click", async () => {
      const body = { paused: button.dataset.paused !== "yes" };
      if (button.dataset.schedule) body.schedule = button.dataset.schedule;
      const result = await postJSON(`/api/v1/deployments/${encodeURIComponent(button.dataset.deployment)}/pause`, body);
      if (result.ok) location.reload();
      else document.getElementById("pause-error").textContent = errorText(result);
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  liveRunsList();
  liveRun();
  runForm();
});
