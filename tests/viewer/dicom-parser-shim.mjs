// Named re-exports of the CommonJS dicom-parser bundle (see hooks.mjs).
import { createRequire } from 'node:module';

const dicomParser = createRequire(import.meta.url)('dicom-parser');

export default dicomParser;
export const {
  isStringVr, isPrivateTag, parsePN, parseTM, parseDA, explicitElementToString,
  explicitDataSetToJS, createJPEGBasicOffsetTable, parseDicomDataSetExplicit,
  parseDicomDataSetImplicit, readFixedString, alloc, version, bigEndianByteArrayParser,
  ByteStream, sharedCopy, DataSet, findAndSetUNElementLength, findEndOfEncapsulatedElement,
  findItemDelimitationItemAndSetElementLength, littleEndianByteArrayParser, parseDicom,
  readDicomElementExplicit, readDicomElementImplicit, readEncapsulatedImageFrame,
  readEncapsulatedPixelData, readEncapsulatedPixelDataFromFragments, readPart10Header,
  readSequenceItemsExplicit, readSequenceItemsImplicit, readSequenceItem, readTag,
} = dicomParser;
