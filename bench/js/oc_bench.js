// open-channel throughput and round trip, for python -m bench.
//
//   node oc_bench.js thr|lat
//
// Environment: OC_MODULE (path of the installed open-channel package),
// OC_NAME (channel name), COUNT, SIZE, WARMUP, LIMIT_MS.
//
// The cluster primary forks two workers running this script; both call
// openChannel(name, listener).connect(), open-channel elects one of them
// (through `ps`) to host the server inside itself, and the other is the
// client. Messages carry a 4-byte big-endian length prefix, written and
// parsed here. thr: the host counts COUNT messages of SIZE bytes and times
// the first to the last arrival. lat: the client sends WARMUP + COUNT
// sequential pings of SIZE bytes that the host echoes, and times the last
// COUNT of them.
//
// The primary prints, one line each: PIDS <worker pids>, RESULT <json>, or
// ERROR <reason>. It ends itself and its workers after LIMIT_MS, or when
// its stdin reaches end of file (the parent went away); each worker ends
// when the primary does (Node's cluster disconnects it) or after LIMIT_MS.
"use strict";
const cluster = require("cluster");

const TEST = process.argv[2] || "thr";
const COUNT = +(process.env.COUNT || 200000);
const SIZE = +(process.env.SIZE || 100);
const WARMUP = +(process.env.WARMUP || 1000);
const LIMIT_MS = +(process.env.LIMIT_MS || 120000);
const now = () => process.hrtime.bigint();

if (cluster.isPrimary) {
  const workers = [];
  let finished = false;
  const say = line => process.stdout.write(line + "\n");
  const finish = (code, line) => {
    if (finished) return;
    finished = true;
    if (line) say(line);
    for (const w of workers) {
      try { process.kill(w.process.pid, "SIGKILL"); } catch (e) { /* gone */ }
    }
    setTimeout(() => process.exit(code), 50);
  };
  setTimeout(() => finish(2, "ERROR no result within " + LIMIT_MS + " ms"), LIMIT_MS);
  process.stdin.on("end", () => finish(3));
  process.stdin.on("error", () => finish(3));
  process.stdin.resume();
  for (let i = 0; i < 2; i++) {
    const w = cluster.fork();
    workers.push(w);
    w.on("message", m => {
      if (m.type === "result") finish(0, "RESULT " + JSON.stringify(m.result));
      else if (m.type === "error") finish(1, "ERROR worker " + m.pid + ": " + m.message);
    });
    w.on("exit", (code, signal) => finish(1, "ERROR worker exited (" + (signal || code) + ")"));
  }
  say("PIDS " + workers.map(w => w.process.pid).join(" "));
} else {
  setTimeout(() => process.exit(2), LIMIT_MS).unref();
  const openChannel = require(process.env.OC_MODULE).default;

  // Calls onFrame(buffer, start, end) for each whole frame in the stream.
  const framer = onFrame => {
    let rest = null;
    return chunk => {
      const buf = rest ? Buffer.concat([rest, chunk]) : chunk;
      let off = 0;
      while (buf.length - off >= 4) {
        const end = off + 4 + buf.readUInt32BE(off);
        if (end > buf.length) break;
        onFrame(buf, off, end);
        off = end;
      }
      rest = off < buf.length ? buf.subarray(off) : null;
    };
  };
  const frame = (size, fill) => {
    const b = Buffer.alloc(4 + size, fill);
    b.writeUInt32BE(size, 0);
    return b;
  };

  let received = 0;
  let t0 = 0n;
  const serve = conn => {
    conn.on("error", () => {});
    if (TEST === "thr") {
      conn.on("data", framer(() => {
        received++;
        if (received === 1) t0 = now();
        if (received === COUNT) {
          const seconds = Number(now() - t0) / 1e9;
          process.send({ type: "result", result: {
            messages: COUNT, seconds, msgs_per_s: (COUNT - 1) / seconds } });
        }
      }));
    } else {
      conn.on("data", framer((buf, start, end) => conn.write(buf.subarray(start, end))));
    }
  };

  const stream = sock => {
    const message = frame(SIZE, "x");
    let sent = 0;
    const pump = () => {
      while (sent < COUNT) {
        sent++;
        if (!sock.write(message)) {
          sock.once("drain", pump);
          return;
        }
      }
    };
    pump();
  };

  const ping = sock => {
    const message = frame(SIZE, "p");
    const rtts = [];
    let i = 0;
    let t = 0n;
    sock.on("data", framer(() => {
      const rtt = Number(now() - t);
      if (i >= WARMUP) rtts.push(rtt);
      i++;
      if (i < WARMUP + COUNT) {
        t = now();
        sock.write(message);
        return;
      }
      rtts.sort((a, b) => a - b);
      const q = p => {
        const k = (rtts.length - 1) * p;
        const lo = Math.floor(k);
        const hi = Math.min(lo + 1, rtts.length - 1);
        return rtts[lo] + (rtts[hi] - rtts[lo]) * (k - lo);
      };
      process.send({ type: "result", result: {
        pings: rtts.length, p50_us: q(0.5) / 1e3, p99_us: q(0.99) / 1e3,
        mean_us: rtts.reduce((a, b) => a + b, 0) / rtts.length / 1e3,
        max_us: rtts[rtts.length - 1] / 1e3 } });
    }));
    t = now();
    sock.write(message);
  };

  const channel = openChannel(process.env.OC_NAME, serve);
  const sock = channel.connect();
  sock.on("error", e => process.send({ type: "error", pid: process.pid,
                                       message: (e.code || "") + " " + e.message }));
  sock.once("connect", () => {
    // The host connects to the server it runs, too; only the other worker
    // sends.
    if (channel.managerPid === process.pid) return;
    if (TEST === "thr") stream(sock);
    else ping(sock);
  });
}
