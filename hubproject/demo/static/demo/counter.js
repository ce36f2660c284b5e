// The counter page: calls and a cast over the counter's WebSocket; every change is pushed to every tab.
"use strict";

(function () {
  const name = JSON.parse(document.getElementById("process-name").textContent);

  function show(state) {
    if (state === null || state === undefined) return;  // a cast's reply: the push brings the count
    document.getElementById("count").textContent = state.count;
    document.getElementById("node").textContent = state.node;
    document.getElementById("epoch").textContent = state.epoch;
  }

  async function send(op) {
    try {
      show(await sock.call(op));
      ProcessSocket.showError(null);
    } catch (error) {
      ProcessSocket.showError(error);
    }
  }

  const sock = new ProcessSocket("/ws/counter/" + encodeURIComponent(name) + "/", {
    onOpen: () => send("get"),
    onState: ProcessSocket.showState,
    onPush: show,
  });

  document.getElementById("counter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send(event.submitter ? event.submitter.value : "incr");
  });
})();
