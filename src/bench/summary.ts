/**
 * The closing table of `npm run bench` without a suite: one row per target of issue 14, each
 * with the measured value, the target and whether it holds. Suites that know their targets
 * return such rows from `run`; the runner prints them together at the end.
 */
import { markdownTable } from "./harness.js";

/** One measured target. */
export interface TargetRow {
  /** What was measured: "HTTPS PUT daemon CPU-s/GiB", "proxy GET ÷ direct". */
  measure: string;
  /** Where: "Node 20 (bin/imageio)", "embedded (dist/imageio)". */
  runtime: string;
  /** The measured value, formatted, with context (e.g. the MiB/s beside a CPU figure). */
  value: string;
  /** The target as text ("≤ 1.0"), or "-" when the row only reports. */
  target: string;
  /** Whether the target holds; undefined when the row has no target or was not measured. */
  met: boolean | undefined;
}

/** "✓", "✗", or "-" for a row without a verdict. */
function verdict(met: boolean | undefined): string {
  return met === undefined ? "-" : met ? "✓" : "✗";
}

/** The summary as a Markdown table, with a count of targets met. */
export function summaryTable(rows: TargetRow[]): string {
  const judged = rows.filter((row) => row.met !== undefined);
  const met = judged.filter((row) => row.met === true).length;
  return [
    markdownTable(
      ["measure", "runtime", "value", "target", ""],
      rows.map((row) => [row.measure, row.runtime, row.value, row.target, verdict(row.met)]),
    ),
    "",
    `${met} of ${judged.length} targets met.`,
  ].join("\n");
}
