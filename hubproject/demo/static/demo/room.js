// The chat room page: history and posts over the room's WebSocket, every new message pushed by the room.
"use strict";

(function () {
  const name = JSON.parse(document.getElementById("process-name").textContent);
  const list = document.getElementById("messages");
  const form = document.getElementById("post-form");
  const input = document.getElementById("text");
  const nick = document.getElementById("nick");
  const shown = new Map();  // message id -> <li>
  for (const li of list.querySelectorAll("li[data-id]")) shown.set(li.dataset.id, li);
  if (nick) {
    nick.value = localStorage.getItem("demo-nick") || "";
    nick.addEventListener("change", () => localStorage.setItem("demo-nick", nick.value));
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function span(cls, text) {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }

  // Show a message once, however often it arrives (the post's reply, the push, a history after a move).
  function show(m, state) {
    let li = shown.get(m.id);
    if (!li) {
      li = document.createElement("li");
      li.className = "msg";
      li.dataset.id = m.id;
      list.appendChild(li);
      shown.set(m.id, li);
    }
    li.replaceChildren(span("who", m.user), span("text", m.text),
      span("where", state ? state : m.node + " · " + m.epoch));
    li.classList.toggle("pending", !!state);
    list.scrollTop = list.scrollHeight;
  }

  function where(reply) {
    document.getElementById("node").textContent = reply.node;
    document.getElementById("epoch").textContent = reply.epoch;
  }

  async function history() {
    try {
      const reply = await sock.call("history");
      where(reply);
      for (const m of reply.messages) {
        show(m);
        list.appendChild(shown.get(m.id));  // history order first ...
      }
      for (const li of list.querySelectorAll("li.pending")) list.appendChild(li);  // ... then what is on its way
      ProcessSocket.showError(null);
    } catch (error) {
      ProcessSocket.showError(error);
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Retried with the same id until the room takes it: a room that moves or fails over stores it once.
  async function post(text) {
    const id = newId();
    const user = nick ? nick.value : "";
    show({id: id, user: user || "me", text: text}, "sending…");
    for (let attempt = 1; attempt <= 60; attempt++) {
      try {
        const reply = await sock.call("post", {text: text, id: id, user: user});
        show(reply.message);
        where(reply);
        ProcessSocket.showError(null);
        return;
      } catch (error) {
        if (!ProcessSocket.RETRYABLE.has(error.error)) {
          show({id: id, user: user || "me", text: text}, "not sent: " + error.error);
          ProcessSocket.showError(error);
          return;
        }
        ProcessSocket.showError(error, "retrying");
        await sleep(500);
      }
    }
  }

  const sock = new ProcessSocket("/ws/room/" + encodeURIComponent(name) + "/", {
    onOpen: history,
    onState: ProcessSocket.showState,
    onPush: (data) => {
      if (data.kind === "message") show(data.message);
      else if (data.kind === "room") { where(data); history(); }  // a new activation: moved or taken over
    },
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    input.value = "";
    if (text) post(text);
  });
})();
