// Host side of one bounded guest boot, shared by boot-check.sh and kvm-probe.sh.
// Starts QEMU (argv after "--"), timestamps what the guest shows on its serial log and on
// the agent's virtio-serial socket, talks to the placeholder agent (ping, then poweroff),
// and always leaves with QEMU gone. Prints one JSON report on stdout.
//
//   node boot-run.mjs --log FILE --sock FILE --timeout-ms N [--no-poweroff] -- qemu-system-x86_64 ARGS...
//
// Timings are milliseconds since QEMU was spawned:
//   firstConsoleByte  first byte on the serial console (kernel or /init, depending on "quiet")
//   initStarted       "cocoon-init: stage 1" (the kernel is done and ran /init)
//   agentExec         "cocoon-init: exec agent"
//   agentReady        the agent's ready line arrived on the virtio-serial socket
//   pong              the agent answered a ping sent over the socket
//   qemuExit          QEMU exited after the agent powered off
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

function parseArgs(argv) {
  const sep = argv.indexOf('--');
  if (sep < 0 || sep === argv.length - 1) throw new Error('usage: boot-run.mjs --log F --sock F --timeout-ms N -- qemu ARGS');
  const opts = { log: '', sock: '', timeoutMs: 60_000, poweroff: true, qemu: argv.slice(sep + 1) };
  const own = argv.slice(0, sep);
  for (let i = 0; i < own.length; i++) {
    const key = own[i];
    if (key === '--log') opts.log = own[++i];
    else if (key === '--sock') opts.sock = own[++i];
    else if (key === '--timeout-ms') opts.timeoutMs = Number(own[++i]);
    else if (key === '--no-poweroff') opts.poweroff = false;
    else throw new Error(`unknown option ${key}`);
  }
  if (!opts.log || !opts.sock) throw new Error('--log and --sock are required');
  return opts;
}

let qemuChild = null;
const killQemu = () => {
  if (qemuChild && qemuChild.exitCode === null && qemuChild.signalCode === null) qemuChild.kill('SIGKILL');
};
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killQemu();
    process.exit(128 + 2);
  });
}

const CONSOLE_MARKS = {
  initStarted: 'cocoon-init: stage 1',
  agentExec: 'cocoon-init: exec agent',
};

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  fs.rmSync(opts.log, { force: true });
  fs.rmSync(opts.sock, { force: true });

  const t0 = performance.now();
  const since = () => Math.round(performance.now() - t0);
  const report = { ok: false, timings: {}, messages: [], console: '', error: null, qemuExitCode: null };
  const mark = (name) => {
    if (report.timings[name] === undefined) report.timings[name] = since();
  };

  const qemu = spawn(opts.qemu[0], opts.qemu.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  qemuChild = qemu;
  let qemuOutput = '';
  qemu.stdout.on('data', (d) => (qemuOutput += d));
  qemu.stderr.on('data', (d) => (qemuOutput += d));
  // A QEMU stuck in a KVM ioctl may not die at once even from SIGKILL; stop waiting for it
  // a few seconds after the kill so the caller is never held past its bound.
  let giveUp;
  const exited = new Promise((resolve) => {
    giveUp = resolve;
    qemu.on('exit', (code, signal) => {
      mark('qemuExit');
      report.qemuExitCode = code ?? signal;
      resolve();
    });
  });
  let qemuGone = false;
  exited.then(() => (qemuGone = true));

  let stuck;
  const deadline = setTimeout(() => {
    report.error ??= `timeout after ${opts.timeoutMs} ms`;
    qemu.kill('SIGKILL');
    stuck = setTimeout(() => {
      report.error += '; QEMU still alive 5 s after SIGKILL';
      giveUp();
    }, 5000);
  }, opts.timeoutMs);

  // The serial log is a plain file that QEMU appends to; poll it.
  const watchConsole = (async () => {
    while (!qemuGone) {
      let text = '';
      try {
        text = fs.readFileSync(opts.log, 'utf8');
      } catch {}
      if (text.length > 0) mark('firstConsoleByte');
      for (const [name, needle] of Object.entries(CONSOLE_MARKS)) if (text.includes(needle)) mark(name);
      report.console = text;
      await sleep(5);
    }
    try {
      report.console = fs.readFileSync(opts.log, 'utf8');
    } catch {}
  })();

  // Connect as soon as QEMU has made the socket. Until the host side is connected, guest
  // writes to the port block, so connecting late loses nothing.
  const talk = (async () => {
    let sock;
    while (!qemuGone && !sock) {
      try {
        sock = await new Promise((resolve, reject) => {
          const s = net.createConnection(opts.sock, () => resolve(s));
          s.once('error', reject);
        });
      } catch {
        await sleep(5);
      }
    }
    if (!sock) return;
    mark('socketConnected');
    let pending = '';
    sock.setEncoding('utf8');
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        let msg;
        try {
          msg = JSON.parse(line);
        } catch {
          msg = { type: 'raw', line };
        }
        msg.hostMs = since();
        report.messages.push(msg);
        if (msg.type === 'ready') {
          mark('agentReady');
          sock.write('ping\n');
        } else if (msg.type === 'pong') {
          mark('pong');
        } else if (msg.type === 'check') {
          mark('checkDone');
          if (opts.poweroff) sock.write('poweroff\n');
        }
      }
    });
    await exited;
    sock.destroy();
  })();

  await exited;
  clearTimeout(deadline);
  clearTimeout(stuck);
  await Promise.all([watchConsole, talk]);
  report.qemuOutput = qemuOutput.trim();
  report.ok = report.error === null && report.timings.agentReady !== undefined;
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  // Do not let a QEMU that ignored SIGKILL keep this process alive through its pipes.
  process.exit(0);
}

// Whatever happens, QEMU must not outlive this process.
main().catch((err) => {
  killQemu();
  process.stdout.write(JSON.stringify({ ok: false, error: String(err?.stack ?? err) }) + '\n');
  process.exitCode = 2;
});
