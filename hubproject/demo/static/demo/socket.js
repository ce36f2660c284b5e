// A WebSocket to one process (processhub.consumers.ProcessConsumer), in plain JavaScript.
//   const sock = new ProcessSocket("/ws/room/lobby/", {onPush, onOpen, onState});
//   const reply = await sock.call("post", {text: "hi"});  // rejects with the error frame: {error, message}
// Frames out: {"op": ..., "ref": n, ...}; in: {"reply": ..., "ref": n}, {"error": ..., "ref": n}, {"push": ...}.
// The socket reconnects by itself (250 ms, doubling up to 4 s); onOpen runs after every (re)connect.
"use strict";

class ProcessSocket {
  constructor(path, handlers) {
    this.path = path;
    this.handlers = handlers || {};
    this.pending = new Map();
    this.nextRef = 1;
    this.delay = 250;
    this.connect();
  }

  url() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + this.path;
  }

  connect() {
    const ws = this.ws = new WebSocket(this.url());
    this.emit("onState", "connecting");
    ws.onopen = () => {
      this.delay = 250;
      this.emit("onState", "open");
      this.emit("onOpen");
    };
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if ("push" in frame) {
        this.emit("onPush", frame.push);
        return;
      }
      const waiter = this.pending.get(frame.ref);
      if (!waiter) return;
      this.pending.delete(frame.ref);
      if ("error" in frame) waiter.reject(frame); else waiter.resolve(frame.reply);
    };
    ws.onclose = () => {
      this.emit("onState", "closed");
      for (const waiter of this.pending.values()) waiter.reject({error: "SocketClosed", message: "the socket closed"});
      this.pending.clear();
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 4000);
    };
  }

  emit(name, arg) {
    if (this.handlers[name]) this.handlers[name](arg);
  }

  get open() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  call(op, fields, timeoutMs) {
    return new Promise((resolve, reject) => {
      if (!this.open) {
        reject({error: "SocketClosed", message: "not connected"});
        return;
      }
      const ref = this.nextRef++;
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject({error: "Timeout", message: "no answer on the socket"});
      }, timeoutMs || 15000);
      this.pending.set(ref, {
        resolve: (value) => { clearTimeout(timer); resolve(value); },
        reject: (error) => { clearTimeout(timer); reject(error); },
      });
      this.ws.send(JSON.stringify(Object.assign({}, fields || {}, {op: op, ref: ref})));
    });
  }
}

// Errors after which the same frame may be sent again: the cluster is moving the process, or the socket dropped.
ProcessSocket.RETRYABLE = new Set(["CallTimeout", "ProcessUnavailable", "NoLiveNodes", "TransportUnavailable",
  "DatabaseUnavailable", "ProcessNotRunning", "Fenced", "SocketClosed", "Timeout", "Busy"]);

ProcessSocket.showState = function (state) {
  const badge = document.getElementById("socket");
  if (!badge) return;
  badge.textContent = state === "open" ? "live" : state;
  badge.className = "badge " + (state === "open" ? "ok" : state === "connecting" ? "late" : "dead");
};

ProcessSocket.showError = function (error, suffix) {
  const box = document.getElementById("live-error");
  if (!box) return;
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = error.error + ": " + (error.message || "") + (suffix ? " (" + suffix + ")" : "");
};
