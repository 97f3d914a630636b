// A minimal RFC 6455 WebSocket (client and server) for the tests, on node:net/node:http
// only: Node 20 has no WebSocket client that sends headers, and the suite adds no package.
// Frames are whole (no fragmentation); text and binary payloads are kept as Buffers.
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const acceptOf = (key) => crypto.createHash('sha1').update(key + GUID).digest('base64');

function frame(opcode, payload, mask) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len]) : len < 65536
    ? Buffer.from([0x80 | opcode, 126, len >> 8, len & 255])
    : Buffer.concat([Buffer.from([0x80 | opcode, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); return b; })()]);
  if (!mask) return Buffer.concat([head, payload]);
  head[1] |= 0x80;
  const m = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= m[i & 3];
  return Buffer.concat([head, m, body]);
}

/** A socket speaking frames: `messages` (each {type:'text'|'binary', data:Buffer}), `closed` (a promise of {code, reason}). */
function framed(socket, masking, rest = Buffer.alloc(0)) {
  const ws = {
    messages: [], closeSent: false, closedWith: null,
    send(data) {
      const binary = Buffer.isBuffer(data);
      socket.write(frame(binary ? 2 : 1, binary ? data : Buffer.from(data), masking));
    },
    close(code = 1000, reason = '') {
      if (ws.closeSent) return;
      ws.closeSent = true;
      const p = Buffer.alloc(2); p.writeUInt16BE(code);
      socket.write(frame(8, Buffer.concat([p, Buffer.from(reason)]), masking));
    },
    destroy() { socket.destroy(); },
  };
  let done;
  ws.closed = new Promise((r) => { done = r; });
  let buf = rest;
  const finish = (v) => { if (!ws.closedWith) { ws.closedWith = v; done(v); } };
  const parse = () => {
    for (;;) {
      if (buf.length < 2) return;
      const op = buf[0] & 15; const masked = buf[1] & 0x80; let len = buf[1] & 127; let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const m = masked ? buf.subarray(off, off + 4) : null; if (masked) off += 4;
      if (buf.length < off + len) return;
      const payload = Buffer.from(buf.subarray(off, off + len));
      if (m) for (let i = 0; i < payload.length; i++) payload[i] ^= m[i & 3];
      buf = buf.subarray(off + len);
      if (op === 1 || op === 2) { ws.messages.push({ type: op === 1 ? 'text' : 'binary', data: payload }); ws.onmessage?.(ws.messages.at(-1)); }
      else if (op === 9) socket.write(frame(10, payload, masking));
      else if (op === 8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        const reason = payload.subarray(2).toString();
        ws.close(code === 1005 ? 1000 : code, '');
        finish({ code, reason });
        socket.end();
      }
    }
  };
  socket.on('data', (d) => { buf = Buffer.concat([buf, d]); parse(); });
  socket.on('close', () => finish({ code: 1006, reason: '' }));
  socket.on('error', () => {});
  parse();
  return ws;
}

/**
 * Opens `url` (ws://) with `headers`; resolves {status, headers, ws} — `ws` only on a 101.
 */
export function connect(url, { headers = {}, protocols } = {}) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const key = crypto.randomBytes(16).toString('base64');
    const h = { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': key, ...headers };
    if (protocols) h['sec-websocket-protocol'] = protocols.join(', ');
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, headers: h });
    req.on('upgrade', (res, socket, head) => {
      if (res.headers['sec-websocket-accept'] !== acceptOf(key)) return reject(new Error('bad accept'));
      resolve({ status: 101, headers: res.headers, ws: framed(socket, true, head) });
    });
    req.on('response', (res) => {
      let text = ''; res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Accepts an upgrade on `server` (node:http) for `req`; `protocol` answered if given. */
export function accept(req, socket, head, protocol) {
  const lines = ['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket', 'Connection: Upgrade',
    `Sec-WebSocket-Accept: ${acceptOf(req.headers['sec-websocket-key'])}`];
  if (protocol) lines.push(`Sec-WebSocket-Protocol: ${protocol}`);
  socket.write(lines.join('\r\n') + '\r\n\r\n');
  return framed(socket, false, head);
}

export { net };
