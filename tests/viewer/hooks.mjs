// ESM resolve hook: dicom-parser ships a minified UMD/CommonJS bundle whose named
// exports Node cannot detect, so `import * as dicomParser from 'dicom-parser'` (as
// the loader writes it) would see only `default`. A bundler (webpack/vite in OHIF)
// interops this transparently; here we point the specifier at a re-export shim.
const shim = new URL('./dicom-parser-shim.mjs', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'dicom-parser' && !context.parentURL?.endsWith('dicom-parser-shim.mjs')) {
    return { url: shim, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
