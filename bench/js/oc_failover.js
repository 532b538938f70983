// open-channel failover, for python -m bench: SIGKILL the host while the
// workers write, and see whether, when, and with what loss they recover.
//
//   node oc_failover.js
//
// Environment: OC_MODULE (path of the installed open-channel package),
// OC_NAME (channel name), RECORDS (a private directory for the hosts'
// records), WORKERS (3), INTERVAL_MS (2), WARM_MS (500), OBSERVE_MS (1500),
// DRAIN_MS (300), SETUP_MS (15000), IDLE (0 or 1), LIMIT_MS.
//
// The cluster primary forks WORKERS workers running this script. Each calls
// openChannel(name, listener).connect() and writes a 16-byte message
// [pid u32][sequence u32][time written f64] (with a 4-byte length prefix)
// every INTERVAL_MS, recording what it wrote and every error that its
// write callbacks or 'error' events report. Whichever worker open-channel
// elects serves the connections; it appends every message it receives to
// RECORDS/<its pid> with a synchronous write before handling the next
// chunk, so that a SIGKILL loses nothing it had received (as the channel's
// candidates record before they acknowledge).
//
// Once the host has received from every worker, the primary waits WARM_MS
// and SIGKILLs the host, by its pid. With IDLE=1 every worker stops writing
// 300 ms before the kill and the survivors start again 200 ms after it (the
// case where the dead host held no unread data). The primary watches for
// OBSERVE_MS, stops the survivors, waits DRAIN_MS, and prints
// RESULT <json>: the time from the kill to a new host's first connection
// and first message, to each survivor's first message delivered again, and
// how many of the messages the survivors wrote after the warm-up were
// never received by any host. Other lines: PIDS <worker pids>, ERROR
// <reason>. Bounded like oc_bench.js: LIMIT_MS, stdin's end, and Node's
// cluster ending the workers with the primary.
"use strict";
const cluster = require("cluster");
const fs = require("fs");
const path = require("path");

const WORKERS = +(process.env.WORKERS || 3);
const INTERVAL_MS = +(process.env.INTERVAL_MS || 2);
const WARM_MS = +(process.env.WARM_MS || 500);
const OBSERVE_MS = +(process.env.OBSERVE_MS || 1500);
const DRAIN_MS = +(process.env.DRAIN_MS || 300);
const SETUP_MS = +(process.env.SETUP_MS || 15000);
const IDLE = process.env.IDLE === "1";
const IDLE_BEFORE_MS = 300;
const RESUME_AFTER_MS = 200;
const LIMIT_MS = +(process.env.LIMIT_MS || 60000);
const RECORDS = process.env.RECORDS;
const now = () => Number(process.hrtime.bigint());

if (cluster.isPrimary) {
  const workers = new Map(); // pid -> {worker, final}
  const seen = new Set(); // senders the first host received from
  const hosting = []; // [pid, t]
  let hostPid = null;
  let tWarm = null;
  let tKill = null;
  let phase = "setup";
  let finished = false;
  const say = line => process.stdout.write(line + "\n");
  const finish = (code, line) => {
    if (finished) return;
    finished = true;
    if (line) say(line);
    for (const pid of workers.keys()) {
      try { process.kill(pid, "SIGKILL"); } catch (e) { /* gone */ }
    }
    setTimeout(() => process.exit(code), 50);
  };
  setTimeout(() => finish(2, "ERROR no result within " + LIMIT_MS + " ms"), LIMIT_MS);
  process.stdin.on("end", () => finish(3));
  process.stdin.on("error", () => finish(3));
  process.stdin.resume();

  const setupTimer = setTimeout(() => finish(0, "RESULT " + JSON.stringify({
    setup_failed: true,
    reason: "no host received from all " + WORKERS + " workers within " + SETUP_MS + " ms",
    hosts: hosting.length, senders_seen: seen.size })), SETUP_MS);

  const msAfterKill = t => (t == null || tKill == null ? null : (t - tKill) / 1e6);

  const report = () => {
    const survivors = [...workers.keys()].filter(pid => pid !== hostPid);
    const received = new Map(); // "pid:seq" -> [t, host]
    for (const file of fs.readdirSync(RECORDS)) {
      const host = +file;
      const text = fs.readFileSync(path.join(RECORDS, file), "latin1");
      for (const line of text.split("\n")) {
        if (!line) continue;
        const [pid, seq, t] = line.split(" ");
        const key = pid + ":" + seq;
        if (!received.has(key)) received.set(key, [+t, host]);
      }
    }
    let firstMessage = null;
    for (const [t, host] of received.values()) {
      if (host !== hostPid && t > tKill && (firstMessage == null || t < firstMessage)) firstMessage = t;
    }
    const newHost = hosting.find(([pid, t]) => pid !== hostPid && t > tKill);
    const per = {};
    let sent = 0, lost = 0, sentAfter = 0, lostAfter = 0, lostBefore = 0, errorEvents = 0;
    const writeErrors = {};
    const recoveries = [];
    for (const pid of survivors) {
      const final = workers.get(pid).final || { sent: [], errors: {}, errorEvents: 0 };
      let firstAgain = null, mine = 0, mineLost = 0;
      for (const [seq, t] of final.sent) {
        if (t < tWarm) continue;
        mine++;
        const got = received.get(pid + ":" + seq);
        if (!got) {
          mineLost++;
          if (t >= tKill) lostAfter++;
          else lostBefore++;
        }
        if (t >= tKill) sentAfter++;
        if (got && got[1] !== hostPid && got[0] > tKill && (firstAgain == null || got[0] < firstAgain)) {
          firstAgain = got[0];
        }
      }
      sent += mine;
      lost += mineLost;
      errorEvents += final.errorEvents;
      for (const [code, n] of Object.entries(final.errors)) writeErrors[code] = (writeErrors[code] || 0) + n;
      recoveries.push(msAfterKill(firstAgain));
      per[pid] = { sent: mine, lost: mineLost, recovered_ms: msAfterKill(firstAgain),
                   error_events: final.errorEvents, first_error: final.firstError || null };
    }
    const recovered = recoveries.filter(r => r != null);
    return {
      idle_at_kill: IDLE, workers: WORKERS, interval_ms: INTERVAL_MS, observe_ms: OBSERVE_MS,
      killed_host: hostPid, survivors: survivors.length,
      new_host_ms: newHost ? msAfterKill(newHost[1]) : null,
      first_message_ms: msAfterKill(firstMessage),
      recovered_survivors: recovered.length,
      recovered_all: recovered.length === survivors.length,
      recovery_all_ms: recovered.length === survivors.length ? Math.max(...recovered) : null,
      sent, lost, sent_after_kill: sentAfter, lost_after_kill: lostAfter,
      lost_before_kill: lostBefore, write_errors: writeErrors, error_events: errorEvents,
      per_survivor: per,
    };
  };

  const kill = () => {
    phase = "outage";
    tKill = now();
    try { process.kill(hostPid, "SIGKILL"); } catch (e) { /* already gone */ }
    if (IDLE) {
      setTimeout(() => {
        for (const [pid, w] of workers) if (pid !== hostPid) w.worker.send({ type: "resume" });
      }, RESUME_AFTER_MS);
    }
    setTimeout(() => {
      phase = "stopping";
      for (const [pid, w] of workers) if (pid !== hostPid) w.worker.send({ type: "stop" });
      setTimeout(() => {
        try {
          finish(0, "RESULT " + JSON.stringify(report()));
        } catch (e) {
          finish(1, "ERROR report: " + e.message);
        }
      }, DRAIN_MS);
    }, OBSERVE_MS);
  };

  const warm = () => {
    phase = "warm";
    clearTimeout(setupTimer);
    tWarm = now();
    if (IDLE) {
      setTimeout(() => {
        for (const w of workers.values()) w.worker.send({ type: "pause" });
        setTimeout(kill, IDLE_BEFORE_MS);
      }, WARM_MS);
    } else {
      setTimeout(kill, WARM_MS);
    }
  };

  for (let i = 0; i < WORKERS; i++) {
    const w = cluster.fork();
    workers.set(w.process.pid, { worker: w, final: null });
    w.on("message", m => {
      if (m.type === "hosting") {
        hosting.push([m.pid, m.t]);
        if (hostPid == null) hostPid = m.pid;
      } else if (m.type === "seen" && phase === "setup" && m.host === hostPid) {
        seen.add(m.sender);
        if (seen.size >= WORKERS) warm();
      } else if (m.type === "final") {
        workers.get(m.pid).final = m;
      }
    });
    w.on("exit", (code, signal) => {
      if (w.process.pid !== hostPid || phase === "setup") {
        finish(1, "ERROR worker " + w.process.pid + " exited (" + (signal || code) + ") in " + phase);
      }
    });
  }
  say("PIDS " + [...workers.keys()].join(" "));
} else {
  setTimeout(() => process.exit(2), LIMIT_MS).unref();
  const openChannel = require(process.env.OC_MODULE).default;
  const pid = process.pid;
  const sent = [];
  const errors = {};
  let errorEvents = 0;
  let firstError = null;
  let record = null;
  const seen = new Set();

  const serve = conn => {
    if (record == null) {
      record = fs.openSync(path.join(RECORDS, String(pid)), "a");
      process.send({ type: "hosting", pid, t: now() });
    }
    conn.on("error", () => {});
    let rest = null;
    conn.on("data", chunk => {
      const t = now();
      const buf = rest ? Buffer.concat([rest, chunk]) : chunk;
      let off = 0;
      let lines = "";
      while (buf.length - off >= 4) {
        const end = off + 4 + buf.readUInt32BE(off);
        if (end > buf.length) break;
        const sender = buf.readUInt32BE(off + 4);
        lines += sender + " " + buf.readUInt32BE(off + 8) + " " + t + "\n";
        if (!seen.has(sender)) {
          seen.add(sender);
          process.send({ type: "seen", host: pid, sender });
        }
        off = end;
      }
      rest = off < buf.length ? buf.subarray(off) : null;
      if (lines) fs.writeSync(record, lines);
    });
  };

  const channel = openChannel(process.env.OC_NAME, serve);
  const sock = channel.connect();
  sock.on("error", e => {
    errorEvents++;
    if (firstError == null) firstError = e.code || e.message;
  });

  let seq = 0;
  const tick = () => {
    const s = ++seq;
    const t = now();
    const message = Buffer.alloc(20);
    message.writeUInt32BE(16, 0);
    message.writeUInt32BE(pid, 4);
    message.writeUInt32BE(s, 8);
    message.writeDoubleBE(t, 12);
    sent.push([s, t]);
    const failed = code => { errors[code] = (errors[code] || 0) + 1; };
    try {
      sock.write(message, err => { if (err) failed(err.code || "error"); });
    } catch (e) {
      failed("throw:" + (e.code || e.message));
    }
  };
  let timer = setInterval(tick, INTERVAL_MS);
  process.on("message", m => {
    if (m.type === "pause" || m.type === "stop") clearInterval(timer);
    if (m.type === "resume") {
      clearInterval(timer);
      timer = setInterval(tick, INTERVAL_MS);
    }
    if (m.type === "stop") {
      // Let write callbacks that are due report their errors first.
      setTimeout(() => process.send({ type: "final", pid, sent, errors, errorEvents, firstError }), 100);
    }
  });
}
