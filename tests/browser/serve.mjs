// A tiny static server for the player page: the page itself plus hls.js and
// dash.js from node_modules. The browser tests start it in-process; the demo
// runs `node serve.mjs --listen 127.0.0.1:0` and reads the
// "page listening on ADDR" line it prints to stderr.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** URL path -> file on disk. Nothing else is served. */
const FILES = {
  '/': join(here, 'page', 'index.html'),
  '/index.html': join(here, 'page', 'index.html'),
  '/player.js': join(here, 'page', 'player.js'),
  '/vendor/hls.min.js': join(here, 'node_modules', 'hls.js', 'dist', 'hls.min.js'),
  '/vendor/dash.all.min.js': join(here, 'node_modules', 'dashjs', 'dist', 'modern', 'umd', 'dash.all.min.js'),
};

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };

function contentType(file) {
  const dot = file.lastIndexOf('.');
  return TYPES[file.slice(dot)] ?? 'application/octet-stream';
}

/** Starts the server on `host:port` (port 0 = any); resolves to `{ server, url }`. */
export function startPageServer(host = '127.0.0.1', port = 0) {
  const server = createServer(async (req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const file = FILES[path];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' }).end('method not allowed\n');
      return;
    }
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (!file) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path}\n`);
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': contentType(file), 'cache-control': 'no-cache' });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch (e) {
      const hint = file.includes('node_modules') ? ' (run `npm ci` in tests/browser, or `cargo xtask deps`)' : '';
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`cannot read ${file}: ${e.message}${hint}\n`);
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const a = server.address();
      resolve({ server, url: `http://${a.address}:${a.port}` });
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const i = process.argv.indexOf('--listen');
  const listen = i > 0 ? process.argv[i + 1] : '127.0.0.1:0';
  const colon = listen.lastIndexOf(':');
  const host = listen.slice(0, colon);
  const port = Number(listen.slice(colon + 1));
  if (!host || !Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`serve.mjs: --listen wants HOST:PORT, got ${JSON.stringify(listen)}`);
    process.exit(2);
  }
  const { server } = await startPageServer(host, port);
  const a = server.address();
  console.error(`page listening on ${a.address}:${a.port}`);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
