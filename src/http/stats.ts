/**
 * Per-connection statistics, logged on CLOSE as the reference daemon does: for each
 * operation the number of requests, the time spent in them, and for data operations the
 * bytes moved and the rate. An admin reads a slow transfer's story from one line:
 * `CLOSE connection=7 client=10.0.0.5 seconds=12.402 requests=41 write="40 ops, 12.100 s, 10.00 GiB, 846.28 MiB/s" flush="1 ops, 0.020 s"`
 * (`seconds`: how long the connection was open; the rest of that time the client was idle).
 */
import type { LogFields } from "../log.js";
import { formatSize } from "../units.js";

/** Operation names by `METHOD pattern`, before a handler names it more precisely (zero, flush). */
const OPERATION_NAMES: Record<string, string> = {
  "GET /images/{id}": "read",
  "HEAD /images/{id}": "head",
  "PUT /images/{id}": "write",
  "PATCH /images/{id}": "patch",
  "OPTIONS /images/{id}": "options",
  "OPTIONS *": "options",
  "GET /images/{id}/extents": "extents",
  "GET /images/{id}/checksum": "checksum",
  "GET /images/{id}/checksum/algorithms": "algorithms",
  "GET /info/": "info",
  "PUT /tickets/{id}": "add",
  "GET /tickets/{id}": "status",
  "PATCH /tickets/{id}": "extend",
  "DELETE /tickets/{id}": "remove",
};

/** The operation a request performs; "invalid" for one that matched no route. */
export function operationName(method: string, pattern: string | undefined): string {
  return (pattern !== undefined && OPERATION_NAMES[`${method} ${pattern}`]) || "invalid";
}

interface Totals {
  count: number;
  seconds: number;
  bytes: number;
}

export class ConnectionStats {
  private readonly operations = new Map<string, Totals>();
  private requests = 0;
  private errors = 0;
  private readonly opened: number;

  /** `now`: milliseconds on a monotonic clock (tests pass their own). */
  constructor(private readonly now: () => number = () => performance.now()) {
    this.opened = now();
  }

  /** One finished request: its operation, seconds, bytes moved, and whether it failed. */
  record(operation: string, seconds: number, bytes: number, failed: boolean): void {
    this.requests++;
    if (failed) this.errors++;
    const totals = this.operations.get(operation) ?? { count: 0, seconds: 0, bytes: 0 };
    totals.count++;
    totals.seconds += seconds;
    totals.bytes += bytes;
    this.operations.set(operation, totals);
  }

  /** The CLOSE line's fields: `seconds` open, `requests`, `errors` when any, then one per operation. */
  fields(): LogFields {
    const fields: LogFields = { seconds: ((this.now() - this.opened) / 1000).toFixed(3), requests: this.requests };
    if (this.errors > 0) fields.errors = this.errors;
    for (const [name, { count, seconds, bytes }] of this.operations) {
      const parts = [`${count} ops`, `${seconds.toFixed(3)} s`];
      if (bytes > 0) {
        parts.push(formatSize(bytes));
        // Whole bytes per second: below 1 KiB/s formatSize prints the number as it is.
        if (seconds > 0) parts.push(`${formatSize(Math.round(bytes / seconds))}/s`);
      }
      fields[name] = parts.join(", ");
    }
    return fields;
  }
}
