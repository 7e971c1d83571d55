/**
 * Monotonic time in seconds. Ticket expiry and idle time use it so that wall-clock jumps do
 * not expire or revive tickets; tests inject a FakeClock instead of sleeping.
 */

export interface Clock {
  /** Seconds since an arbitrary epoch; never goes backwards. */
  now(): number;
}

/** CLOCK_MONOTONIC (seconds since boot), like upstream's time.monotonic(). */
export const monotonicClock: Clock = {
  now: () => Number(process.hrtime.bigint()) / 1e9,
};

/** A clock that moves only when told to. */
export class FakeClock implements Clock {
  constructor(private seconds = 1_000_000) {}
  now(): number {
    return this.seconds;
  }
  advance(seconds: number): void {
    this.seconds += seconds;
  }
}
