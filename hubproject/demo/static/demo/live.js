// The live cluster page: polls state.json once a second and redraws the node and process tables.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("live-config").textContent);
  const lastNode = new Map();  // process key -> node name at the previous poll, to highlight moves
  const movedUntil = new Map();  // process key -> until when its row stays highlighted

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    return td;
  }

  function badge(td, text, cls) {
    td.textContent = "";
    const b = document.createElement("span");
    b.className = "badge " + cls;
    b.textContent = text;
    td.appendChild(b);
  }

  async function kill(node, button) {
    button.disabled = true;
    const token = document.querySelector("#kill-form input[name=csrfmiddlewaretoken]").value;
    const url = config.kill.replace("NODE", encodeURIComponent(node.id));
    const r = await fetch(url, {method: "POST", headers: {"X-CSRFToken": token}, credentials: "same-origin"});
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const box = document.getElementById("kill-error");
      box.hidden = false;
      box.textContent = "kill refused: " + (body.error || r.status + " " + r.statusText);
    }
  }

  function drawNodes(nodes) {
    const body = document.querySelector("#nodes tbody");
    body.replaceChildren();
    for (const n of nodes) {
      const row = body.insertRow();
      row.className = "node";
      row.dataset.node = n.name;
      row.dataset.status = n.status;
      cell(row, n.name, "name");
      cell(row, n.status, "status");
      badge(cell(row, ""), n.lease_valid ? "valid" : "expired", n.lease_valid ? "ok" : "dead");
      const age = n.heartbeat_age;
      const fresh = !n.lease_valid ? "dead" : age !== null && age < 2 ? "ok" : "late";
      badge(cell(row, ""), age === null ? "?" : age.toFixed(1) + " s ago", fresh);
      cell(row, n.running, "running");
      if (config.staff) cell(row, (n.host || "?") + " · " + (n.pid || "?"));
      if (config.killEnabled) {
        const td = cell(row, "");
        if (n.killable) {
          const button = document.createElement("button");
          button.className = "kill";
          button.textContent = "kill -9";
          button.addEventListener("click", () => kill(n, button));
          td.appendChild(button);
        }
      }
    }
  }

  function drawProcesses(processes) {
    const body = document.querySelector("#processes tbody");
    body.replaceChildren();
    for (const p of processes) {
      const key = p.label + "\u0000" + p.id;
      const row = body.insertRow();
      row.className = "process " + p.kind;
      row.dataset.label = p.label;
      row.dataset.id = p.id;
      row.dataset.node = p.node || "";
      cell(row, p.kind);
      const idCell = row.insertCell();
      const link = document.createElement("a");
      link.href = "/" + p.kind + "/" + encodeURIComponent(p.id) + "/";
      link.textContent = p.id;
      idCell.appendChild(link);
      cell(row, p.node, "node");
      cell(row, p.epoch, "epoch");
      cell(row, p.status, "status");
      cell(row, p.restarts);
      const before = lastNode.get(key);
      if (before !== undefined && before !== p.node) movedUntil.set(key, Date.now() + 5000);
      if ((movedUntil.get(key) || 0) > Date.now()) row.classList.add("moved");
      lastNode.set(key, p.node);
    }
  }

  async function poll() {
    try {
      const r = await fetch(config.state, {credentials: "same-origin", cache: "no-store"});
      if (!r.ok) throw new Error(r.status + " " + r.statusText);
      const state = await r.json();
      drawNodes(state.nodes);
      drawProcesses(state.processes);
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.getElementById("live-error").hidden = true;
    } catch (error) {
      const box = document.getElementById("live-error");
      box.hidden = false;
      box.textContent = "cannot read the registry: " + error.message;
    }
    setTimeout(poll, 1000);
  }

  poll();
})();
