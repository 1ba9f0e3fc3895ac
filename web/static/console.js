// The machine page's live console: xterm.js over the console WebSocket (docs/api.md).
// Binary messages are console bytes both ways; text messages are JSON control messages.
(function () {
  'use strict';
  const el = document.getElementById('console');
  if (!el || el.dataset.attach !== 'yes' || typeof window.Terminal !== 'function') return;
  const statusEl = document.getElementById('console-status');
  const viewersEl = document.getElementById('console-viewers');
  const term = new window.Terminal({ scrollback: 5000, fontSize: 13, convertEol: false });
  term.open(document.getElementById('console-term'));
  // The terminal, for the browser test and for debugging from the developer tools.
  el.plinthTerm = term;
  const enc = new TextEncoder();
  let ws = null;
  let delay = 1000;
  const say = (s) => { statusEl.textContent = s; };
  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(proto + '//' + location.host + '/api/v1/machines/' + el.dataset.machine + '/console');
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => { delay = 1000; };
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') {
        term.write(new Uint8Array(e.data));
        return;
      }
      let m;
      try { m = JSON.parse(e.data); } catch (_) { return; }
      if (m.type === 'status') {
        say(m.state === 'open' ? 'live' : m.state.replace('_', ' ') + (m.reason ? ': ' + m.reason : ''));
        el.dataset.state = m.state;
      } else if (m.type === 'viewers') {
        viewersEl.textContent = 'attached: ' + m.viewers.join(', ');
      } else if (m.type === 'error') {
        say(m.message);
      } else if (m.type === 'lagged') {
        term.write('\r\n[… ' + m.skipped + ' chunks skipped …]\r\n');
      }
    };
    ws.onclose = () => {
      say('disconnected: reconnecting');
      el.dataset.state = 'closed';
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  term.onData((d) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
  });
  document.getElementById('console-break').addEventListener('click', () => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'break' }));
    term.focus();
  });
  connect();
})();
