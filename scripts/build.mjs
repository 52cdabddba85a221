// Build: generate protobuf code, type-check and emit (tests run from the emitted JS), then bundle
// each entry point into one file so that a shim `start` loads a single script.
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

const run = (cmd, args) => execFileSync(cmd, args, { stdio: "inherit" });
run("node_modules/.bin/buf", ["generate"]);
run("node_modules/.bin/tsc", ["-p", "."]);

// The guest ABI for guest/build.sh and the image's /init, from the one TypeScript module.
const { guestAbiShell } = await import("../dist/js/src/core/guest-abi.js");
mkdirSync("dist", { recursive: true });
writeFileSync("dist/guest-abi.sh", guestAbiShell());
// The launcher script sources the names it shares with Node from here (docs/start-protocol.md).
const { launcherFragment } = await import("../dist/js/src/shim/start-protocol.js");
writeFileSync("dist/start-protocol.sh", launcherFragment());

const entries = {
  "containerd-shim-cocoon-v2": "src/cli/shim-main.ts",
  "containerd-shim-cocoon-v2-full": "src/cli/shim-full-main.ts",
  cocoon: "src/cli/main.ts",
  "cocoon-agent": "src/agent/main.ts",
};
// `start` loads only what it runs: a runtime mode's code sits behind dynamic imports (RuntimeMode.create),
// which only the daemon (the full bundle) follows.
const lazyImportsStayOut = {
  name: "lazy-imports-stay-out",
  setup(b) {
    b.onResolve({ filter: /.*/ }, (args) => (args.kind === "dynamic-import" ? { path: args.path, external: true } : undefined));
  },
};
const lean = new Set(["containerd-shim-cocoon-v2"]);
await Promise.all(
  Object.entries(entries).map(([name, entry]) =>
    build({
      plugins: lean.has(name) ? [lazyImportsStayOut] : [],
      entryPoints: [entry],
      outfile: `dist/${name}.cjs`,
      bundle: true,
      platform: "node",
      target: "node20",
      format: "cjs",
      // koffi loads a prebuilt native module by path at run time; it cannot be inlined.
      external: ["koffi"],
      sourcemap: "linked",
      legalComments: "none",
      logOverride: { "empty-import-meta": "silent" },
      logLevel: "warning",
    }),
  ),
);
