// The tar writer moved to src/cli/lab/tar.ts (the demo builds images too); re-exported for the tests.
export { createTar, type TarEntry, type TarEntryBase } from "../../src/cli/lab/tar.js";
