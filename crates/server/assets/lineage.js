// hifi dashboard: the field lineage and PII cards. Reads v1/lineage (until it has it once)
// and v1/pii every 10 s; errors show in the cards themselves, never stop the rest of the
// dashboard.
//
// Markers kept stable for scripts/check-dashboard and tests:
//   [data-chart=lineage] gets data-rendered and data-points="<selected edges drawn>";
//   .ln-node[data-node=<node>] per node, .ln-field[data-field="<node>.<field>"] per field
//   (class "pii" when declared PII reaches it; after a click, "picked", "up" or "down");
//   #pii-table[data-loaded="true"] once drawn, one tr[data-sink][data-field] per PII field a
//   sink receives, with data-allowed="true|false"; #pii-alarms li[data-field][data-sink].
(function () {
  "use strict";

  const PII_REFRESH_MS = 10000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) e.append(c);
    return e;
  }

  async function getJSON(path) {
    const res = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
    return res.json();
  }

  const nodeOf = (f) => f.slice(0, f.indexOf("."));

  // Columns: a node with no edge into it first, then each node one right of its inputs.
  function levels(graph) {
    const into = {};
    for (const e of graph.edges) (into[nodeOf(e.to)] ||= new Set()).add(nodeOf(e.from));
    const level = {};
    const visit = (n, seen) => {
      if (level[n] != null) return level[n];
      if (seen.has(n)) return 0;
      seen.add(n);
      const ins = [...(into[n] || [])].filter((m) => m !== n);
      level[n] = ins.length ? 1 + Math.max(...ins.map((m) => visit(m, seen))) : 0;
      return level[n];
    };
    for (const n of Object.keys(graph.nodes)) visit(n, new Set());
    return level;
  }

  // The row of `node.field`, or the node's `*` row for a field of a topic without schema.
  function fieldRow(root, name) {
    return root.querySelector(`.ln-field[data-field="${CSS.escape(name)}"]`) ||
      root.querySelector(`.ln-field[data-field="${CSS.escape(nodeOf(name) + ".*")}"]`);
  }

  let graph = null;
  let pii = null;

  function drawLineage() {
    const box = $('[data-chart="lineage"]');
    const level = levels(graph);
    const columns = [];
    for (const [node, fields] of Object.entries(graph.nodes)) {
      (columns[level[node]] ||= []).push([node, fields]);
    }
    const grid = el("div", { class: "ln-grid" });
    for (const col of columns.filter(Boolean)) {
      const c = el("div", { class: "ln-col" });
      for (const [node, fields] of col) {
        const n = el("div", { class: "ln-node", "data-node": node }, el("div", { class: "ln-title" }, node));
        for (const f of fields) {
          const row = el("div", { class: "ln-field", "data-field": `${node}.${f}`, title: `${node}.${f}` },
            f === "*" ? "* (any field)" : f);
          row.addEventListener("click", () => pick(`${node}.${f}`));
          n.append(row);
        }
        c.append(n);
      }
      grid.append(c);
    }
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "ln-edges");
    box.replaceChildren(grid, svg, el("p", { class: "ln-said", id: "ln-said" },
      "Click a field to see what it comes from and what it reaches."));
    box.dataset.points = String(drawEdges(box, svg));
    box.dataset.rendered = "true";
    markPii();
  }

  // Selected edges as solid curves; non-selected (dashed) only around a picked field, to
  // keep the picture readable. Returns how many selected edges were drawn.
  function drawEdges(box, svg, picked) {
    svg.replaceChildren();
    const origin = box.getBoundingClientRect();
    const grid = box.querySelector(".ln-grid");
    svg.setAttribute("width", String(grid.scrollWidth));
    svg.setAttribute("height", String(grid.offsetHeight));
    let drawn = 0;
    for (const e of graph.edges) {
      const near = picked && (e.from === picked || e.to === picked);
      if (e.use !== "selected" && !near) continue;
      const a = fieldRow(box, e.from);
      const b = fieldRow(box, e.to);
      if (!a || !b) continue;
      const ra = a.getBoundingClientRect();
      const rb = b.getBoundingClientRect();
      const x1 = ra.right - origin.left, y1 = ra.top + ra.height / 2 - origin.top;
      const x2 = rb.left - origin.left, y2 = rb.top + rb.height / 2 - origin.top;
      const mid = (x1 + x2) / 2;
      const p = document.createElementNS(SVG, "path");
      p.setAttribute("d", `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`);
      p.setAttribute("class", `ln-edge ${e.use}${near ? " near" : ""}${e.redacted ? " redacted" : ""}`);
      const t = document.createElementNS(SVG, "title");
      t.textContent = `${e.from} → ${e.to} (${e.use.replace("_", "-")}, by ${e.via}${e.note ? ": " + e.note : ""})`;
      p.append(t);
      svg.append(p);
      if (e.use === "selected") drawn++;
    }
    return drawn;
  }

  async function pick(field) {
    const box = $('[data-chart="lineage"]');
    for (const r of box.querySelectorAll(".ln-field")) r.classList.remove("picked", "up", "down");
    fieldRow(box, field)?.classList.add("picked");
    drawEdges(box, box.querySelector("svg"), field);
    const said = $("#ln-said");
    try {
      const q = encodeURIComponent(field);
      const [up, down] = await Promise.all([
        getJSON(`v1/lineage?upstream=${q}`), getJSON(`v1/lineage?impact=${q}`)]);
      const names = (list, cls) => list.map((r) => {
        fieldRow(box, r.field)?.classList.add(cls);
        return `${r.field}${r.use === "selected" ? "" : " (non-selected)"}`;
      });
      const from = names(up.upstream, "up");
      const to = names(down.impact, "down");
      said.textContent = `${field} comes from: ${from.join(", ") || "nothing upstream"}. ` +
        `It reaches: ${to.join(", ") || "nothing downstream"}.`;
    } catch (e) {
      said.textContent = `Lineage of ${field}: ${e.message}`;
    }
  }

  // Fields declared PII, and every field on a path from one to a sink.
  function markPii() {
    const box = $('[data-chart="lineage"]');
    if (!graph || !pii) return;
    for (const r of box.querySelectorAll(".ln-field.pii")) r.classList.remove("pii");
    const fields = new Set(Object.keys(pii.declared || {}));
    for (const list of Object.values(pii.sinks || {})) {
      for (const r of list) for (const f of r.path) fields.add(f);
    }
    for (const f of fields) fieldRow(box, f)?.classList.add("pii");
  }

  function drawPii() {
    const table = $("#pii-table");
    const body = table.querySelector("tbody");
    const rows = [];
    for (const [sink, list] of Object.entries(pii.sinks || {})) {
      for (const r of list) {
        const tr = el("tr", { "data-sink": sink, "data-field": r.field, "data-allowed": String(r.allowed),
          class: r.allowed ? "" : "refused" },
        el("td", {}, sink), el("td", {}, r.field), el("td", {}, r.from),
        el("td", {}, r.path.join(" → ")), el("td", {}, r.allowed ? "yes" : "NO"));
        rows.push(tr);
      }
    }
    if (!rows.length) {
      const declared = Object.keys(pii.declared || {});
      rows.push(el("tr", {}, el("td", { colSpan: 5, class: "empty" }, declared.length
        ? `declared PII (${declared.join(", ")}) reaches no sink`
        : "no field is declared PII (sources.X.pii, topics.X.pii)")));
    }
    body.replaceChildren(...rows);
    const alarms = $("#pii-alarms");
    alarms.replaceChildren(...(pii.alarms || []).map((a) => el("li",
      { "data-field": a.field, "data-sink": a.sink, class: "bad" },
      `${a.field} looks like ${a.looks_like.join(" and ")} (undeclared) and reaches ${a.sink}: ${a.path.join(" → ")}`)));
    const sampled = Object.entries(pii.sources || {}).map(([s, r]) =>
      `${s}: ${r.sampled_events} events sampled (1 in ${r.sample_every || "–"})`);
    $("#pii-sampled").textContent = sampled.join("; ") || "no source in this process";
    table.dataset.loaded = "true";
    markPii();
  }

  async function loadLineage() {
    try {
      graph = await getJSON("v1/lineage");
      drawLineage();
    } catch (e) {
      $('[data-chart="lineage"]').replaceChildren(el("p", { class: "error" }, `Lineage: ${e.message}`));
      setTimeout(loadLineage, PII_REFRESH_MS);
    }
  }

  async function loadPii() {
    try {
      pii = await getJSON("v1/pii");
      drawPii();
    } catch (e) {
      $("#pii-sampled").textContent = `PII: ${e.message}`;
    } finally {
      setTimeout(loadPii, PII_REFRESH_MS);
    }
  }

  loadLineage();
  loadPii();
  window.addEventListener("resize", () => {
    const box = $('[data-chart="lineage"]');
    if (graph && box.dataset.rendered) drawEdges(box, box.querySelector("svg"));
  });
})();
