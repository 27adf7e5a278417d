// app.js: the console's views, drawn from sbx serve's JSON API (/api/).
//
// One page, one view per location hash (#/runs, #/run/ID, #/slots, #/lag,
// #/dlq), so the server serves three static files and no route of its own.
// Live parts follow /api/feed (Server-Sent Events): the runs list on every
// status change, a run's page on its changes and log chunks.
//
// Rules this file keeps:
// - Data is written into the page only as text (textContent, text nodes,
//   setAttribute of names we chose); never innerHTML. A job id or a log line
//   holding markup shows as that markup.
// - The operator token lives in this tab's sessionStorage and goes out only
//   as the X-Sbx-Token header of an action (POST); no cookie is ever set.
"use strict";

const TERMINAL = ["succeeded", "failed", "timed_out", "canceled", "dead_lettered"];
const STATUSES = ["submitted", "queued", "waiting_capacity", "provisioning", "running"].concat(TERMINAL);
const TOKEN_KEY = "sbx-console-token";
// The log pane keeps at most this many characters; older text is dropped
// from the top (the whole log stays in PostgreSQL and /api/runs/ID/logs).
const LOG_KEEP = 2000000;
const REFRESH_MS = 3000;
// Rows the runs list keeps as runs arrive (it loads 200).
const LIST_KEEP = 500;

let config = { actions: false, version: "" };
let cleanup = [];

// ---- small helpers ----

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function pill(state) {
  const s = String(state || "-");
  return el("span", { class: "pill" + (/^[a-z_]+$/.test(s) ? " st-" + s : "") }, s);
}

function when(ts) {
  if (!ts) return "-";
  const d = new Date(ts);
  if (isNaN(d)) return String(ts);
  const age = (Date.now() - d.getTime()) / 1000;
  const rel = age < 0 ? "" : age < 60 ? Math.round(age) + "s ago" : age < 3600
    ? Math.round(age / 60) + "m ago" : age < 86400 ? Math.round(age / 3600) + "h ago"
    : Math.round(age / 86400) + "d ago";
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") + (rel ? " (" + rel + ")" : "");
}

// A duration in ms as a person reads it.
function span(ms) {
  const s = ms / 1000;
  return s < 120 ? s.toFixed(1) + " s" : s < 7200 ? Math.round(s / 60) + " min"
    : s < 172800 ? Math.round(s / 3600) + " h" : Math.round(s / 86400) + " d";
}

function runLink(id) {
  return el("a", { href: "#/run/" + encodeURIComponent(id) }, id);
}

function notice(text, error) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = "notice" + (error ? " error" : "");
  n.hidden = !text;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ cache: "no-store" }, opts || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = new Error((body && (body.error || body.message)) || ("HTTP " + r.status));
    err.status = r.status;
    err.body = body;
    throw err;
  }
  return body;
}

// A table; columns [label, cell(row) -> Node|string, className]. Under
// 700px wide it shows one card per row (style.css), labels from data-label.
function table(columns, rows, empty, plain) {
  const head = el("tr", {}, columns.map(([label, , cls]) => el("th", { class: cls }, label)));
  const body = el("tbody");
  for (const row of rows) body.append(tableRow(columns, row));
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { class: "empty muted", colspan: columns.length },
                                    empty || "Nothing here.")));
  }
  return el("table", { class: plain ? "plain" : "cards" }, el("thead", {}, head), body);
}

function tableRow(columns, row) {
  // One child per cell: on a phone the cell is a flex row of its label
  // (::before) and this.
  return el("tr", {}, columns.map(([label, cell, cls]) =>
    el("td", { class: cls, "data-label": label }, el("div", { class: "v" }, cell(row)))));
}

function every(ms, fn) {
  fn();
  const t = setInterval(fn, ms);
  cleanup.push(() => clearInterval(t));
}

// An EventSource whose state shows in `badge` (a .live element).
function feed(url, handlers, badge) {
  const es = new EventSource(url);
  es.onopen = () => {
    if (badge) { badge.classList.add("on"); badge.textContent = "live"; }
    if (handlers.open) handlers.open();
  };
  es.onerror = () => {
    if (badge) { badge.classList.remove("on"); badge.textContent = "reconnecting"; }
  };
  for (const [name, fn] of Object.entries(handlers)) {
    if (name !== "open") es.addEventListener(name, (ev) => fn(JSON.parse(ev.data), ev));
  }
  cleanup.push(() => es.close());
  return es;
}

// ---- actions (operator token) ----

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function act(path, what) {
  const headers = {};
  if (token()) headers["X-Sbx-Token"] = token();
  try {
    const r = await api(path, { method: "POST", headers });
    notice(what + ": " + (r.message || "done").trim(), false);
    return true;
  } catch (e) {
    notice(what + ": " + String((e.body && e.body.message) || e.message).trim(), true);
    return false;
  }
}

function replayButton(d, after) {
  // What sbx dlq replay refuses is not offered: no original kept, or a job
  // whose run is not dead_lettered (a job id runs once).
  const stuck = d.run_status && d.run_status !== "dead_lettered";
  return el("button", {
    type: "button", class: "action", disabled: !d.replayable || stuck,
    title: !d.replayable ? "no original kept (the message was too large)"
      : stuck ? "its job is " + d.run_status + "; a job id runs once"
      : "publish the original message again",
    onclick: async () => { await act("/api/dead-letters/" + d.id + "/replay",
                                     "Replay of dead letter " + d.id); after(); },
  }, "Replay");
}

function cancelButton(jobId, status, after) {
  return el("button", {
    type: "button", class: "danger", disabled: TERMINAL.includes(status),
    onclick: async () => {
      if (!confirm("Cancel job " + jobId + "?")) return;
      await act("/api/runs/" + encodeURIComponent(jobId) + "/cancel", "Cancel of " + jobId);
      after();
    },
  }, "Cancel");
}

function setupToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const toggle = document.getElementById("token-toggle");
  const show = () => {
    toggle.classList.toggle("set", !!token());
    toggle.textContent = token() ? "Token set" : "Token";
  };
  toggle.addEventListener("click", () => { form.hidden = !form.hidden; if (!form.hidden) input.focus(); });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    input.value = "";
    form.hidden = true;
    show();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    form.hidden = true;
    show();
  });
  show();
}

// ---- views ----

function viewRuns(view, params) {
  const f = { project: params.get("project") || "", status: params.get("status") || "",
              since: params.get("since") || "" };
  const badge = el("span", { class: "live" }, "connecting");
  const apply = () => {
    const q = new URLSearchParams();
    for (const k of ["project", "status", "since"]) if (form[k].value) q.set(k, form[k].value);
    location.hash = "#/runs" + (q.toString() ? "?" + q : "");
  };
  const form = el("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); apply(); } },
    el("label", {}, "Project", el("input", { name: "project", value: f.project, size: 14 })),
    el("label", {}, "Status", el("select", { name: "status", onchange: apply },
      el("option", { value: "" }, "any"),
      STATUSES.map((s) => el("option", { value: s, selected: s === f.status }, s)))),
    el("label", {}, "Since", el("select", { name: "since", onchange: apply },
      [["", "any time"], ["15m", "15 minutes"], ["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]]
        .map(([v, t]) => el("option", { value: v, selected: v === f.since }, t)))),
    el("button", { type: "submit" }, "Filter"), badge);
  const holder = el("div", {}, el("p", { class: "muted" }, "Loading..."));
  view.append(el("h1", {}, "Runs"), form, holder);

  const columns = [
    ["Job", (r) => runLink(r.job_id)],
    ["Project", (r) => r.project_id],
    ["Status", (r) => [pill(r.status), r.cancel_requested && !TERMINAL.includes(r.status)
                       ? el("span", { class: "muted" }, " cancel requested") : null]],
    ["Attempt", (r) => String(r.attempt), "num"],
    ["Provider", (r) => [r.provider || "-", r.slot ? el("span", { class: "muted" }, " " + r.slot) : null]],
    ["Updated", (r) => when(r.updated_at)],
  ];
  const rows = new Map();
  let tbody = null;
  const matches = (r) => (!f.project || r.project_id === f.project) && (!f.status || r.status === f.status);
  const load = async () => {
    const q = new URLSearchParams();
    for (const k of ["project", "status", "since"]) if (f[k]) q.set(k, f[k]);
    q.set("limit", "200");
    try {
      const runs = await api("/api/runs?" + q);
      const t = table(columns, runs, "No runs match.");
      tbody = t.querySelector("tbody");
      rows.clear();
      runs.forEach((r, i) => {
        tbody.children[i].setAttribute("data-job", r.job_id);
        rows.set(r.job_id, tbody.children[i]);
      });
      holder.replaceChildren(t);
    } catch (e) {
      holder.replaceChildren(el("p", { class: "notice error" }, "Could not load runs: " + e.message));
    }
  };
  feed("/api/feed", {
    open: load,
    run: (r) => {
      if (!tbody) return;
      const old = rows.get(r.job_id);
      if (!matches(r)) {
        if (old) { old.remove(); rows.delete(r.job_id); }
        return;
      }
      const tr = tableRow(columns, r);
      tr.setAttribute("data-job", r.job_id);
      if (old) old.replaceWith(tr);
      else {
        const empty = tbody.querySelector("td.empty");
        if (empty) empty.parentElement.remove();
        tbody.prepend(tr);
      }
      rows.set(r.job_id, tr);
      // A busy queue does not grow the page without end: the oldest go.
      while (tbody.children.length > LIST_KEEP) {
        const last = tbody.lastElementChild;
        rows.delete(last.getAttribute("data-job"));
        last.remove();
      }
    },
  }, badge);
}

function viewRun(view, id) {
  const badge = el("span", { class: "live" }, "connecting");
  const head = el("div", { class: "run-head" }, el("h1", {}, id));
  const fields = el("dl", { class: "fields" });
  const history = el("div");
  const log = el("pre", { class: "log", id: "log", "aria-label": "log" });
  const tail = el("div");
  view.append(head, fields, el("h2", {}, "Log ", badge), log, tail,
              el("h2", {}, "History"), history);
  let run = null, cursor = { attempt: 0, seq: -1 }, shownAttempt = null, anyLog = false, logChars = 0;

  const drawRun = (r) => {
    run = Object.assign(run || {}, r);
    const actions = el("div", { class: "row-actions" });
    if (config.actions) actions.append(cancelButton(run.job_id, run.status, refresh));
    head.replaceChildren(el("h1", {}, run.job_id), pill(run.status), actions);
    const preview = run.preview_url && /^https?:\/\//i.test(run.preview_url)
      ? el("a", { href: run.preview_url, rel: "noopener noreferrer", target: "_blank" }, run.preview_url)
      : (run.preview_url || "-");
    const pairs = [
      ["Project", el("a", { href: "#/runs?project=" + encodeURIComponent(run.project_id) }, run.project_id)],
      ["Attempt", String(run.attempt)],
      ["Provider", run.provider || "-"], ["Slot", run.slot || "-"], ["Instance", run.instance || "-"],
      ["Exit code", run.exit_code === null || run.exit_code === undefined ? "-" : String(run.exit_code)],
      ["Error", run.error || "-"], ["Preview", preview],
      ["Cancel requested", run.cancel_requested ? "yes" : "no"],
      ["Created", when(run.created_at)], ["Started", when(run.started_at)],
      ["Finished", when(run.finished_at)], ["Updated", when(run.updated_at)],
    ];
    fields.replaceChildren(...pairs.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
    if (!anyLog && run.log_tail && TERMINAL.includes(run.status)) {
      tail.replaceChildren(el("h2", {}, "Log tail (kept with the run)"),
                           el("pre", { class: "log" }, run.log_tail));
    }
  };
  // One line per transition, oldest first: short enough for a phone.
  const drawHistory = (events) => {
    if (!events || !events.length) {
      history.replaceChildren(el("p", { class: "muted" }, "No transitions yet."));
      return;
    }
    history.replaceChildren(el("ol", { class: "events" }, events.map((e) => el("li", {},
      el("span", { class: "at muted" }, when(e.at)), " ",
      e.from_status ? pill(e.from_status) : el("span", { class: "muted" }, "(new)"),
      " \u2192 ", pill(e.to_status),
      e.detail ? el("span", { class: "detail" }, " " + e.detail) : null))));
  };
  const append = (chunks) => {
    const near = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    for (const c of chunks) {
      if (c.attempt < cursor.attempt || (c.attempt === cursor.attempt && c.seq <= cursor.seq)) continue;
      cursor = { attempt: c.attempt, seq: c.seq };
      if (shownAttempt !== c.attempt) {
        if (shownAttempt !== null || c.attempt > 1) {
          log.append(el("span", { class: "attempt" }, "attempt " + c.attempt));
        }
        shownAttempt = c.attempt;
      }
      const cls = /^(stdout|stderr|sbx)$/.test(c.stream) ? c.stream : "stdout";
      log.append(el("span", { class: cls, title: c.at }, c.data));
      logChars += c.data.length;
      anyLog = true;
    }
    while (logChars > LOG_KEEP && log.firstChild) {
      logChars -= log.firstChild.textContent.length;
      log.firstChild.remove();
    }
    if (anyLog) tail.replaceChildren();
    if (near) log.scrollTop = log.scrollHeight;
  };
  const refresh = async () => {
    try {
      const r = await api("/api/runs/" + encodeURIComponent(id));
      drawRun(r);
      drawHistory(r.events);
    } catch (e) {
      if (e.status === 404) head.replaceChildren(el("h1", {}, id), el("span", { class: "muted" }, "no such job (yet)"));
      else notice("Could not load the run: " + e.message, true);
    }
  };
  const start = async () => {
    await refresh();
    // The log so far, page by page, then the feed from where it ended.
    try {
      for (;;) {
        const q = new URLSearchParams({ attempt: cursor.attempt, after: cursor.seq, limit: 2000 });
        const chunks = await api("/api/runs/" + encodeURIComponent(id) + "/logs?" + q);
        append(chunks);
        if (chunks.length < 2000) break;
      }
    } catch (e) {
      notice("Could not load the log: " + e.message, true);
    }
    const q = new URLSearchParams({ job: id, attempt: cursor.attempt, after: cursor.seq });
    feed("/api/feed?" + q, {
      run: () => refresh(),
      log: (chunks) => append(chunks),
    }, badge);
  };
  start();
}

function viewSlots(view) {
  const holder = el("div", {}, el("p", { class: "muted" }, "Loading..."));
  view.append(el("h1", {}, "Slots and agents"), holder);
  every(REFRESH_MS, async () => {
    try {
      const s = await api("/api/slots");
      const parts = [];
      if (!s.pools.length) parts.push(el("p", { class: "muted" }, "No pool has registered slots."));
      for (const p of s.pools) {
        parts.push(el("h2", {}, "Pool " + p.pool + " ",
                      el("span", { class: "muted" }, p.free + " free of " + p.total +
                         (p.truncated ? " (first " + p.slots.length + " shown)" : ""))));
        parts.push(table([
          ["Slot", (x) => x.slot],
          ["State", (x) => pill(x.state)],
          ["Job", (x) => x.job ? runLink(x.job) : "-"],
          ["Project", (x) => x.project || "-"],
          ["Worker", (x) => x.worker || "-"],
          ["Lease left", (x) => x.expires_in_ms === null || x.expires_in_ms === undefined ? "-"
            : x.expires_in_ms < 0 ? "expired" : span(x.expires_in_ms), "num"],
        ], p.slots, "No slots."));
      }
      parts.push(el("h2", {}, "Agents (vmpool)"));
      parts.push(table([
        ["VM", (a) => a.vm],
        ["State", (a) => pill(a.state)],
        ["Capacity", (a) => a.capacity === null ? "-" : String(a.capacity), "num"],
        ["Heartbeat", (a) => a.heartbeat_age_ms === null ? "-"
          : span(a.heartbeat_age_ms) + " ago" +
            (a.ttl_ms !== null && a.heartbeat_age_ms > a.ttl_ms ? " (late: past its TTL)" : "")],
        ["Labels", (a) => a.labels || "-"],
        ["Address", (a) => a.base_url || "-"],
      ], s.agents, "No agents registered."));
      holder.replaceChildren(...parts);
    } catch (e) {
      holder.replaceChildren(el("p", { class: "notice error" }, "Could not read Redis: " + e.message));
    }
  });
}

function viewLag(view) {
  const holder = el("div", {}, el("p", { class: "muted" }, "Loading..."));
  view.append(el("h1", {}, "Consumer lag"), holder);
  every(REFRESH_MS, async () => {
    try {
      const l = await api("/api/lag");
      const max = Math.max(1, ...l.partitions.map((p) => p.lag));
      holder.replaceChildren(
        el("p", {}, "Group ", el("b", {}, l.group), " on topic ", el("b", {}, l.topic), ": ",
           el("b", { id: "total-lag" }, String(l.total_lag)), " message" + (l.total_lag === 1 ? "" : "s") + " behind."),
        table([
          ["Partition", (p) => String(p.partition), "num"],
          ["Committed", (p) => p.committed === null ? "none" : String(p.committed), "num"],
          ["End", (p) => String(p.high), "num"],
          ["Lag", (p) => String(p.lag), "num"],
          ["", (p) => {
            // CSSOM, not a style attribute: the page's CSP allows no inline style.
            const fill = el("span");
            fill.style.width = Math.round(100 * p.lag / max) + "%";
            return el("div", { class: "bar" }, fill);
          }],
        ], l.partitions, "The topic has no partitions.", true));
    } catch (e) {
      holder.replaceChildren(el("p", { class: "notice error" }, "Could not read Kafka: " + e.message));
    }
  });
}

function viewDlq(view) {
  const holder = el("div", {}, el("p", { class: "muted" }, "Loading..."));
  view.append(el("h1", {}, "Dead letters"),
              el("p", { class: "muted" }, config.actions
                ? "Replay publishes the original message again (after you fixed its cause); " +
                  "both buttons need the operator token."
                : "This console is read-only (sbx serve runs without SBX_CONSOLE_TOKEN)."),
              holder);
  const load = async () => {
    try {
      const rows = await api("/api/dead-letters?limit=200");
      holder.replaceChildren(table([
        ["Id", (d) => String(d.id), "num"],
        ["Time", (d) => when(d.created_at)],
        ["Reason", (d) => [d.reason, d.detail ? el("div", { class: "muted" }, d.detail) : null]],
        ["Job", (d) => d.job_id ? runLink(d.job_id) : "-"],
        ["Run", (d) => d.run_status ? pill(d.run_status) : "-"],
        ["Replays", (d) => String(d.replays), "num"],
        ["", (d) => config.actions ? el("div", { class: "row-actions" }, replayButton(d, load),
          d.job_id && d.run_status ? cancelButton(d.job_id, d.run_status, load) : null) : ""],
      ], rows, "No dead letters."));
    } catch (e) {
      holder.replaceChildren(el("p", { class: "notice error" }, "Could not load dead letters: " + e.message));
    }
  };
  every(10000, load);
}

// ---- routing ----

function route() {
  for (const fn of cleanup) fn();
  cleanup = [];
  notice("");
  const hash = location.hash || "#/runs";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const view = document.getElementById("view");
  view.replaceChildren();
  const parts = path.split("/").filter(Boolean);
  const name = parts[0] || "runs";
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.view === (name === "run" ? "runs" : name));
  }
  if (name === "run" && parts[1]) viewRun(view, decodeURIComponent(parts.slice(1).join("/")));
  else if (name === "slots") viewSlots(view);
  else if (name === "lag") viewLag(view);
  else if (name === "dlq") viewDlq(view);
  else viewRuns(view, params);
}

async function main() {
  setupToken();
  try {
    config = await api("/api/config");
  } catch (e) {
    notice("Could not reach sbx serve: " + e.message, true);
  }
  document.getElementById("footer").textContent = (config.version || "sbx serve") +
    (config.actions ? "" : " - read-only");
  window.addEventListener("hashchange", route);
  route();
}

main();
