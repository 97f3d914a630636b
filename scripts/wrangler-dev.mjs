// Runs `wrangler dev <args>` for scripts/dev.sh, on this terminal (its hotkeys work), and
// writes the URL it really serves on, from wrangler's own ready message, to the file named
// first. dev.sh prints its links only then, so they never name a port that another process
// took between a check and wrangler's bind. Ends as wrangler ends, with its status; passes
// on the signals that end it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';

const [urlFile, ...args] = process.argv.slice(2);
const child = spawn('wrangler', ['dev', ...args], { stdio: ['inherit', 'inherit', 'inherit', 'ipc'] });
child.on('message', (message) => {
  let event;
  try { event = typeof message === 'string' ? JSON.parse(message) : message; } catch { return; }
  if (event?.event !== 'DEV_SERVER_READY') return;
  // Written whole, then renamed: the reader never sees half a URL.
  fs.writeFileSync(`${urlFile}.tmp`, `http://${event.ip}:${event.port}\n`);
  fs.renameSync(`${urlFile}.tmp`, urlFile);
});
child.on('error', (e) => {
  console.error(`[dev] could not run wrangler: ${e.message}`);
  process.exit(1);
});
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => child.kill(signal));
