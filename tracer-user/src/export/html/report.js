// leaktrace's HTML report: draws the flame graph, the chart and the rows table from the JSON
// document in #data (see export/html.rs for its shape). No network, no libraries.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const VERDICTS = ["leak", "growing", "steady", "churn", "unknown"];
  const COLOURS = {
    leak: "#e0442f", growing: "#f29b30", steady: "#5b8fd0", churn: "#9aa5b1",
    unknown: "#c9c9c9", omitted: "#e4e4e4",
  };
  // Lines of one verdict share its colour and differ in dashes.
  const DASHES = ["", "8 4", "2 3", "8 3 2 3", "12 4", "4 4", "1 2", "10 2 2 2"];
  const ROW_H = 17;

  const n = data.nodes.length;
  const parent = new Int32Array(n);
  const label = new Array(n);
  const children = Array.from({ length: n }, () => []);
  const value = new Float64Array(n);
  const blocks = new Float64Array(n);
  const growth = new Float64Array(n);
  const hasGrowth = new Uint8Array(n);
  const age = new Float64Array(n);
  const byVerdict = VERDICTS.map(() => new Float64Array(n));
  data.nodes.forEach(([p, f], i) => {
    parent[i] = p;
    label[i] = data.frames[f];
    if (i > 0) children[p].push(i);
  });
  data.rows.forEach((r) => {
    const leaf = r[0];
    value[leaf] += r[1];
    blocks[leaf] += r[2];
    if (r[4] !== null) { growth[leaf] += r[4]; hasGrowth[leaf] = 1; }
    if (r[5] !== null) age[leaf] = Math.max(age[leaf], r[5]);
    byVerdict[Math.max(0, VERDICTS.indexOf(r[6]))][leaf] += r[1];
  });
  const omittedNode = data.omitted ? data.omitted.node : -1;
  if (data.omitted) value[omittedNode] += data.omitted.live_bytes;
  // Parents come before their children: one pass from the end adds every subtree up.
  for (let i = n - 1; i > 0; i--) {
    const p = parent[i];
    value[p] += value[i];
    blocks[p] += blocks[i];
    growth[p] += growth[i];
    hasGrowth[p] |= hasGrowth[i];
    age[p] = Math.max(age[p], age[i]);
    for (const v of byVerdict) v[p] += v[i];
  }
  children.forEach((c) => c.sort((a, b) => value[b] - value[a] || a - b));

  function verdictOf(node) {
    if (node === omittedNode) return "omitted";
    let best = 4;
    for (let v = 0; v < VERDICTS.length; v++) {
      if (byVerdict[v][node] > byVerdict[best][node]) best = v;
    }
    return VERDICTS[best];
  }

  function esc(text) {
    return String(text).replace(/[&<>"]/g, (c) =>
      ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }
  function bytes(b) {
    const units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let sign = b < 0 ? "-" : "";
    b = Math.abs(b);
    if (b < 1024) return sign + Math.round(b) + " B";
    let unit = -1;
    do { b /= 1024; unit++; } while (b >= 1023.95 && unit < units.length - 1);
    return sign + b.toFixed(1) + " " + units[unit];
  }
  function count(x) { return Math.round(x).toLocaleString("en-US"); }
  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function perHour(g) { return g === null || g === undefined ? "–" : (g >= 0 ? "+" : "") + bytes(g) + "/h"; }

  // ---- flame graph ----
  const flame = document.getElementById("flame");
  const tip = document.getElementById("tip");
  const search = document.getElementById("search");
  const matched = document.getElementById("matched");
  let zoom = 0;
  let picked = -1;
  let matches = null;

  document.getElementById("legend").innerHTML = VERDICTS.map((v) =>
    `<span><i style="background:${COLOURS[v]}"></i>${v}</span>`).join("") +
    "<span>each frame as wide as the live bytes allocated through it; colour: the verdict holding most of them</span>";

  function box(node, x, w, depth, above) {
    let cls = "node";
    if (above) cls += " above";
    if (matches && matches.has(node)) cls += " match";
    if (node === picked) cls += " picked";
    const text = w > 24 ? esc(label[node]) : "";
    return `<div class="${cls}" data-node="${node}" style="left:${x.toFixed(2)}px;` +
      `width:${w.toFixed(2)}px;top:${depth * ROW_H}px;background:${COLOURS[verdictOf(node)]}">${text}</div>`;
  }

  function render() {
    const width = flame.clientWidth || 1200;
    const chain = [];
    for (let a = zoom; ; a = parent[a]) { chain.unshift(a); if (a === 0) break; }
    const parts = chain.map((a, depth) => box(a, 0, width, depth, a !== zoom));
    const base = chain.length - 1;
    const scale = value[zoom] > 0 ? width / value[zoom] : 0;
    let deepest = base;
    const todo = [[zoom, 0, base]];
    while (todo.length) {
      const [node, x, depth] = todo.pop();
      let at = x;
      for (const c of children[node]) {
        const w = value[c] * scale;
        if (w >= 0.5) {
          parts.push(box(c, at, w, depth + 1, false));
          todo.push([c, at, depth + 1]);
          deepest = Math.max(deepest, depth + 1);
        }
        at += w;
      }
    }
    flame.style.height = (deepest + 1) * ROW_H + "px";
    flame.innerHTML = parts.join("");
  }

  function zoomTo(node) {
    zoom = node;
    render();
  }

  flame.addEventListener("click", (e) => {
    const el = e.target.closest(".node");
    if (el) zoomTo(Number(el.dataset.node));
  });
  flame.addEventListener("mousemove", (e) => {
    const el = e.target.closest(".node");
    if (!el) { tip.hidden = true; return; }
    const node = Number(el.dataset.node);
    const share = value[0] > 0 ? (100 * value[node] / value[0]).toFixed(2) : "0";
    const mix = VERDICTS.filter((v, i) => byVerdict[i][node] > 0)
      .map((v) => `${v} ${bytes(byVerdict[VERDICTS.indexOf(v)][node])}`).join(", ");
    tip.textContent = `${label[node]}\n${bytes(value[node])} (${count(value[node])} bytes, ${share}% of live)\n` +
      `${count(blocks[node])} blocks · growth ${hasGrowth[node] ? perHour(growth[node]) : "–"} · ` +
      `oldest ${age[node] > 0 ? seconds(age[node]) : "–"}` + (mix ? `\n${mix}` : "");
    tip.hidden = false;
    tip.style.left = Math.min(e.clientX + 12, window.innerWidth - tip.offsetWidth - 8) + "px";
    tip.style.top = (e.clientY + 14) + "px";
  });
  flame.addEventListener("mouseleave", () => { tip.hidden = true; });
  document.getElementById("reset").addEventListener("click", () => { picked = -1; markRow(-1); zoomTo(0); });
  search.addEventListener("input", () => {
    const term = search.value.trim().toLowerCase();
    if (!term) { matches = null; matched.textContent = ""; render(); return; }
    matches = new Set();
    for (let i = 1; i < n; i++) {
      if (label[i].toLowerCase().includes(term)) matches.add(i);
    }
    // Bytes under a match, each counted once (a match below another is inside it).
    let total = 0;
    for (const m of matches) {
      let a = parent[m], inner = false;
      while (a !== 0) { if (matches.has(a)) { inner = true; break; } a = parent[a]; }
      if (!inner) total += value[m];
    }
    const share = value[0] > 0 ? (100 * total / value[0]).toFixed(1) : "0";
    matched.textContent = `${matches.size} frames match: ${bytes(total)} (${share}% of live bytes)`;
    render();
  });

  // ---- chart ----
  const chart = document.getElementById("chart");
  function leafLabel(row) {
    const r = data.rows[row];
    return label[r[0]];
  }
  function drawChart() {
    const series = data.chart.series;
    if (!series.length) {
      chart.innerHTML = "<p>No history to draw: a report made within its first second, or rows without a series.</p>";
      return;
    }
    const W = Math.max(600, flame.clientWidth || 1200), H = 280, L = 80, R = 16, T = 10, B = 36;
    let x0 = Infinity, x1 = -Infinity, y1 = 0;
    for (const s of series) for (const [x, y] of s.points) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
    }
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= 0) y1 = 1;
    y1 *= 1.05;
    const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const py = (y) => T + (1 - y / y1) * (H - T - B);
    const parts = [`<svg width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">`];
    for (let i = 0; i <= 4; i++) {
      const y = y1 * i / 4;
      parts.push(`<line class="grid" x1="${L}" x2="${W - R}" y1="${py(y)}" y2="${py(y)}"/>`,
        `<text x="${L - 6}" y="${py(y) + 4}" text-anchor="end">${bytes(y)}</text>`);
    }
    for (let i = 0; i <= 5; i++) {
      const x = x0 + (x1 - x0) * i / 5;
      parts.push(`<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle">${data.chart.x_label === "snapshot" ? x.toFixed(0) : seconds(x)}</text>`);
    }
    parts.push(`<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${H - B}"/>`,
      `<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>`,
      `<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">${esc(data.chart.x_label)}</text>`);
    const seen = {};
    const styles = series.map((s) => {
      const verdict = data.rows[s.row][6];
      const k = seen[verdict] = (seen[verdict] ?? -1) + 1;
      return { colour: COLOURS[verdict], dash: DASHES[k % DASHES.length] };
    });
    series.forEach((s, i) => {
      const points = s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
      parts.push(`<polyline data-row="${s.row}" data-verdict="${data.rows[s.row][6]}" ` +
        `stroke="${styles[i].colour}" stroke-dasharray="${styles[i].dash}" points="${points}">` +
        `<title>${esc(leafLabel(s.row))}</title></polyline>`);
    });
    parts.push("</svg>");
    const keys = series.map((s, i) => {
      const r = data.rows[s.row];
      return `<div class="key" data-row="${s.row}"><svg width="36" height="10"><line x1="0" x2="36" y1="5" y2="5" ` +
        `stroke="${styles[i].colour}" stroke-width="3" stroke-dasharray="${styles[i].dash}"/></svg> ` +
        `${esc(leafLabel(s.row))}: ${bytes(r[1])} live, ${r[6]}${r[4] !== null ? ", " + perHour(r[4]) : ""}</div>`;
    });
    chart.innerHTML = parts.join("") + keys.join("");
  }

  // ---- rows ----
  const several = new Set(data.rows.map((r) => r[8])).size > 1;
  const COLUMNS = [
    { name: "#", get: (i) => i, show: (i) => i + 1 },
    { name: "live", get: (i) => data.rows[i][1], show: (i) => bytes(data.rows[i][1]) },
    { name: "blocks", get: (i) => data.rows[i][2], show: (i) => count(data.rows[i][2]) },
    { name: "allocations", get: (i) => data.rows[i][3], show: (i) => count(data.rows[i][3]) },
    { name: "growth", get: (i) => data.rows[i][4] ?? -Infinity, show: (i) => perHour(data.rows[i][4]) },
    { name: "oldest", get: (i) => data.rows[i][5] ?? -Infinity, show: (i) => seconds(data.rows[i][5]) },
    { name: "verdict", text: true, get: (i) => VERDICTS.indexOf(data.rows[i][6]),
      show: (i) => `<span class="verdict" style="background:${COLOURS[data.rows[i][6]]}">${data.rows[i][6]}</span>` },
    { name: "allocator", text: true, get: (i) => data.rows[i][7], show: (i) => esc(data.rows[i][7]) },
  ];
  if (several) COLUMNS.push({ name: "pid", get: (i) => data.rows[i][8], show: (i) => data.rows[i][8] });
  COLUMNS.push({ name: "allocated in (innermost frame)", text: true, get: (i) => leafLabel(i), show: (i) => esc(leafLabel(i)) });
  const table = document.getElementById("rows");
  const more = document.getElementById("more");
  // Rows are drawn 500 at a time: a browser lays out a table of 10,000 rows for seconds.
  const PAGE = 500;
  let shown = PAGE;
  let sortBy = 0, ascending = true;
  function drawRows() {
    table.tHead.innerHTML = "<tr>" + COLUMNS.map((c, k) =>
      `<th data-col="${k}" class="${c.text ? "text" : ""}${k === sortBy ? " sorted" + (ascending ? " up" : "") : ""}">${c.name}</th>`).join("") + "</tr>";
    const order = data.rows.map((_, i) => i);
    const col = COLUMNS[sortBy];
    order.sort((a, b) => {
      const x = col.get(a), y = col.get(b);
      const c = x < y ? -1 : x > y ? 1 : a - b;
      return ascending ? c : -c;
    });
    const drawn = order.slice(0, shown);
    table.tBodies[0].innerHTML = drawn.map((i) =>
      `<tr data-row="${i}"${i === pickedRow ? ' class="picked"' : ""}>` + COLUMNS.map((c) =>
        `<td${c.text ? ' class="text"' : ""}>${c.show(i)}</td>`).join("") + "</tr>").join("");
    const left = data.rows.length - drawn.length;
    more.hidden = left === 0;
    more.textContent = `${count(drawn.length)} of ${count(data.rows.length)} rows shown: show ${count(Math.min(PAGE, left))} more`;
  }
  more.addEventListener("click", () => { shown += PAGE; drawRows(); });
  let pickedRow = -1;
  function markRow(row) {
    pickedRow = row;
    for (const tr of table.tBodies[0].querySelectorAll("tr.picked")) tr.classList.remove("picked");
    const tr = table.tBodies[0].querySelector(`tr[data-row="${row}"]`);
    if (tr) tr.classList.add("picked");
  }
  function pickRow(row) {
    const leaf = data.rows[row][0];
    picked = leaf;
    markRow(row);
    zoomTo(leaf);
    flame.scrollIntoView({ block: "start" });
  }
  table.tHead.addEventListener("click", (e) => {
    const th = e.target.closest("th");
    if (!th) return;
    const k = Number(th.dataset.col);
    if (k === sortBy) ascending = !ascending; else { sortBy = k; ascending = COLUMNS[k].text || k === 0; }
    drawRows();
  });
  table.tBodies[0].addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) pickRow(Number(tr.dataset.row));
  });
  chart.addEventListener("click", (e) => {
    const key = e.target.closest("[data-row]");
    if (key) pickRow(Number(key.dataset.row));
  });
  const note = document.getElementById("rows-note");
  note.textContent = `${count(data.rows.length)} rows, holding ${bytes(value[0] - (data.omitted ? data.omitted.live_bytes : 0))}` +
    (data.omitted ? `; ${count(data.omitted.rows)} more rows holding ${bytes(data.omitted.live_bytes)} were left out of the export (--top)` : "") +
    ". Click a column to sort, a row to see its stack in the flame graph.";

  render();
  drawChart();
  drawRows();
  window.addEventListener("resize", () => { render(); drawChart(); });
  window.leaktrace = { zoomTo, pickRow, get zoomed() { return zoom; }, value, label, parent, data };
})();
