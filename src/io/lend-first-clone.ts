/**
 * A handle whose first clone is itself. A copy opens one handle on each image (size, extents,
 * verification) and then one clone per worker, so N workers cost N + 1 connections. An NBD
 * server admits a fixed number of clients (qemu-nbd `--shared=N`); the connection past its
 * limit is not refused but waits, unanswered, until the handshake times out. Lending the
 * first handle to the first worker keeps a copy within N connections for N workers: the NBD
 * backend pipelines, so the worker's reads and the planner's extent queries share it safely
 * (the Backend concurrency contract: distinct ranges may overlap in time on one handle).
 */
import type { Backend } from "./backend.js";
import { BackendFilter } from "./filter.js";

/**
 * Wraps `inner` so that its first clone() (again after that clone is closed) shares `inner`
 * instead of opening a new connection; later clones are real clones. Closing the shared
 * clone leaves `inner` open; closing the handle returned here closes `inner`.
 */
export function lendFirstClone(inner: Backend): Backend {
  return new Lender(inner);
}

class Lender extends BackendFilter {
  private lent = false;

  override async clone(): Promise<Backend> {
    if (this.lent) return this.inner.clone();
    this.lent = true;
    return new Loan(this.inner, () => {
      this.lent = false;
    });
  }
}

/** The lender's own handle, lent to one borrower: closing it gives it back. */
class Loan extends BackendFilter {
  private returned = false;

  constructor(
    inner: Backend,
    private readonly giveBack: () => void,
  ) {
    super(inner);
  }

  override clone(): Promise<Backend> {
    return this.inner.clone();
  }

  override async close(): Promise<void> {
    if (this.returned) return;
    this.returned = true;
    this.giveBack();
  }
}
