#!/usr/bin/env node
// Prints the plain "N passed, M failed, K skipped" line CI reads, from vitest's JSON report.
import { existsSync, readFileSync } from "node:fs";

const path = process.argv[2] ?? "reports/vitest.json";
if (!existsSync(path)) {
  console.log(`no test report at ${path}: the build, typecheck or lint step failed before the tests ran`);
  console.log("0 passed, 0 failed");
  process.exit(0);
}
const report = JSON.parse(readFileSync(path, "utf8"));
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
// A test file that fails to load counts as a failure even though it ran no test.
const brokenFiles = (report.testResults ?? []).filter(
  (file) => file.status === "failed" && (file.assertionResults ?? []).length === 0,
).length;
console.log(`${report.numPassedTests} passed, ${report.numFailedTests + brokenFiles} failed, ${skipped} skipped`);
