"""The live page and the login page: plain HTML + inline JS, no external resources.

The live page polls ``/api/status`` every 0.5 s and shows: a banner (running / stale / disconnected /
source finished / no answer from the server), the last frame with overlay at a useful size, yield and
NG %, counters and latency, a score-vs-threshold trend (inline SVG), the last NG frames as a gallery,
and Pause / Acknowledge buttons (client-side: pause freezes the view, acknowledge counts NG from now).
Every value from the server is written with ``textContent`` (file names never become HTML).
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>anomedge live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee}
main{padding:0 1em 1em}
#banner{padding:.45em 1em;font-weight:600}
.running{background:#1f6f2f}.idle{background:#555}.stale,.lost{background:#b8860b}.disconnected{background:#c0392b}
.finished{background:#2c5d8a}
#frame{height:min(64vh,760px);min-height:300px;width:auto;max-width:60vw;object-fit:contain;border:3px solid #444;background:#000;display:block}
.OK{background:#2a7d2a}.NG{background:#c0392b}.ERROR{background:#888}
#label{font-size:2em;padding:0 .3em;border-radius:4px}
table td{padding:2px 10px}td.v{text-align:right;font-variant-numeric:tabular-nums}
#big{font-size:1.4em}#big td{padding:2px 14px}
#gallery{display:flex;flex-wrap:wrap;gap:6px}#gallery figure{margin:0;font-size:.8em;color:#bbb}
#gallery img{width:140px;display:block;border:2px solid #c0392b}
button{font-size:1em;margin-right:.5em}#acked{color:#f39c12;font-weight:600}
svg text{fill:#aaa;font-size:11px}
</style></head><body>
<div id="banner" class="idle">connecting…</div>
<main>
<h2>anomedge live <span id="label"></span> <span id="lastscore" style="font-size:.7em;color:#bbb"></span></h2>
<div style="display:flex;gap:2em;align-items:flex-start">
<div><img id="frame" alt="waiting for the first frame">
<p><button id="pause">Pause</button><button id="ack">Acknowledge NG</button><span id="acked"></span></p>
</div>
<div style="flex:1;min-width:320px;max-width:640px">
<table id="big"><tr><td>yield</td><td class="v" id="yield">-</td></tr><tr><td>NG</td><td class="v" id="ngpct">-</td></tr></table>
<table>
<tr><td>frames</td><td class="v" id="frames">0</td></tr><tr><td>OK</td><td class="v" id="ok">0</td></tr>
<tr><td>NG</td><td class="v" id="ng">0</td></tr><tr><td>errors</td><td class="v" id="errors">0</td></tr>
<tr><td>dropped</td><td class="v" id="dropped">0</td></tr><tr><td>reconnects</td><td class="v" id="reconnects">0</td></tr>
<tr><td>latency p50 / p99</td><td class="v" id="latency">-</td></tr><tr><td>threshold</td><td class="v" id="threshold">-</td></tr>
<tr><td>last score</td><td class="v" id="score">-</td></tr><tr><td>source</td><td class="v" id="source">-</td></tr>
</table>
<p id="meta" style="color:#999"></p>
<svg id="trend" width="100%" height="160" preserveAspectRatio="none" viewBox="0 0 600 160" role="img" aria-label="score vs threshold">
<rect width="600" height="160" fill="#1a1a1a"/><polyline id="scores" fill="none" stroke="#7fb3ff" stroke-width="1.5"/>
<line id="thr" x1="0" x2="600" stroke="#e74c3c" stroke-dasharray="5,4"/><g id="ngdots"></g>
<text x="4" y="12">score (blue) vs threshold (red dashes), last frames</text><text id="ymax" x="560" y="12"></text></svg>
<h3>last NG frames</h3><div id="gallery"><span style="color:#888">none yet</span></div>
</div></div>
</main>
<script>
const $ = id => document.getElementById(id);
let shown = null, paused = false, lastOk = Date.now(), galleryKey = "";
let acked = Number(localStorage.getItem("anomedge-acked") || 0), ngNow = 0;
const BANNER = {running: "connected: inspecting", idle: "connected: waiting for frames", stale: "stale: no new frame from the source",
                disconnected: "source disconnected: reconnecting", finished: "source finished: showing the last results"};
function fmt(v, d){ return v === null || v === undefined ? "-" : Number(v).toFixed(d); }
function banner(cls, text){ const b = $("banner"); b.className = cls; b.textContent = text; }
$("pause").onclick = () => { paused = !paused; $("pause").textContent = paused ? "Resume" : "Pause"; };
$("ack").onclick = () => { acked = ngNow; localStorage.setItem("anomedge-acked", acked); $("acked").textContent = ""; };
function trend(last, threshold){
  const scores = last.map(r => r.score).filter(v => typeof v === "number" && isFinite(v));
  if (!scores.length) return;
  const top = Math.max(...scores, threshold || 0) * 1.1 || 1, n = last.length, W = 600, H = 160;
  const x = i => n > 1 ? i * W / (n - 1) : W / 2, y = v => H - 4 - (H - 20) * v / top;
  $("scores").setAttribute("points", last.map((r, i) => typeof r.score === "number" ? x(i).toFixed(1) + "," + y(r.score).toFixed(1) : "").join(" "));
  if (threshold !== null) { $("thr").setAttribute("y1", y(threshold)); $("thr").setAttribute("y2", y(threshold)); }
  const dots = $("ngdots"); dots.replaceChildren();
  last.forEach((r, i) => { if (r.label === "NG" && typeof r.score === "number") {
    const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    c.setAttribute("cx", x(i)); c.setAttribute("cy", y(r.score)); c.setAttribute("r", 2.5); c.setAttribute("fill", "#e74c3c"); dots.appendChild(c); } });
  $("ymax").textContent = top.toPrecision(3);
}
function gallery(items){
  const key = items.map(g => g.id).join(",");
  if (key === galleryKey) return;
  galleryKey = key;
  const box = $("gallery"); box.replaceChildren();
  for (const g of items.slice().reverse()) {
    const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
    img.src = "/ng.jpg?id=" + g.id; img.alt = "NG frame"; cap.textContent = g.source + " #" + g.index + "  " + fmt(g.score, 3);
    fig.append(img, cap); box.appendChild(fig);
  }
  if (!items.length) box.textContent = "none yet";
}
async function tick(){
  try {
    const r = await fetch("/api/status", {cache: "no-store", credentials: "same-origin"});
    if (r.status === 401) { banner("disconnected", "not logged in: reload the page to enter the token"); return; }
    const s = await r.json();
    lastOk = Date.now();
    banner(s.state, BANNER[s.state] || s.state);
    if (paused) { $("banner").textContent += " (view paused)"; }
    else {
      const c = s.counters;
      for (const k of ["frames","ok","ng","errors","dropped","reconnects"]) $(k).textContent = c[k];
      $("yield").textContent = c.yield_pct === null ? "-" : fmt(c.yield_pct, 1) + " %";
      $("ngpct").textContent = c.ng_pct === null ? "-" : fmt(c.ng_pct, 1) + " %";
      $("latency").textContent = fmt(c.p50_ms,1) + " / " + fmt(c.p99_ms,1) + " ms";
      $("threshold").textContent = fmt(s.threshold,4);
      $("meta").textContent = s.artifact + " on " + s.backend;
      ngNow = c.ng; if (acked > ngNow) acked = 0;
      $("acked").textContent = ngNow > acked ? (ngNow - acked) + " NG since acknowledged" : "";
      const last = s.last.length ? s.last[s.last.length-1] : null;
      if (last){
        $("score").textContent = fmt(last.score,4); $("lastscore").textContent = fmt(last.score,4);
        $("source").textContent = last.source + " #" + last.index;
        $("label").textContent = last.label; $("label").className = last.label;
        const key = last.source + "#" + last.index + "#" + c.frames;
        if (key !== shown && last.label !== "ERROR"){ shown = key; $("frame").src = "/frame.jpg?k=" + encodeURIComponent(key); }
      }
      trend(s.last, s.threshold);
      gallery(s.ng_gallery || []);
    }
  } catch (e) {
    banner("lost", "no answer from the server for " + Math.round((Date.now() - lastOk) / 1000) + " s (stale)");
  }
  setTimeout(tick, 500);
}
tick();
</script></body></html>
"""

LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>anomedge live: token</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;background:#111;color:#eee}input,button{font-size:1.1em}</style>
</head><body><h2>anomedge live</h2>
<form id="f"><label>Token <input id="t" type="password" autocomplete="current-password" autofocus></label>
<button>Open</button></form><p id="msg" style="color:#e67e22"></p>
<script>
async function login(token){
  const r = await fetch("/api/login", {method: "POST", headers: {"Authorization": "Bearer " + token}, credentials: "same-origin"});
  if (r.status === 204) { location.replace("/"); } else { document.getElementById("msg").textContent = "token refused (" + r.status + ")"; }
}
document.getElementById("f").onsubmit = e => { e.preventDefault(); login(document.getElementById("t").value.trim()); };
if (location.hash.startsWith("#token=")) {
  const token = decodeURIComponent(location.hash.slice(7)); history.replaceState(null, "", "/"); login(token);
}
</script></body></html>
"""
