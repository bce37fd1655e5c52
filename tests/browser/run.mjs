// Plays streams with hls.js and dash.js in Debian's chromium (driven by
// playwright-core) and checks from the page what really played.
//
//   node run.mjs --spec spec.json --out results.json
//   node run.mjs --player hls|dash --src MANIFEST_URL [--out-dir DIR]
//
// A spec is `{ "outDir", "cases": [{ "name", "player", "src", "checks":
// "full" | "failover" | "page" | "cors", "expectHeights": [..], "startupTimeoutMs" }] }`
// ("page" opens the demo page with `steering` and `title` instead of `src`;
// "cors" fetches each of `urls` from the page and fails on any it cannot read;
// `rate` and `maxBufferS` override the playback rate (4) and the player's buffer).
// Every case gets a verdict (`ok`, `failures`) with metrics, the page's
// console log and a screenshot; the exit code is 0 when the run itself
// worked, whatever the verdicts (the caller decides which case must pass).
// A "failover" case prints `{"event":"kill","host":H}` on stdout once the
// player is fetching from edge H and waits for a line `killed` on stdin.

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { startPageServer } from './serve.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
  '--mute-audio',
];
const RATE = 4;

class CheckFailed extends Error {}

function log(msg) {
  process.stderr.write(`browser: ${msg}\n`);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${JSON.stringify(a)}`);
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`${a} needs a value`);
    out[a.slice(2)] = v;
    i++;
  }
  return out;
}

/** Lines from stdin, one awaited at a time (the failover handshake). */
function stdinLines() {
  const rl = createInterface({ input: process.stdin });
  const queue = [];
  const waiters = [];
  rl.on('line', (l) => (waiters.length ? waiters.shift()(l) : queue.push(l)));
  rl.on('close', () => {
    while (waiters.length) waiters.shift()(null);
  });
  return {
    next(timeoutMs) {
      if (queue.length) return Promise.resolve(queue.shift());
      return new Promise((resolve) => {
        const t = setTimeout(() => resolve(null), timeoutMs);
        waiters.push((l) => {
          clearTimeout(t);
          resolve(l);
        });
      });
    },
    close: () => rl.close(),
  };
}

const stats = (page) => page.evaluate(() => window.vod.stats());

/**
 * Waits until `pred(stats, arg)` (evaluated in the page) holds or a fatal
 * error shows up, for at most `ms`; throws CheckFailed naming `what`.
 */
async function waitFor(page, what, ms, pred, arg) {
  const src = `(${pred.toString()})`;
  try {
    await page.waitForFunction(
      ([p, a]) => {
        const s = window.vod.stats();
        // eslint-disable-next-line no-eval
        return s.fatal || (0, eval)(p)(s, a);
      },
      [src, arg ?? null],
      { timeout: ms, polling: 100 },
    );
  } catch (e) {
    if (e.name !== 'TimeoutError') throw e;
    const s = await stats(page);
    throw new CheckFailed(`${what}: not within ${ms} ms (t=${s.currentTime.toFixed(2)} size=${s.videoWidth}x${s.videoHeight} frames=${s.decodedFrames} errors=${JSON.stringify(s.errors)})`);
  }
  const s = await stats(page);
  if (s.fatal) throw new CheckFailed(`${what}: fatal player error: ${s.fatal}`);
  return s;
}

/** Seeks back near the start when less than `need` seconds of content remain. */
async function ensureRoom(page, need) {
  const s = await stats(page);
  if (s.duration !== null && s.duration - s.currentTime < need) {
    await page.evaluate(() => window.vod.seek(0.5));
    await waitFor(page, 'seek back to the start', 15000, (s) => !s.seeking && s.currentTime < 5 && s.currentTime > 0.5);
  }
}

/** Starts playback and checks the first frames: the part every case runs. */
async function startPlayback(page, c, m) {
  const rate = c.rate ?? RATE;
  await page.evaluate(([k, s, r, o]) => window.vod.open(k, s, r, o), [c.player, c.src, rate, { maxBufferS: c.maxBufferS }]);
  const s = await waitFor(
    page,
    'startup (first decoded video frame)',
    c.startupTimeoutMs ?? 20000,
    // Either real video, or audio-only playback that has clearly started without any.
    (s) => (s.decodedFrames > 0 && s.videoWidth > 0 && s.currentTime > 0.2) || (s.currentTime > 2 && s.decodedFrames === 0),
  );
  if (s.decodedFrames === 0) throw new CheckFailed(`no decoded video frames after ${s.currentTime.toFixed(1)} s of playback (audio only?)`);
  if (!(s.videoWidth > 0 && s.videoHeight > 0)) throw new CheckFailed(`video size is ${s.videoWidth}x${s.videoHeight}`);
  m.startupMs = s.startupMs;
  m.firstSize = `${s.videoWidth}x${s.videoHeight}`;
  const t0 = s.currentTime;
  const f0 = s.decodedFrames;
  await waitFor(page, 'playback time advancing', 10000, (s, a) => s.currentTime > a[0] + 1 && s.decodedFrames > a[1], [t0, f0]);
}

async function checkRungs(page, c, m) {
  const levels = await page.evaluate(() => window.vod.levels());
  m.levels = levels.map((l) => ({ id: l.id, height: l.height, width: l.width, bitrate: l.bitrate }));
  if (levels.length === 0) throw new CheckFailed('the player lists no video rungs');
  if (c.expectHeights) {
    // Distinct heights: a rung may come in several codecs, and a player lists only those it can decode.
    const distinct = (hs) => [...new Set(hs)].sort((a, b) => a - b);
    const got = distinct(levels.map((l) => l.height));
    const want = distinct(c.expectHeights);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new CheckFailed(`the player lists rungs ${JSON.stringify(got)}, the ladder has ${JSON.stringify(want)}`);
    }
  }
  m.rungsSeen = [];
  const force = async (l, why) => {
    await ensureRoom(page, 10);
    const before = await stats(page);
    await page.evaluate((id) => window.vod.force(id), l.id);
    await waitFor(
      page,
      `${why}: rung ${l.height}p rendered`,
      15000,
      (s, a) => s.videoHeight === a[0] && s.decodedFrames > a[1] + 5 && Math.abs(s.currentTime - a[2]) > 0.5,
      [l.height, before.decodedFrames, before.currentTime],
    );
    m.rungsSeen.push(l.height);
  };
  // Every rung, highest first.
  for (const l of [...levels].reverse()) await force(l, 'every rung');
  // Seek to the middle and keep playing.
  await page.evaluate(() => window.vod.auto());
  const s = await stats(page);
  if (s.duration === null) throw new CheckFailed('the stream reports no duration');
  const mid = s.duration / 2;
  const t = Date.now();
  await page.evaluate((x) => window.vod.seek(x), mid);
  await waitFor(page, `seek to the middle (${mid.toFixed(1)} s) and keep playing`, 15000, (s, a) => !s.seeking && s.currentTime > a + 1 && s.currentTime < a + 30, mid);
  m.seekMs = Date.now() - t;
  // A forced low rung, then a forced high one.
  await force(levels[0], 'forced low');
  await force(levels[levels.length - 1], 'forced high');
}

async function checkFailover(page, c, m, stdin) {
  // Play a little from the first edge, with room left to play from the other one.
  await ensureRoom(page, 25);
  const t1 = (await stats(page)).currentTime;
  const s0 = await waitFor(page, 'fragments from an edge', 10000, (s, t) => s.fragHosts.length > 0 && s.currentTime > t + 1, t1);
  const host = s0.fragHosts[s0.fragHosts.length - 1].host;
  m.failover = { from: host };
  process.stdout.write(`${JSON.stringify({ event: 'kill', case: c.name, host })}\n`);
  const ack = await stdin.next(15000);
  if (ack !== 'killed') throw new CheckFailed(`the harness did not confirm killing ${host} (got ${JSON.stringify(ack)})`);
  const killedAt = Date.now();
  const killedAtMs = await page.evaluate(() => performance.now() - window.vod.state.openedAt);
  const before = await stats(page);
  const s = await waitFor(
    page,
    `move off the killed edge ${host} and keep playing`,
    30000,
    (s, a) => {
      const moved = s.fragHosts.some((f, i) => i >= a[1] && f.host !== a[0]);
      return moved && s.currentTime > a[2] + 2 && s.stalls.every((x) => !x.open);
    },
    [host, s0.fragHosts.length, before.currentTime],
  );
  const after = s.fragHosts.filter((f) => f.host !== host);
  m.failover.to = after.length ? after[after.length - 1].host : null;
  m.failover.pathways = s.fragHosts.map((f) => f.pathway);
  const firstOther = s.fragHosts.find((f, i) => i >= s0.fragHosts.length && f.host !== host);
  // From the kill to the first fragment fetched from another edge.
  m.failover.switchMs = firstOther ? Math.max(0, Math.round(firstOther.at - killedAtMs)) : null;
  // From the kill to 2 s of content played past it.
  m.failover.recoveredMs = Date.now() - killedAt;
  m.failover.maxStallMs = Math.max(0, ...s.stalls.map((x) => x.ms));
  m.failover.stalls = s.stalls;
  m.failover.steeringPolls = s.steeringPolls;
}

/** The demo page as a person uses it: the form plays the title and the stats fill in. */
async function checkDemoPage(page, baseUrl, c, m) {
  const q = new URLSearchParams({ steering: c.steering, title: c.title, player: c.player, autoplay: '1' });
  await page.goto(`${baseUrl}/?${q}`, { timeout: 15000 });
  await waitFor(page, 'demo page playing', c.startupTimeoutMs ?? 20000, (s) => s.decodedFrames > 0 && s.currentTime > 0.5);
  try {
    await page.waitForFunction(
      () => ['s-rung', 's-buffer', 's-edge', 's-startup'].every((id) => document.getElementById(id).textContent !== '–'),
      null,
      { timeout: 5000, polling: 100 },
    );
  } catch {
    throw new CheckFailed('the stats panel did not fill in (rung, buffer, edge, startup)');
  }
  m.panel = await page.evaluate(() =>
    Object.fromEntries([...document.querySelectorAll('#stats tr')].map((r) => [r.cells[0].textContent, r.cells[1].textContent])),
  );
}

/**
 * Fetches each of `c.urls` from the page: a response without CORS headers
 * (a 302, an error) is a TypeError to the page, so its status is unreadable.
 */
async function checkCors(page, baseUrl, c, m) {
  await page.goto(`${baseUrl}/`, { timeout: 15000 });
  m.fetches = await page.evaluate(async (urls) => {
    const out = [];
    for (const url of urls) {
      try {
        const r = await fetch(url, { signal: AbortSignal.timeout(10000) });
        out.push({ url, status: r.status, finalUrl: r.url });
      } catch (e) {
        out.push({ url, blocked: `${e.name}: ${e.message}` });
      }
    }
    return out;
  }, c.urls);
  const blocked = m.fetches.filter((f) => f.blocked);
  if (blocked.length) throw new CheckFailed(`the page could not read: ${blocked.map((f) => `${f.url} (${f.blocked})`).join(', ')}`);
}

async function runCase(context, baseUrl, c, outDir, stdin) {
  const page = await context.newPage();
  const consoleLog = [];
  const t0 = Date.now();
  const stamp = () => `${((Date.now() - t0) / 1000).toFixed(2)}s`;
  page.on('console', (msg) => consoleLog.push(`${stamp()} ${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => consoleLog.push(`${stamp()} pageerror: ${err.message}`));
  page.on('requestfailed', (r) => consoleLog.push(`${stamp()} requestfailed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
  page.on('response', (r) => {
    if (r.status() >= 400) consoleLog.push(`${stamp()} HTTP ${r.status()} ${r.url()}`);
  });
  const m = {};
  const failures = [];
  let screenshot = null;
  try {
    if (c.checks === 'page') {
      await checkDemoPage(page, baseUrl, c, m);
    } else if (c.checks === 'cors') {
      await checkCors(page, baseUrl, c, m);
    } else {
      await page.goto(`${baseUrl}/`, { timeout: 15000 });
      await startPlayback(page, c, m);
      if (c.checks === 'failover') await checkFailover(page, c, m, stdin);
      else await checkRungs(page, c, m);
    }
  } catch (e) {
    failures.push(e instanceof CheckFailed ? e.message : `runner error: ${e.stack || e}`);
  }
  try {
    const s = await stats(page);
    m.final = {
      currentTime: s.currentTime,
      size: `${s.videoWidth}x${s.videoHeight}`,
      decodedFrames: s.decodedFrames,
      droppedFrames: s.droppedFrames,
      heightsRendered: s.heightsRendered,
      fragHosts: s.fragHosts,
      stalls: s.stalls,
      errors: s.errors,
      steeringPolls: s.steeringPolls,
      pathwayPriority: s.pathwayPriority,
    };
    // A fatal error after the last check still fails the case.
    if (s.fatal && failures.length === 0) failures.push(`fatal player error: ${s.fatal}`);
    screenshot = join(outDir, `${c.name}.png`);
    if (c.checks === 'page') await page.screenshot({ path: screenshot, fullPage: true, timeout: 5000 });
    else if (c.checks !== 'cors') await page.locator('#video').screenshot({ path: screenshot, timeout: 5000 });
    else screenshot = null;
  } catch (e) {
    consoleLog.push(`${stamp()} runner: final stats/screenshot failed: ${e.message}`);
  }
  await page.evaluate(() => window.vod?.close()).catch(() => {});
  await page.close();
  return { name: c.name, player: c.player, src: c.src, ok: failures.length === 0, failures, metrics: m, wallMs: Date.now() - t0, screenshot, console: consoleLog };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let spec;
  if (args.spec) spec = JSON.parse(readFileSync(args.spec, 'utf8'));
  else if (args.src && args.player) spec = { cases: [{ name: `${args.player}-adhoc`, player: args.player, src: args.src, checks: 'full' }] };
  else throw new Error('usage: node run.mjs --spec SPEC.json [--out RESULTS.json] | --player hls|dash --src URL [--out-dir DIR]');
  const outDir = args['out-dir'] || spec.outDir || join(process.cwd(), 'browser-out');
  mkdirSync(outDir, { recursive: true });
  for (const c of spec.cases) {
    if (!['hls', 'dash'].includes(c.player)) throw new Error(`case ${c.name}: player must be hls or dash`);
    if (!/^[a-z0-9_-]+$/.test(c.name)) throw new Error(`case name ${JSON.stringify(c.name)} must be [a-z0-9_-]+`);
  }
  const { server, url } = await startPageServer();
  const profile = mkdtempSync(join(tmpdir(), 'vod-chromium-'));
  const stdin = stdinLines();
  const results = [];
  let context;
  try {
    const t = Date.now();
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1000, height: 900 },
    });
    log(`chromium ${context.browser()?.version() ?? ''} up in ${Date.now() - t} ms; page at ${url}`);
    for (const c of spec.cases) {
      const r = await runCase(context, url, c, outDir, stdin);
      log(`${r.ok ? 'ok  ' : 'FAIL'} ${r.name} (${r.wallMs} ms)${r.ok ? '' : `: ${r.failures.join('; ')}`}`);
      results.push(r);
    }
  } finally {
    await context?.close().catch(() => {});
    server.close();
    stdin.close();
    rmSync(profile, { recursive: true, force: true });
  }
  const report = { chromium: CHROMIUM, cases: results };
  if (args.out) writeFileSync(args.out, JSON.stringify(report, null, 2));
  else process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
}

main().catch((e) => {
  log(`error: ${e.stack || e}`);
  process.exit(1);
});
