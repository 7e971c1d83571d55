/**
 * The union of byte ranges, for a ticket's `transferred`: overlapping reads count once.
 */
export class RangeList {
  /** Sorted, disjoint, non-adjacent [start, end) pairs. */
  private ranges: [number, number][] = [];

  /** Adds [start, end); empty ranges are ignored. */
  add(start: number, end: number): void {
    if (end <= start) return;
    const merged: [number, number][] = [];
    let placed = false;
    for (const [s, e] of this.ranges) {
      if (e < start) {
        merged.push([s, e]);
      } else if (end < s) {
        if (!placed) {
          merged.push([start, end]);
          placed = true;
        }
        merged.push([s, e]);
      } else {
        start = Math.min(start, s);
        end = Math.max(end, e);
      }
    }
    if (!placed) merged.push([start, end]);
    this.ranges = merged;
  }

  /** Total bytes covered. */
  total(): number {
    return this.ranges.reduce((sum, [s, e]) => sum + e - s, 0);
  }

  /** Total bytes covered by this list together with `extra` ranges, without changing it. */
  totalWith(extra: Iterable<[number, number]>): number {
    const copy = new RangeList();
    copy.ranges = this.ranges.map(([s, e]) => [s, e]);
    for (const [s, e] of extra) copy.add(s, e);
    return copy.total();
  }

  toArray(): [number, number][] {
    return this.ranges.map(([s, e]) => [s, e]);
  }
}
