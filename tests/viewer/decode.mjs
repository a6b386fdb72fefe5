// Decode DICOM files exactly as the OHIF / Cornerstone3D viewer does, in Node.
//
// The whole viewer load path of @cornerstonejs/dicom-image-loader runs unmodified:
// core imageLoader.loadImage('dicomfile:N?frame=F') -> wadouri loader (dicom-parser
// dataset, getPixelData frame extraction, metadata provider) -> createImage ->
// decodeImageFrame -> web-worker task `decodeTask` (the loader's own worker module:
// RLE, CharLS, OpenJPEG, OpenJPH, libjxl wasm, native) -> postProcessDecodedPixels
// -> setPixelDataType -> convertColorSpace. Only the browser APIs it touches are
// stood in for: FileReader, document.createElement('canvas') (2d ImageData),
// Worker (an in-process MessageChannel endpoint running the loader's worker module
// through comlink, so arguments are structured-cloned as in a browser) and fetch for
// file: URLs (libjxl is a web-only Emscripten build that fetches its .wasm).
//
// Request on stdin: a JSON list of items, or {"items": [...], "metadata": "legacy" |
// "naturalized", "useRGBA": false, "preScale": true}. Item: {"path", "frame" (0-based,
// default 0), "decodeLevel" (optional), "out" (optional), "useRGBA", "preScale"}.
// useRGBA false is StackViewport's GPU path (true: its CPU path, 4 samples a pixel);
// preScale true (the viewer's default) applies Rescale Slope/Intercept in the loader,
// false returns the stored values.
// For each item the decoded typed array's bytes are written to `out` or
// `<path>.<frame>[.<level>].bin`, and one JSON line is printed on stdout.
//
// "metadata": "legacy" (default) is init({useLegacyMetadataProvider: true}): the
// dicom-parser DataSet path that viewers loading local Part 10 files use;
// "naturalized" is the loader's v5 default (@cornerstonejs/metadata provider chain).
import { register } from 'node:module';
import { readFileSync, writeFileSync, mkdirSync, symlinkSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

register('./hooks.mjs', import.meta.url);

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

// ---- browser stand-ins --------------------------------------------------------
class FileReaderStandIn {
  readAsArrayBuffer(blob) {
    blob.arrayBuffer().then(
      (result) => this.onload?.({ target: { result } }),
      (error) => this.onerror?.(error),
    );
  }
}
globalThis.FileReader = FileReaderStandIn;

function createImageData(width, height) {
  return { width, height, colorSpace: 'srgb', data: new Uint8ClampedArray(width * height * 4) };
}
globalThis.document = {
  createElement(tag) {
    if (tag !== 'canvas') throw new Error(`document.createElement(${tag}) not stood in for`);
    return {
      width: 300,
      height: 150,
      getContext: () => ({ createImageData, putImageData() {}, drawImage() {} }),
    };
  },
};

// The wasm files, under the names the loader asks for when given a wasmBasePath
// (what a bundler does with `new URL('@cornerstonejs/codec-x/wasm', import.meta.url)`).
const wasmFiles = {
  'charlswasm_decode.wasm': '@cornerstonejs/codec-charls/decodewasm',
  'openjpegwasm_decode.wasm': '@cornerstonejs/codec-openjpeg/decodewasm',
  'openjphjs.wasm': '@cornerstonejs/codec-openjph/wasm',
  'jpegxlwasm_decode.wasm': '@cornerstonejs/codec-libjxl/decodewasm',
  'libjpegturbowasm_decode.wasm': '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm',
};
const wasmDir = join(here, 'node_modules', '.viewer-wasm');
mkdirSync(wasmDir, { recursive: true });
for (const [name, specifier] of Object.entries(wasmFiles)) {
  const link = join(wasmDir, name);
  if (!existsSync(link)) symlinkSync(require.resolve(specifier), link);
}
const wasmBasePath = pathToFileURL(wasmDir).href + '/';

// Only local files: the tests never send traffic off the machine.
globalThis.fetch = async (input) => {
  const url = String(input instanceof Request ? input.url : input);
  if (url.startsWith('file:')) {
    const body = readFileSync(fileURLToPath(url));
    const type = url.endsWith('.wasm') ? 'application/wasm' : 'application/octet-stream';
    return new Response(body, { status: 200, headers: { 'Content-Type': type } });
  }
  throw new Error(`fetch of ${url} refused: the viewer test reads local files only`);
};

const workerPorts = [];
globalThis.Worker = class WorkerStandIn {
  constructor(url) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    workerPorts.push(port1, port2);
    // The same object the worker module exposes to comlink (decodeImageFrameWorker.js).
    const ready = Promise.all([import(String(url)), import('comlink')]);
    ready.then(([worker, comlink]) => {
      comlink.expose(
        {
          decodeTask({ imageFrame, transferSyntax, decodeConfig, options, pixelData, callbackFn }) {
            return worker.decodeImageFrame(
              imageFrame,
              transferSyntax,
              pixelData,
              decodeConfig,
              options,
              callbackFn,
            );
          },
        },
        port2,
      );
    });
  }
  postMessage(...args) {
    this.port.postMessage(...args);
  }
  addEventListener(...args) {
    this.port.addEventListener(...args);
  }
  removeEventListener(...args) {
    this.port.removeEventListener(...args);
  }
  start() {
    this.port.start();
  }
  terminate() {
    this.port.close();
  }
};

// ---- loader -------------------------------------------------------------------
const readStdin = async () => {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
};

const request = JSON.parse(await readStdin());
const items = Array.isArray(request) ? request : request.items;
const metadataMode = (!Array.isArray(request) && request.metadata) || 'legacy';
const defaultUseRGBA = !Array.isArray(request) && request.useRGBA === true;
const defaultPreScale = Array.isArray(request) || request.preScale !== false;

// Quiet the loader's own logging so stdout stays one JSON line per item.
const log = console.log;
console.log = console.info = console.debug = console.warn = (...args) =>
  process.stderr.write(args.map(String).join(' ') + '\n');

const core = await import('@cornerstonejs/core');
const loader = await import('@cornerstonejs/dicom-image-loader');
loader.init({
  maxWebWorkers: 1,
  useLegacyMetadataProvider: metadataMode === 'legacy',
  wasmBasePath,
});

const version = JSON.parse(
  readFileSync(join(here, 'node_modules/@cornerstonejs/dicom-image-loader/package.json'), 'utf8'),
).version;

function describeError(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  if (error && typeof error === 'object' && 'error' in error) return describeError(error.error);
  if (typeof error === 'object') {
    try {
      return JSON.stringify(error);
    } catch {
      return String(error);
    }
  }
  return String(error);
}

const fileIds = new Map();
function imageIdFor(path, frame) {
  let base = fileIds.get(path);
  if (!base) {
    const bytes = readFileSync(path);
    base = loader.wadouri.fileManager.add(new File([bytes], path.split('/').pop()));
    fileIds.set(path, base);
  }
  return `${base}?frame=${frame + 1}`;
}

for (const item of items) {
  const frame = item.frame ?? 0;
  const level = item.decodeLevel;
  const out = item.out ?? `${item.path}.${frame}${level === undefined || level === null ? '' : `.${level}`}.bin`;
  const result = { path: item.path, frame, decodeLevel: level ?? null, out, loaderVersion: version };
  try {
    const imageId = imageIdFor(item.path, frame);
    // Options of StackViewport's GPU path (getLoaderImageOptions): useRGBA false.
    const options = { useRGBA: item.useRGBA ?? defaultUseRGBA, priority: 5, requestType: 'interaction' };
    if (level !== undefined && level !== null) options.decodeLevel = level;
    if (!(item.preScale ?? defaultPreScale)) options.preScale = { enabled: false };
    const image = await core.imageLoader.loadImage(imageId, options);
    const pixels = image.getPixelData();
    const frameInfo = image.imageFrame ?? {};
    writeFileSync(out, new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength));
    Object.assign(result, {
      ok: true,
      rows: image.rows,
      columns: image.columns,
      arrayType: pixels.constructor.name,
      samples: pixels.length / (image.rows * image.columns),
      numberOfComponents: image.numberOfComponents,
      color: image.color,
      rgba: image.rgba,
      photometricInterpretation: frameInfo.photometricInterpretation,
      samplesPerPixel: frameInfo.samplesPerPixel,
      planarConfiguration: frameInfo.planarConfiguration ?? null,
      bitsAllocated: frameInfo.bitsAllocated,
      bitsStored: frameInfo.bitsStored,
      pixelRepresentation: frameInfo.pixelRepresentation,
      minPixelValue: image.minPixelValue,
      maxPixelValue: image.maxPixelValue,
      windowCenter: image.windowCenter ?? null,
      windowWidth: image.windowWidth ?? null,
      slope: image.slope,
      intercept: image.intercept,
      preScaled: Boolean(image.preScale?.scaled),
      decodeTimeInMS: image.decodeTimeInMS ?? null,
    });
  } catch (error) {
    Object.assign(result, { ok: false, error: describeError(error) });
  }
  log(JSON.stringify(result));
}

for (const port of workerPorts) port.close();
process.exitCode = 0;
