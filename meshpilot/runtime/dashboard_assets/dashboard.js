// meshpilot's dashboard: no framework, no network but this server.
//
// The operator token is kept in this tab's sessionStorage and sent as `Authorization: Bearer`
// on this page's own requests; the server never accepts a cookie, so no other site can make
// the browser send it. Everything the server says is written with textContent (never parsed
// as HTML), and the page's Content-Security-Policy runs this script alone.
//
// Live updates: /debug/dashboard/events is a server-sent event stream (a new state whenever
// anything changed), read with fetch() because EventSource cannot send a header; if it
// cannot be opened, the page polls /debug/dashboard instead.
"use strict";

const TOKEN_KEY = "meshpilot.operatorToken";
const DATA = "/debug/dashboard";
const EVENTS = "/debug/dashboard/events";
const RETRY_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

let session = null; // {token, abort: AbortController} while logged in

function $(id) { return document.getElementById(id); }

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function headers(token) {
  return token ? {"Authorization": "Bearer " + token} : {};
}

function setLive(state, text) {
  const live = $("live");
  live.dataset.state = state;
  live.textContent = text;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status;
}

// --- logging in and out -----------------------------------------------------------------

function showLogin(message) {
  if (session) session.abort.abort();
  session = null;
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setLive("out", "not logged in");
  $("token").focus();
}

// The server refused the kept token (expired, the key rotated): forget it.
function refused(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("refused: " + message);
}

async function probe(token) {
  const response = await fetch(DATA, {headers: headers(token), cache: "no-store"});
  if (response.ok) return {state: await response.json()};
  return {status: response.status, error: await errorOf(response)};
}

async function openBoard(token) {
  let answer;
  try {
    answer = await probe(token);
  } catch (e) {
    showLogin("meshpilot cannot be reached: " + e);
    return false;
  }
  if (!answer.state) {
    if (token) sessionStorage.removeItem(TOKEN_KEY);
    showLogin(token ? "refused: " + answer.error : "");
    return false;
  }
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  session = {token: token, abort: new AbortController()};
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = !token;
  render(answer.state);
  follow(session);
  return true;
}

// --- live updates -----------------------------------------------------------------------

async function follow(own) {
  while (session === own) {
    try {
      const response = await fetch(EVENTS, {headers: headers(own.token), cache: "no-store",
                                            signal: own.abort.signal});
      if (response.status === 401 || response.status === 403) {
        if (session === own) refused(await errorOf(response));
        return;
      }
      if (!response.ok || !response.body) {
        await poll(own);
        continue;
      }
      setLive("live", "live");
      await readEvents(response.body, own);
    } catch (e) {
      if (own.abort.signal.aborted) return;
    }
    if (session !== own) return;
    setLive("retry", "reconnecting");
    await sleep(RETRY_MS);
  }
}

async function readEvents(body, own) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done || session !== own) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "state" && data.length) render(JSON.parse(data.join("\n")));
    }
  }
}

// The stream could not be opened (too many open, say): poll once, then try it again.
async function poll(own) {
  setLive("poll", "polling");
  const response = await fetch(DATA, {headers: headers(own.token), cache: "no-store",
                                      signal: own.abort.signal});
  if (response.status === 401 || response.status === 403) {
    refused(await errorOf(response));
    return;
  }
  if (response.ok && session === own) render(await response.json());
  await sleep(RETRY_MS);
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

// --- rendering --------------------------------------------------------------------------

function fill(tableId, emptyId, rows, emptyText) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
  $(tableId).hidden = rows.length === 0;
  $(emptyId).hidden = rows.length !== 0;
  if (emptyText !== undefined) $(emptyId).textContent = emptyText;
}

function ms(seconds) {
  return seconds === null || seconds === undefined ? "" : Math.round(seconds * 1000) + " ms";
}

function rate(value) {
  return value === null || value === undefined ? "" : Number(value).toFixed(2);
}

function render(state) {
  const where = [state.replica ? "replica " + state.replica : null, state.admin_address]
    .filter(Boolean).join(" · ");
  $("where").textContent = where;
  $("live").title = "updated " + new Date().toLocaleTimeString();
  renderPolicy(state.policy || {}, state.prepush);
  renderFleet(state.proxies || [], state.fleet_error);
  renderEdits((state.edits || {}).edits || []);
  renderRollouts(state.rollouts);
  renderGraph(state.graph || {views: [], edges: [], clusters: []});
  renderRates(state.request_rates);
}

function renderPolicy(policy, prepush) {
  const parts = [];
  if (policy.ok) parts.push("serving");
  else if (policy.last_success) parts.push("the newest load was refused; the last good policy serves");
  else parts.push("no valid policy loaded yet");
  parts.push(`${policy.loads || 0} loads, ${policy.rejected || 0} refused`);
  if (policy.path) parts.push(policy.path);
  if (prepush && prepush.enabled && prepush.envoy_version) {
    parts.push("pre-push check: Envoy " + prepush.envoy_version);
  }
  const text = $("policy");
  text.textContent = parts.join(" · ");
  text.dataset.ok = policy.ok ? "true" : "false";
  $("policy-errors").replaceChildren(
    ...(policy.errors || []).map((error) => el("li", {}, String(error))));
}

function lastRejection(proxy) {
  let newest = null;
  const held = [];
  for (const [type, state] of Object.entries(proxy.types || {})) {
    const rejection = state.last_rejection;
    if (rejection && (!newest || rejection.at > newest.at)) newest = {type, ...rejection};
    for (const entry of state.held_back || []) held.push({type, ...entry});
  }
  if (!newest && !held.length) return "";
  const cell = el("div", {class: "rejection"});
  if (newest) cell.append(el("div", {}, `${newest.type}: ${newest.message}`));
  for (const entry of held) {
    cell.append(el("div", {class: "held"},
      `held back: ${entry.type} ${entry.name}` + (entry.origin ? ` (${entry.origin})` : "")));
  }
  return cell;
}

function renderFleet(proxies, fleetError) {
  $("fleet-count").textContent = proxies.length ? `(${proxies.length})` : "";
  $("fleet-error").textContent = fleetError || "";
  const rows = proxies.map((proxy) => {
    const sync = el("div", {class: "sync"});
    for (const [type, state] of Object.entries(proxy.types || {})) {
      sync.append(el("span", {class: "badge", "data-status": state.status,
                              title: `${state.resources} resources, ${state.acks} ACKs, ` +
                                     `${state.nacks} NACKs`}, `${type} ${state.status}`));
    }
    const stream = proxy.replica ? `${proxy.variant} @ ${proxy.replica}` : proxy.variant;
    return el("tr", {"data-node": proxy.node_id, "data-view": proxy.view || ""},
      el("td", {class: "node"}, proxy.node_id),
      el("td", {class: "view"}, proxy.view || "(none)"),
      el("td", {}, stream || ""),
      el("td", {}, proxy.envoy_version || ""),
      el("td", {}, sync),
      el("td", {}, lastRejection(proxy)));
  });
  fill("fleet", "fleet-empty", rows);
}

function renderEdits(edits) {
  const rows = edits.map((edit) => {
    const done = edit.seconds !== null && edit.seconds !== undefined;
    const reached = `${edit.converged} of ${edit.envoys}` +
      (edit.disconnected ? `, ${edit.disconnected} disconnected` : "");
    return el("tr", {"data-edit": edit.id, "data-done": done ? "true" : "false",
                     title: edit.line},
      el("td", {class: "edit"}, edit.id),
      el("td", {}, (edit.views || []).join(", ")),
      el("td", {class: "reached"}, reached),
      el("td", {class: "converged"}, done ? "converged in " + ms(edit.seconds) : "in progress"),
      el("td", {}, (edit.waiting_for || []).join(", ")));
  });
  fill("edits", "edits-empty", rows);
}

function renderRollouts(rollouts) {
  if (rollouts === null || rollouts === undefined) {
    fill("rollouts", "rollouts-empty", [], "no data");
    return;
  }
  const rows = rollouts.map((r) => {
    // "remaining" and "requests" are extras a source may give beyond the interface.
    const left = typeof r.remaining === "number" ? `, ${Math.ceil(r.remaining)} s left` : "";
    const limit = `limit ${(r.threshold * 100).toFixed(1)}%`;
    const seen = typeof r.requests === "number" ? ` of ${r.requests} requests` : "";
    return el("tr", {"data-rollout": r.id, "data-state": r.state},
      el("td", {}, r.id),
      el("td", {}, r.view),
      el("td", {class: "state-cell"}, r.state + left),
      el("td", {class: "canary", title: (r.canary || []).join(", ")},
         `${(r.canary || []).length} of ${r.total}: ${(r.canary || []).join(", ")}`),
      el("td", {}, r.error_rate === null || r.error_rate === undefined
        ? `no traffic yet (${limit})`
        : `${(r.error_rate * 100).toFixed(1)}%${seen} (${limit})`),
      el("td", {class: "edit"}, r.edit || ""),
      el("td", {class: "reason"}, r.reason || ""));
  });
  fill("rollouts", "rollouts-empty", rows, "no rollout");
}

function renderGraph(graph) {
  const views = graph.views || [];
  const clusters = graph.clusters || [];
  const box = $("graph");
  box.replaceChildren();
  const rows = (graph.edges || []).map((edge) => {
    const view = views.find((v) => v.view === edge.view) || {envoys: []};
    return el("tr", {"data-view": edge.view, "data-cluster": edge.cluster},
      el("td", {}, edge.view), el("td", {}, view.envoys.join(", ")),
      el("td", {}, edge.cluster), el("td", {}, rate(edge.rq_per_s)),
      el("td", {}, rate(edge.err_per_s)));
  });
  fill("graph-table", "graph-empty", rows);
  if (!views.length) return;
  const rowHeight = 26, width = 640, left = 10, right = 400, boxWidth = 220;
  const height = Math.max(views.length, clusters.length) * rowHeight + 10;
  const drawing = svg("svg", {viewBox: `0 0 ${width} ${height}`, width, height,
                              role: "img", "aria-label": "service graph"});
  const viewY = new Map(views.map((v, i) => [v.view, 5 + i * rowHeight + rowHeight / 2]));
  const clusterY = new Map(clusters.map((c, i) => [c, 5 + i * rowHeight + rowHeight / 2]));
  for (const edge of graph.edges || []) {
    const y1 = viewY.get(edge.view), y2 = clusterY.get(edge.cluster);
    const failing = edge.err_per_s > 0;
    drawing.append(svg("line", {x1: left + boxWidth, y1, x2: right, y2,
                                class: failing ? "edge failing" : "edge"}));
    if (edge.rq_per_s !== null && edge.rq_per_s !== undefined) {
      drawing.append(svg("text", {x: (left + boxWidth + right) / 2, y: (y1 + y2) / 2 - 3,
                                  class: "edge-label"}, rate(edge.rq_per_s) + "/s"));
    }
  }
  for (const view of views) {
    const y = viewY.get(view.view);
    drawing.append(svg("rect", {x: left, y: y - 10, width: boxWidth, height: 20, rx: 4,
                                class: "view-box"}));
    drawing.append(svg("text", {x: left + 6, y: y + 4, class: "view-label"},
      `${view.view} (${view.envoys.length} Envoy${view.envoys.length === 1 ? "" : "s"})`));
  }
  for (const cluster of clusters) {
    const y = clusterY.get(cluster);
    drawing.append(svg("rect", {x: right, y: y - 10, width: boxWidth, height: 20, rx: 4,
                                class: "cluster-box"}));
    drawing.append(svg("text", {x: right + 6, y: y + 4, class: "cluster-label"}, cluster));
  }
  box.append(drawing);
}

function renderRates(rates) {
  if (rates === null || rates === undefined) {
    fill("rates", "rates-empty", [], "no data");
    return;
  }
  const rows = rates.map((r) => el("tr", {"data-node": r.node, "data-cluster": r.cluster},
    el("td", {}, r.node), el("td", {}, r.view),
    el("td", {}, r.cluster === "" ? "(all downstream requests)" : r.cluster),
    el("td", {}, rate(r.rq_per_s)), el("td", {}, rate(r.err_per_s))));
  fill("rates", "rates-empty", rows, "no request seen yet");
}

// --- start --------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) openBoard(token);
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("logged out");
  });
  // A token kept by this tab, or none (a server run with --insecure-admin needs none).
  openBoard(sessionStorage.getItem(TOKEN_KEY) || "");
});
