// The page: loads decoder.wasm and a web decoder file (vae_export), then redraws the single sample and the grid live.
// With ?reference=FILE.json it instead decodes that file's inputs and publishes the pixels and timings for the browser
// test (tests/web/browser_test.mjs) as window.vaeTestResult.
'use strict';

const PIXELS = 784;
const SIDE = 28;
const GRID = 10;          // the grid is GRID digits × GRID noise draws
const SLIDERS = 4;        // latent dimensions under the user's hand
const TIMED_CALLS = 1000; // single-sample decodes timed in test mode

const params = new URLSearchParams(location.search);
const modelUrl = params.get('model') || 'model.vaed';

// A seeded standard-normal source (mulberry32 + Box-Muller), so "New noise" is reproducible from its seed.
function normals(seed, count) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform())), a = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(a);
    if (i + 1 < count) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

class Decoder {
  constructor(module, bytes, maxBatch) {
    this.m = module;
    const ptr = module._malloc(bytes.length);
    module.HEAPU8.set(bytes, ptr);
    this.handle = module._vae_open(ptr, bytes.length, maxBatch);
    module._free(ptr);
    const error = module.UTF8ToString(module._vae_error(this.handle));
    if (error) throw new Error(error);
    this.latent = module._vae_latent(this.handle);
    this.classes = module._vae_classes(this.handle);
    this.width = this.latent + this.classes;
    this.maxBatch = maxBatch;
    this.isa = module.UTF8ToString(module._vae_isa(this.handle));
    this.about = module.UTF8ToString(module._vae_about(this.handle));
  }

  // rows [n × width] (z, then the label weights) → pixel probabilities [n × 784], a view valid until the next call.
  decode(rows, n) {
    const inputs = this.m._vae_inputs(this.handle) >> 2;
    this.m.HEAPF32.set(rows.subarray(0, n * this.width), inputs);
    const pointer = this.m._vae_decode(this.handle, n);
    if (!pointer) throw new Error(`cannot decode ${n} rows at once (at most ${this.maxBatch})`);
    const out = pointer >> 2;
    return this.m.HEAPF32.subarray(out, out + n * PIXELS);
  }
}

function draw(ctx, probabilities, index, x, y) {
  const image = ctx.createImageData(SIDE, SIDE);
  for (let p = 0; p < PIXELS; ++p) {
    const v = Math.round(255 * probabilities[index * PIXELS + p]);
    image.data[4 * p] = image.data[4 * p + 1] = image.data[4 * p + 2] = v;
    image.data[4 * p + 3] = 255;
  }
  ctx.putImageData(image, x, y);
}

function median(values) {
  const s = Float64Array.from(values).sort();
  return s.length % 2 ? s[(s.length - 1) / 2] : 0.5 * (s[s.length / 2 - 1] + s[s.length / 2]);
}

function quantile(values, q) {
  const s = Float64Array.from(values).sort();
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

// Test mode: the reference rows decoded in batches, then TIMED_CALLS single-sample decodes of its first row, each timed.
function runReference(decoder, reference) {
  if (reference.dec_in !== decoder.width) throw new Error(`reference rows are ${reference.dec_in} wide, the decoder takes ${decoder.width}`);
  const inputs = Float32Array.from(reference.inputs);
  const probabilities = new Float32Array(reference.rows * PIXELS);
  for (let first = 0; first < reference.rows; first += decoder.maxBatch) {
    const n = Math.min(decoder.maxBatch, reference.rows - first);
    probabilities.set(decoder.decode(inputs.subarray(first * decoder.width), n), first * PIXELS);
  }
  const one = inputs.subarray(0, decoder.width);
  const times = [];
  const start = performance.now();
  for (let i = 0; i < TIMED_CALLS; ++i) {
    const t0 = performance.now();
    decoder.decode(one, 1);
    times.push(performance.now() - t0);
  }
  const total = performance.now() - start;
  return {
    isa: decoder.isa,
    rows: reference.rows,
    probabilities: Array.from(probabilities),
    single_ms: { median: median(times), p99: quantile(times, 0.99), mean: total / TIMED_CALLS, calls: TIMED_CALLS },
    isolated: self.crossOriginIsolated === true,
    userAgent: navigator.userAgent,
  };
}

function buildControls(decoder, state, redraw) {
  const digits = document.getElementById('digits');
  if (decoder.classes === 0) {
    digits.hidden = true;
  } else {
    for (let d = 0; d < decoder.classes; ++d) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = String(d);
      b.setAttribute('aria-pressed', String(d === state.digit));
      b.addEventListener('click', () => {
        state.digit = d;
        for (const other of digits.querySelectorAll('button')) other.setAttribute('aria-pressed', String(other === b));
        redraw();
      });
      digits.appendChild(b);
    }
  }
  const latents = document.getElementById('latents');
  for (let j = 0; j < Math.min(SLIDERS, decoder.latent); ++j) {
    const label = document.createElement('label');
    label.className = 'slider';
    label.textContent = `z${j}`;
    const input = Object.assign(document.createElement('input'), { type: 'range', min: -3, max: 3, step: 0.01, value: 0 });
    input.id = `z${j}`;
    const output = document.createElement('output');
    output.textContent = '0.00';
    input.addEventListener('input', () => {
      state.sliders[j] = Number(input.value);
      output.textContent = state.sliders[j].toFixed(2);
      redraw();
    });
    label.append(input, output);
    latents.appendChild(label);
    state.sliders.push(0);
  }
  const temperature = document.getElementById('temperature');
  temperature.addEventListener('input', () => {
    state.temperature = Number(temperature.value);
    document.getElementById('temperature-value').textContent = state.temperature.toFixed(2);
    redraw();
  });
  document.getElementById('reseed').addEventListener('click', () => {
    state.seed += 1;
    redraw();
  });
}

// Row i of the grid or the single sample: noise column `column` × temperature, the sliders' dimensions set, digit one-hot.
function fillRow(decoder, state, noise, column, digit, out, row) {
  const base = row * decoder.width;
  for (let j = 0; j < decoder.latent; ++j) out[base + j] = state.temperature * noise[column * decoder.latent + j];
  for (let j = 0; j < state.sliders.length; ++j) out[base + j] = state.sliders[j];
  for (let c = 0; c < decoder.classes; ++c) out[base + decoder.latent + c] = c === digit ? 1 : 0;
}

function interactive(decoder) {
  const state = { digit: 0, sliders: [], temperature: 1, seed: 1 };
  const single = document.getElementById('single').getContext('2d');
  const grid = document.getElementById('grid').getContext('2d');
  const rows = new Float32Array(GRID * GRID * decoder.width);
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      // noise columns: the grid's (shared down a column for a conditional model, one per cell otherwise), then the single's
      const noise = normals(state.seed, (GRID * GRID + 1) * decoder.latent);
      fillRow(decoder, state, noise, GRID * GRID, state.digit, rows, 0);
      let t0 = performance.now();
      draw(single, decoder.decode(rows, 1), 0, 0, 0);
      const singleMs = performance.now() - t0;
      for (let i = 0; i < GRID * GRID; ++i) {
        const digit = decoder.classes ? Math.floor(i / GRID) % decoder.classes : -1;
        fillRow(decoder, state, noise, decoder.classes ? i % GRID : i, digit, rows, i);
      }
      t0 = performance.now();
      const pixels = decoder.decode(rows, GRID * GRID);
      const gridMs = performance.now() - t0;
      for (let i = 0; i < GRID * GRID; ++i) draw(grid, pixels, i, (i % GRID) * SIDE, Math.floor(i / GRID) * SIDE);
      document.getElementById('timing').textContent =
        `one sample: ${singleMs.toFixed(2)} ms · grid: ${(gridMs / (GRID * GRID)).toFixed(3)} ms per sample (${gridMs.toFixed(1)} ms for 100) · ${decoder.isa}`;
    });
  };
  buildControls(decoder, state, redraw);
  redraw();
  return redraw;
}

const nextFrame = () => new Promise((done) => requestAnimationFrame(done));

async function main() {
  const status = document.getElementById('status');
  try {
    const [module, response] = await Promise.all([createDecoderModule(), fetch(modelUrl)]);
    if (!response.ok) throw new Error(`${modelUrl}: HTTP ${response.status} (write one with vae_export --out ${modelUrl})`);
    const decoder = new Decoder(module, new Uint8Array(await response.arrayBuffer()), GRID * GRID);
    const about = JSON.parse(decoder.about || '{}');
    document.getElementById('about').textContent = `${about.architecture || ''} · epoch ${about.epoch ?? '?'} · ${about.checkpoint || modelUrl}`;
    status.textContent = `latent ${decoder.latent}, ${decoder.classes || 'no'} classes, kernels ${decoder.isa}`;
    const redraw = interactive(decoder);
    const referenceUrl = params.get('reference');
    if (referenceUrl) {
      const reference = await (await fetch(referenceUrl)).json();
      const result = runReference(decoder, reference);
      // Drawn again once the engine has optimised the decoder, so a screenshot shows what a redraw costs.
      redraw();
      await nextFrame();
      await nextFrame();
      window.vaeTestResult = result;
    }
  } catch (e) {
    status.textContent = `error: ${e.message}`;
    status.className = 'error';
    window.vaeTestResult = { error: e.message };
  }
}

main();
