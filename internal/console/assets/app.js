// orchestrate console: plain JavaScript, no framework, nothing fetched from
// elsewhere. The page keeps one View from the console's event stream and
// draws the page its path names. Every piece of data goes into the DOM as
// text (never as HTML).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const STEPS = ["Planned", "Checkpointing", "Transferring", "Restoring", "Confirming", "Done"];
const CATEGORIES = ["spot", "maintenance", "reboot", "rebalance", "evacuation", "drain", "snapshot", "other"];

const state = {
  view: null,
  tick: null,
  tickSeen: 0,    // performance.now() of the last tick
  connected: false,
  open: new Set(),  // expanded migration rows
  eventFilter: "all",
  window: 25,     // downtime chart: last N
};

// ---- DOM helpers ---------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v; // CSSOM: allowed by the console's CSP, unlike a style attribute
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  append(e, kids);
  return e;
}
function append(e, kids) {
  for (const k of kids.flat()) {
    if (k === undefined || k === null || k === false) continue;
    e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  append(e, kids);
  return e;
}
function pill(text, kind) { return el("span", { class: "pill " + (kind || "") }, text); }

// ---- formatting ----------------------------------------------------------

function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + u[i];
}
function dur(msv) {
  if (msv === undefined || msv === null) return "–";
  if (msv < 1000) return Math.round(msv) + " ms";
  if (msv < 60000) return (msv / 1000).toFixed(msv < 10000 ? 2 : 1) + " s";
  const m = Math.floor(msv / 60000), s = Math.round((msv % 60000) / 1000);
  return m + "m " + s + "s";
}
function isSet(t) { return t && !t.startsWith("0001-"); }
function clock(t) {
  if (!isSet(t)) return "–";
  const d = new Date(t);
  return d.toLocaleTimeString([], { hour12: false });
}
function stamp(t) {
  if (!isSet(t)) return "–";
  const d = new Date(t);
  const today = new Date();
  const day = d.toDateString() === today.toDateString() ? "" : d.toLocaleDateString() + " ";
  return day + d.toLocaleTimeString([], { hour12: false });
}
function now() {
  // The console's clock, as of the last tick, moved on by the time since.
  if (state.tick) return new Date(state.tick.at).getTime() + (performance.now() - state.tickSeen);
  return Date.now();
}
function ago(t) {
  if (!isSet(t)) return "–";
  const s = Math.max(0, (now() - new Date(t).getTime()) / 1000);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function statusKind(s) {
  return { alive: "ok", suspect: "warn", dead: "bad", left: "" }[s] || "";
}
function phaseKind(m) {
  if (m.phase === "Done") return "ok";
  if (m.failed) return "bad";
  return "info";
}

// ---- server calls --------------------------------------------------------

async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Orchestrate-CSRF": csrf },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { /* empty body */ }
  if (!resp.ok) throw new Error((data && data.error) || resp.status + " " + resp.statusText);
  return data;
}

function toast(text, bad) {
  const t = el("div", { class: "toast" + (bad ? " bad" : ""), role: "status" }, text);
  document.getElementById("toasts").appendChild(t);
  setTimeout(() => t.remove(), bad ? 9000 : 5000);
}

// ---- confirmation dialog -------------------------------------------------

const modal = {
  // open shows the dialog; danger paints the confirm button red (drains).
  open(title, body, confirmText, onConfirm, danger) {
    document.getElementById("modal-title").textContent = title;
    const b = document.getElementById("modal-body");
    b.replaceChildren(...[body].flat());
    const ok = document.getElementById("modal-confirm");
    ok.textContent = confirmText;
    ok.className = "btn " + (danger ? "danger" : "primary");
    ok.disabled = false;
    ok.onclick = async () => {
      ok.disabled = true;
      try {
        await onConfirm();
        modal.close();
      } catch (e) {
        ok.disabled = false;
        b.appendChild(el("p", { class: "banner bad" }, e.message));
      }
    };
    document.getElementById("modal").hidden = false;
    ok.focus();
  },
  close() {
    document.getElementById("modal").hidden = true;
    document.getElementById("modal-body").replaceChildren();
  },
};
document.getElementById("modal-cancel").addEventListener("click", () => modal.close());
document.getElementById("modal").addEventListener("click", (e) => { if (e.target.id === "modal") modal.close(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") modal.close(); });

function confirmDrain(host) {
  const deadline = el("input", { type: "number", id: "drain-deadline", min: "1", max: "1440", value: "5" });
  const parallel = el("input", { type: "number", id: "drain-parallel", min: "1", max: "32", value: "2" });
  const plan = el("div", {}, el("p", { class: "note" }, "Planning…"));
  modal.open("Drain " + host + "?", [
    el("p", {}, "The host is cordoned (nothing new lands on it) and every running container on it is live-migrated to another host. ",
      "A container that fails to move keeps running on " + host + "."),
    el("div", { class: "row" },
      el("div", {}, el("label", { for: "drain-deadline" }, "Start no migration after (minutes)"), deadline),
      el("div", {}, el("label", { for: "drain-parallel" }, "Migrations at a time"), parallel)),
    el("label", {}, "Plan"), plan,
  ], "Drain " + host, async () => {
    const res = await post("/api/drain", { host, deadline_seconds: Math.round(+deadline.value * 60), parallel: +parallel.value });
    const n = res.moves.filter((m) => m.migration).length;
    toast("Draining " + host + ": " + n + " migration" + (n === 1 ? "" : "s") + " started");
  }, true);
  post("/api/drain", { host, dry_run: true }).then((res) => {
    if (!res.moves.length) {
      plan.replaceChildren(el("p", { class: "note" }, "Nothing runs on " + host + ": it will only be cordoned."));
      return;
    }
    plan.replaceChildren(el("ul", { class: "plan" }, res.moves.map((m) =>
      el("li", {}, el("span", {}, m.name || m.container),
        m.skipped ? el("span", { class: "tag" }, "stays: " + m.skipped) : el("span", { class: "tag" }, "→ " + m.to)))));
  }).catch((e) => plan.replaceChildren(el("p", { class: "banner warn" }, "Could not plan: " + e.message)));
}

function confirmMigrate(c) {
  const v = state.view;
  const targets = v.hosts.filter((h) => h.name !== c.host && h.status === "alive" && !h.cordoned);
  const sel = el("select", { id: "migrate-to" },
    el("option", { value: "" }, "the leader's choice"),
    targets.map((h) => el("option", { value: h.name }, h.name)));
  modal.open("Migrate " + c.name + "?", [
    el("p", {}, c.name + " is checkpointed on " + c.host + " (it freezes for the downtime), streamed to the target and restored there with its memory. ",
      "On any failure before the target confirms, it resumes on " + c.host + "."),
    el("label", { for: "migrate-to" }, "Target host"), sel,
  ], "Migrate " + c.name, async () => {
    const res = await post("/api/migrate", { container: c.name, to: sel.value });
    toast("Migrating " + c.name + ": " + res.from + " → " + res.to);
  });
}

function confirmCordon(host, on) {
  const verb = on ? "Cordon" : "Uncordon";
  modal.open(verb + " " + host + "?", [
    el("p", {}, on
      ? "Nothing will migrate onto " + host + " until it is uncordoned. Containers already on it keep running."
      : host + " becomes a target for migrations again."),
  ], verb + " " + host, async () => {
    await post(on ? "/api/cordon" : "/api/uncordon", { host });
    toast(host + (on ? " cordoned" : " uncordoned"));
  });
}

// ---- pages ---------------------------------------------------------------

function page() {
  const p = location.pathname.replace(/^\/+/, "").split("/")[0];
  return ["hosts", "containers", "migrations", "events", "downtime", "snapshots"].includes(p) ? p : "hosts";
}

function problems(v) {
  if (!v.problems || !v.problems.length) return null;
  return el("div", { class: "banner warn" }, "Some of the cluster's state could not be read:",
    el("ul", {}, v.problems.map((p) => el("li", {}, p))));
}

function header(title, sub) {
  return [el("h1", {}, title), el("p", { class: "sub" }, sub)];
}

function card(label, value, extra, bad) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
    el("div", { class: "value" + (bad ? " bad" : "") }, value, extra ? el("small", {}, " " + extra) : null));
}

function table(cols, rows, emptyText) {
  if (!rows.length) return el("div", { class: "panel" }, el("div", { class: "empty" }, emptyText));
  return el("div", { class: "panel" }, el("table", {},
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", { class: c.startsWith("#") ? "num" : "" }, c.replace(/^#/, ""))))),
    el("tbody", {}, rows)));
}

const pages = {
  hosts(v) {
    const alive = v.hosts.filter((h) => h.status === "alive").length;
    const cordoned = v.hosts.filter((h) => h.cordoned).length;
    const ctrs = v.hosts.reduce((n, h) => n + h.containers, 0);
    const rows = v.hosts.map((h) => {
      const used = h.memory_total ? h.memory_used / h.memory_total : 0;
      return el("tr", { "data-host": h.name },
        el("td", {}, el("b", {}, h.name), el("div", { class: "tag mono" }, h.addr)),
        el("td", {}, pill(h.status, statusKind(h.status)), el("div", { class: "tag" }, "since " + ago(h.since))),
        el("td", {}, h.role === "leader" ? pill("leader", "info") : el("span", { class: "muted" }, h.role || "–")),
        el("td", {}, h.cordoned ? pill(draining(v, h) ? "draining" : "cordoned", "warn") : el("span", { class: "muted" }, "schedulable"),
          h.reason ? el("div", { class: "tag wrap" }, h.reason) : null),
        el("td", {}, h.engine || "–", el("div", { class: "tag" }, h.criu ? "CRIU " + h.criu : "no CRIU")),
        el("td", { class: "mono" }, h.kernel || "–"),
        el("td", { class: "num" }, h.cpus || "–"),
        el("td", {}, el("div", { class: "mem" },
          el("div", { class: "bar" }, el("span", { class: used > 0.85 ? "hot" : "", style: "width:" + Math.round(used * 100) + "%" })),
          el("span", { class: "tag" }, bytes(h.memory_used) + " / " + bytes(h.memory_total)))),
        el("td", { class: "num" }, h.containers),
        el("td", { class: "actions" },
          h.cordoned
            ? el("button", { class: "btn", onclick: () => confirmCordon(h.name, false) }, "Uncordon")
            : el("button", { class: "btn", onclick: () => confirmCordon(h.name, true) }, "Cordon"),
          el("button", { class: "btn", "data-action": "drain", disabled: h.status !== "alive", onclick: () => confirmDrain(h.name) }, "Drain…")));
    });
    return [
      header("Hosts", "Every member of the cluster as gossip sees it, with its raft role and whether migrations may land on it."),
      el("div", { class: "cards" },
        card("Hosts alive", alive, "of " + v.hosts.length, alive < v.hosts.length),
        card("Leader", v.leader || "none", v.leader ? "term " + v.term : "", !v.leader),
        card("Containers", ctrs),
        card("Cordoned", cordoned)),
      table(["Host", "Status", "Role", "Scheduling", "Engine", "Kernel", "#CPUs", "Memory", "#Containers", ""], rows, "No members known."),
    ];
  },

  containers(v) {
    const byHost = new Map();
    for (const h of v.hosts) byHost.set(h.name, []);
    for (const c of v.containers) {
      if (!byHost.has(c.host)) byHost.set(c.host, []);
      byHost.get(c.host).push(c);
    }
    const hostInfo = new Map(v.hosts.map((h) => [h.name, h]));
    const rows = [];
    for (const [host, cs] of byHost) {
      const h = hostInfo.get(host) || {};
      rows.push(el("tr", { class: "group" },
        el("td", { colspan: "5" }, host, " ",
          el("span", { class: "muted" }, "· " + cs.length + " container" + (cs.length === 1 ? "" : "s") + (h.cordoned ? " · cordoned" : ""))),
        el("td", { class: "actions" },
          el("button", { class: "btn", "data-action": "drain", disabled: h.status !== "alive", onclick: () => confirmDrain(host) }, "Drain " + host + "…"))));
      for (const c of cs) {
        const running = c.state === "running";
        rows.push(el("tr", { "data-container": c.name },
          el("td", {}, el("b", {}, c.name)),
          el("td", { class: "mono" }, c.id),
          el("td", { class: "mono" }, c.image),
          el("td", {}, pill(c.state, running ? "ok" : "")),
          el("td", {}, c.moving ? el("span", {}, pill("moving", "info"), " → " + c.move_to) : el("span", { class: "muted" }, "–")),
          el("td", { class: "actions" },
            el("button", { class: "btn", "data-action": "migrate", disabled: !running || !!c.moving, onclick: () => confirmMigrate(c) }, "Migrate…"))));
      }
      if (!cs.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "No containers.")));
    }
    return [
      header("Containers", "Containers on every alive host, listed by their agents. Migrate one, or drain a whole host."),
      table(["Name", "ID", "Image", "State", "Migration", ""], rows, "No hosts."),
    ];
  },

  migrations(v) {
    const flying = v.migrations.filter((m) => !m.ended);
    const done = v.migrations.filter((m) => m.phase === "Done").length;
    const rolled = v.migrations.filter((m) => m.phase === "RolledBack").length;
    const out = [
      header("Migrations", "Every migration the leader recorded, newest first: its phases, the container's downtime and the bytes moved."),
      el("div", { class: "cards" },
        card("In flight", flying.length),
        card("Done", done),
        card("Rolled back", rolled, null, rolled > 0),
        card("Median downtime", v.downtime.points.length ? dur(v.downtime.median_ms) : "–", v.downtime.points.length ? "last " + v.downtime.points.length : "")),
    ];
    if (flying.length) {
      out.push(el("h2", {}, "In flight"));
      out.push(el("div", { class: "flight" }, flying.map(flightCard)));
    }
    out.push(el("h2", {}, "All migrations"));
    const rows = [];
    for (const m of v.migrations) {
      const open = state.open.has(m.id);
      const took = isSet(m.finished) ? new Date(m.finished) - new Date(m.started) : now() - new Date(m.started);
      rows.push(el("tr", { class: "clickable", "data-migration": m.id, "data-phase": m.phase, onclick: () => { open ? state.open.delete(m.id) : state.open.add(m.id); render(); } },
        el("td", {}, el("b", {}, m.name), el("div", { class: "tag mono" }, m.id)),
        el("td", { class: "nowrap" }, m.from + " → " + m.to),
        el("td", {}, pill(m.phase, phaseKind(m)), m.error ? el("div", { class: "err" }, m.error) : null),
        el("td", {}, steps(m)),
        el("td", {}, stamp(m.started)),
        el("td", { class: "num" }, dur(took)),
        el("td", { class: "num" }, m.downtime_ms ? dur(m.downtime_ms) : "–"),
        el("td", { class: "num" }, m.bytes ? bytes(m.bytes) : "–"),
        el("td", {}, [m.method, m.compression].filter(Boolean).join(", ") || "–")));
      if (open) rows.push(el("tr", { class: "detail" }, el("td", { colspan: "9" }, phaseHistory(m))));
    }
    out.push(table(["Container", "Route", "Phase", "Progress", "Started", "#Took", "#Downtime", "#Bytes", "Transfer"], rows, "No migrations yet. Drain a host or migrate a container to see one here."));
    return out;
  },

  events(v) {
    const f = state.eventFilter;
    const evs = f === "all" ? v.events : v.events.filter((e) => e.category === f);
    const chips = el("div", { class: "chips" },
      el("button", { class: "chip" + (f === "all" ? " on" : ""), onclick: () => { state.eventFilter = "all"; render(); } }, "All", el("span", { class: "n" }, v.events.length)),
      CATEGORIES.map((c) => el("button", { class: "chip" + (f === c ? " on" : ""), onclick: () => { state.eventFilter = c; render(); } },
        c, el("span", { class: "n" }, v.triggers[c] || 0))));
    const kind = { spot: "bad", maintenance: "warn", reboot: "warn", rebalance: "info", evacuation: "info", drain: "info", snapshot: "ok" };
    const rows = evs.map((e) => el("tr", {},
      el("td", { class: "mono" }, stamp(e.at)),
      el("td", {}, pill(e.category, kind[e.category])),
      el("td", { class: "mono" }, e.kind),
      el("td", {}, e.host || "–"),
      el("td", {}, e.action || "–"),
      el("td", {}, e.result || e.message || "–", e.source ? el("div", { class: "tag" }, "source: " + e.source) : null),
      el("td", {}, e.deadline ? stamp(e.deadline) : "–")));
    return [
      header("Events & triggers", "The replicated event log: spot and maintenance notices, pending reboots, rebalancing, the evacuations they caused, and drains asked for from the CLI, this console or a reboot."),
      el("div", { class: "cards" },
        card("Spot notices", v.triggers.spot || 0), card("Maintenance", v.triggers.maintenance || 0),
        card("Reboots", v.triggers.reboot || 0), card("Rebalancing", v.triggers.rebalance || 0)),
      chips,
      table(["Time", "Category", "Kind", "Host", "Action", "Result", "Deadline"], rows, "No events" + (f === "all" ? " yet." : " of this kind.")),
    ];
  },

  downtime(v) {
    const all = v.downtime.points;
    const pts = all.slice(-state.window);
    const sorted = pts.map((p) => p.downtime_ms).sort((a, b) => a - b);
    const q = (x) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(sorted.length * x) - 1))] : 0;
    const med = q(0.5), p95 = q(0.95), mx = sorted.length ? sorted[sorted.length - 1] : 0;
    const chips = el("div", { class: "chips" }, [10, 25, 50].map((n) => el("button", {
      class: "chip" + (state.window === n ? " on" : ""), onclick: () => { state.window = n; render(); },
    }, "last " + n)));
    return [
      header("Downtime", "How long each container was frozen: from the checkpoint's start on the source until it ran on the target, for the last migrations that finished."),
      chips,
      el("div", { class: "cards" },
        card("Migrations", pts.length), card("Median", pts.length ? dur(med) : "–"),
        card("95th percentile", pts.length ? dur(p95) : "–"), card("Worst", pts.length ? dur(mx) : "–")),
      pts.length ? chart(pts, med, p95) : el("div", { class: "panel" }, el("div", { class: "empty" }, "No finished migrations yet.")),
      pts.length ? table(["Finished", "Container", "Route", "#Downtime", "#Bytes"], pts.slice().reverse().map((p) => el("tr", {},
        el("td", { class: "mono" }, stamp(p.at)), el("td", {}, p.name), el("td", { class: "nowrap" }, p.route),
        el("td", { class: "num" }, dur(p.downtime_ms)), el("td", { class: "num" }, bytes(p.bytes)))), "") : null,
    ];
  },

  snapshots(v) {
    const total = v.snapshots.reduce((n, s) => n + s.size, 0);
    const rows = v.snapshots.map((s) => el("tr", {},
      el("td", { class: "mono" }, stamp(s.at)),
      el("td", {}, el("b", {}, s.name || s.container), el("div", { class: "tag mono" }, s.id)),
      el("td", {}, s.host),
      el("td", {}, s.store_host),
      el("td", { class: "num" }, bytes(s.size)),
      el("td", { class: "num" }, s.frozen_ms ? dur(s.frozen_ms) : "–"),
      el("td", {}, s.left_running ? pill("left running", "ok") : pill("stopped", "")),
      el("td", {}, s.reason || "–"),
      el("td", { class: "mono", title: s.sha256 }, (s.sha256 || "").slice(0, 12))));
    return [
      header("Snapshots", "Checkpoint archives kept in the cluster's snapshot store. Read one with: orchestrate inspect ID"),
      el("div", { class: "cards" }, card("Snapshots", v.snapshots.length), card("Stored", bytes(total))),
      table(["Taken", "Container", "Host", "Stored on", "#Size", "#Frozen", "Container after", "Reason", "SHA-256"], rows,
        "No snapshots stored. Take one with: orchestrate checkpoint CONTAINER --store"),
    ];
  },
};

// draining: a drain marked the host and its migrations are still running.
function draining(v, h) {
  return h.draining && v.migrations.some((m) => !m.ended && m.from === h.name);
}

function steps(m) {
  return el("div", { class: "steps", title: STEPS[m.step] },
    STEPS.map((_, i) => {
      let c = "s";
      if (m.failed && i === m.step) c += " fail";
      else if (i < m.step || (i === m.step && m.phase === "Done")) c += " done";
      else if (i === m.step && !m.ended) c += " now";
      return el("span", { class: c });
    }));
}

function flightCard(m) {
  const since = now() - new Date(m.started).getTime();
  return el("div", { class: "card", "data-flight": m.id },
    el("h3", {}, m.name, " ", el("span", { class: "muted" }, m.from + " → " + m.to)),
    el("div", { class: "stepper" }, STEPS.map((s, i) => {
      let c = "st";
      if (m.failed && i === m.step) c += " fail";
      else if (i < m.step) c += " done";
      else if (i === m.step) c += " now";
      return el("div", { class: c }, s);
    })),
    el("div", { class: "kv" },
      el("span", {}, "phase ", el("b", {}, m.phase)),
      el("span", {}, "running for ", el("b", {}, dur(since))),
      el("span", {}, "bytes ", el("b", {}, m.bytes ? bytes(m.bytes) : "–")),
      m.downtime_ms ? el("span", {}, "downtime ", el("b", {}, dur(m.downtime_ms))) : null),
    m.error ? el("div", { class: "err" }, m.error) : null);
}

function phaseHistory(m) {
  const t0 = new Date(m.started).getTime();
  return el("div", {},
    el("div", { class: "kv" },
      el("span", {}, "container ", el("b", { class: "mono" }, m.container)),
      m.frozen_ms ? el("span", {}, "CRIU frozen ", el("b", {}, dur(m.frozen_ms))) : null,
      m.restore_ms ? el("span", {}, "restore ", el("b", {}, dur(m.restore_ms))) : null),
    el("ul", { class: "history" }, m.history.map((h) => el("li", {},
      el("span", { class: "t" }, "+" + dur(new Date(h.at).getTime() - t0)),
      el("b", {}, h.phase), h.note ? " — " + h.note : ""))));
}

function chart(pts, med, p95) {
  const W = 960, H = 300, L = 56, R = 14, T = 12, B = 46;
  const max = Math.max(...pts.map((p) => p.downtime_ms), 1);
  const top = niceCeil(max * 1.1);
  const y = (val) => T + (H - T - B) * (1 - val / top);
  const slot = (W - L - R) / pts.length;
  const bw = Math.max(3, Math.min(36, slot * 0.7));
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Downtime of the last " + pts.length + " migrations" });
  const grid = svg("g", { class: "grid axis" });
  for (let i = 0; i <= 4; i++) {
    const v = (top / 4) * i;
    grid.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    grid.appendChild(svg("text", { x: L - 8, y: y(v) + 4, "text-anchor": "end" }, dur(v)));
  }
  s.appendChild(grid);
  pts.forEach((p, i) => {
    const x = L + slot * i + (slot - bw) / 2;
    const r = svg("rect", { class: "bar-done", x, y: y(p.downtime_ms), width: bw, height: Math.max(1, y(0) - y(p.downtime_ms)), rx: 2 });
    r.appendChild(svg("title", {}, `${p.name} (${p.route}): ${dur(p.downtime_ms)}, ${bytes(p.bytes)}, ${stamp(p.at)}`));
    s.appendChild(r);
    if (pts.length <= 25) {
      s.appendChild(svg("text", { class: "lbl", x: x + bw / 2, y: H - B + 16, "text-anchor": "middle" }, trunc(p.name, Math.max(4, Math.floor(slot / 7)))));
    }
  });
  s.appendChild(svg("line", { class: "median", x1: L, x2: W - R, y1: y(med), y2: y(med) }));
  s.appendChild(svg("line", { class: "p95", x1: L, x2: W - R, y1: y(p95), y2: y(p95) }));
  s.appendChild(svg("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: "#c9d1d9" }));
  s.appendChild(svg("text", { class: "lbl", x: L, y: H - 8 }, "oldest"));
  s.appendChild(svg("text", { class: "lbl", x: W - R, y: H - 8, "text-anchor": "end" }, "newest"));
  return el("div", { class: "chart" }, s,
    el("div", { class: "legend" },
      el("span", {}, el("i", { style: "border-color:#1a7f37" }), "median " + dur(med)),
      el("span", {}, el("i", { style: "border-color:#d29922" }), "95th percentile " + dur(p95))));
}
function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function trunc(s, n) { return s.length > n ? s.slice(0, n - 1) + "…" : s; }

// ---- frame ---------------------------------------------------------------

function render() {
  const v = state.view;
  const p = page();
  for (const a of document.querySelectorAll(".sidebar a")) a.classList.toggle("active", a.dataset.page === p);
  if (!v) return;
  document.title = p[0].toUpperCase() + p.slice(1) + " · orchestrate";
  const flying = v.migrations.filter((m) => !m.ended).length;
  setCount("nav-hosts", v.hosts.length);
  setCount("nav-containers", v.containers.length);
  setCount("nav-migrations", flying || v.migrations.length, flying > 0);
  setCount("nav-events", v.events.length);
  setCount("nav-snapshots", v.snapshots.length);
  const alive = v.hosts.filter((h) => h.status === "alive").length;
  document.getElementById("cluster-summary").replaceChildren(
    el("span", {}, "leader ", v.leader ? el("b", {}, v.leader) : el("b", { class: "bad" }, "none")),
    el("span", {}, "term ", el("b", {}, v.term || "–")),
    el("span", {}, "hosts ", el("b", { class: alive < v.hosts.length ? "bad" : "" }, alive + "/" + v.hosts.length + " alive")),
    el("span", {}, "via ", el("b", {}, v.agent || "–")));
  const main = document.getElementById("main");
  main.dataset.page = p;
  main.replaceChildren(...[problems(v), pages[p](v)].flat(Infinity).filter(Boolean));
}
function setCount(id, n, hot) {
  const c = document.getElementById(id);
  c.textContent = n ? String(n) : "";
  c.classList.toggle("hot", !!hot);
}

function setLive() {
  const live = document.getElementById("live");
  const text = document.getElementById("live-text");
  const age = state.tick ? (performance.now() - state.tickSeen) / 1000 : Infinity;
  let cls = "live", msg;
  if (!state.connected) { cls += " down"; msg = "reconnecting…"; }
  else if (!state.tick) { msg = "connecting…"; }
  else if (age > 5) { cls += " stale"; msg = "no update for " + Math.round(age) + " s"; }
  else if (!state.tick.ok) { cls += " stale"; msg = "live · agent answered partly"; }
  else { cls += " ok"; msg = "live · updated " + clock(state.tick.at); }
  live.className = cls;
  text.textContent = msg;
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  if (location.pathname !== a.getAttribute("href")) history.pushState(null, "", a.getAttribute("href"));
  render();
  window.scrollTo(0, 0);
  document.getElementById("main").focus({ preventScroll: true });
});
window.addEventListener("popstate", render);

function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => { state.connected = true; setLive(); };
  es.onerror = () => { state.connected = false; setLive(); };
  es.addEventListener("view", (e) => { state.view = JSON.parse(e.data); render(); });
  es.addEventListener("tick", (e) => {
    state.tick = JSON.parse(e.data);
    state.tickSeen = performance.now();
    setLive();
  });
}
setInterval(() => {
  setLive();
  // Durations of migrations in flight move on between updates.
  if (state.view && page() === "migrations" && state.view.migrations.some((m) => !m.ended) && document.getElementById("modal").hidden) render();
}, 1000);
render();
connect();
