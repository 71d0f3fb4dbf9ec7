// The page in headless Chromium: serves the built site with a model and reference rows from vae_export, reads the
// page's pixels back, compares them with the native decoder's, checks the single-sample time and keeps a screenshot.
// Usage: node browser_test.mjs --site DIR --model FILE.vaed --reference FILE.json --screenshot FILE.png
//        [--tolerance 1e-5] [--max-median-ms 1] [--result FILE.json]
import { createServer } from 'node:http';
import { readFile, writeFile } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../web/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
for (const needed of ['site', 'model', 'reference', 'screenshot']) {
  if (!args[needed]) {
    console.error(`browser_test: error: --${needed} is required`);
    process.exit(2);
  }
}
const tolerance = Number(args.tolerance ?? 1e-5);
const maxMedianMs = Number(args['max-median-ms'] ?? 1);
// Every path of the test is bounded: a page that never answers fails the test, it does not hang it.
const deadline = setTimeout(() => {
  console.error('browser_test: error: no result from the page within 120 s');
  process.exit(1);
}, 120_000);

const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };
const site = resolve(args.site);
// The site as a plain static server would give it, plus the model and the reference under the names the page asks for.
const server = createServer(async (req, res) => {
  const path = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
  const file = path === '/model.vaed' ? args.model : path === '/reference.json' ? args.reference : join(site, normalize(path === '/' ? '/index.html' : path));
  try {
    const body = await readFile(file);
    // Cross-origin isolation gives the page 5 µs timers instead of 100 µs ones; the page itself needs neither header.
    res.writeHead(200, {
      'Content-Type': types[extname(file)] ?? 'application/octet-stream',
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
    });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((done) => server.listen(0, '127.0.0.1', done));
const url = `http://127.0.0.1:${server.address().port}/index.html?reference=reference.json`;

let browser;
let failures = [];
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  const console_lines = [];
  page.on('console', (m) => console_lines.push(m.text()));
  page.on('pageerror', (e) => console_lines.push(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.vaeTestResult !== undefined, null, { timeout: 90_000 });
  const result = await page.evaluate(() => window.vaeTestResult);
  const reference = JSON.parse(await readFile(args.reference, 'utf8'));
  if (result.error) {
    failures.push(`the page failed: ${result.error}`);
  } else {
    let maxDiff = 0, at = -1;
    if (result.probabilities.length !== reference.probabilities.length)
      failures.push(`the page gave ${result.probabilities.length} pixel values, the reference has ${reference.probabilities.length}`);
    for (let i = 0; i < reference.probabilities.length; ++i) {
      const d = Math.abs(result.probabilities[i] - reference.probabilities[i]);
      if (!(d <= maxDiff)) [maxDiff, at] = [d, i];
    }
    if (!(maxDiff <= tolerance)) failures.push(`pixel ${at} differs from the native decoder's by ${maxDiff} (tolerance ${tolerance})`);
    if (!(result.single_ms.median <= maxMedianMs)) failures.push(`one sample takes ${result.single_ms.median} ms (median), more than ${maxMedianMs} ms`);
    const summary = {
      rows: result.rows, max_abs_diff: maxDiff, tolerance, page_kernels: result.isa, native_kernels: reference.kernels,
      single_sample_ms: result.single_ms, timer_isolated: result.isolated, browser: result.userAgent,
    };
    console.log(JSON.stringify(summary));
    if (args.result) await writeFile(args.result, JSON.stringify(summary, null, 2) + '\n');
  }
  // The screenshot shows the page as a user sees it once it has drawn (the reference run does not change the picture).
  await page.screenshot({ path: args.screenshot });
  if (failures.length) console.error(console_lines.join('\n'));
} catch (e) {
  failures.push(e.message.split('\n')[0]);
} finally {
  if (browser) await browser.close();
  server.close();
  clearTimeout(deadline);
}
for (const f of failures) console.error(`browser_test: error: ${f}`);
process.exit(failures.length ? 1 : 0);
