/**
 * Issue 13: the documentation that ships stays true to the code. Every configuration key of
 * the daemon and the proxy is in docs/configuration.md with its default; the README and docs
 * link only to files that exist and never to places users do not have.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { PROXY_DEFAULTS } from "../src/commands/profiles.js";
import { type Config, DAEMON_DEFAULTS, defaultWorkers } from "../src/config.js";

const root = new URL("..", import.meta.url).pathname;
const read = (path: string) => readFileSync(join(root, path), "utf8");

/** `| key | default | proxy | meaning |` rows of each `### [section]` table. */
function documentedKeys(): Map<string, Map<string, { daemon: string; proxy: string }>> {
  const sections = new Map<string, Map<string, { daemon: string; proxy: string }>>();
  let current: Map<string, { daemon: string; proxy: string }> | undefined;
  for (const line of read("docs/configuration.md").split("\n")) {
    const heading = /^### \[(\w+)\]$/.exec(line);
    if (heading) {
      current = new Map();
      sections.set(heading[1] as string, current);
      continue;
    }
    const row = /^\| `(\w+)` \| `(.*?)` \| (`(.*?)`)? ?\|/.exec(line);
    if (row && current)
      current.set(row[1] as string, { daemon: row[2] as string, proxy: row[4] ?? (row[2] as string) });
  }
  return sections;
}

/** A default as the tables write it: strings as they are, "" for empty, JSON for the NUL socket. */
function asDocumented(value: string | number | boolean): string {
  if (typeof value === "string")
    return value === "" || value.includes("\0") ? JSON.stringify(value).replace("\\u0000", "\\0") : value;
  return String(value);
}

/** How the tables write a default computed from the machine (issue 14). */
const WORKERS_FORMULA = "min(8, max(1, floor(cores / 2)))";

/** The default as the tables must write it. */
function documentedDefault(key: string, value: string | number | boolean): string {
  if (key === "poll_interval") return "1.0";
  if (key === "workers") return WORKERS_FORMULA;
  return asDocumented(value);
}

describe("13: documentation", () => {
  it("14.workers: the documented default of [daemon] workers is the one the daemon computes", () => {
    for (const cores of [1, 2, 3, 4, 16, 17, 64]) {
      expect(defaultWorkers(cores), `${cores} cores`).toBe(Math.min(8, Math.max(1, Math.floor(cores / 2))));
    }
    expect(DAEMON_DEFAULTS.daemon.workers).toBe(defaultWorkers());
  });

  it("13: every configuration key is in docs/configuration.md with its daemon and proxy default", () => {
    const documented = documentedKeys();
    for (const [section, values] of Object.entries(DAEMON_DEFAULTS) as [
      keyof Config,
      Record<string, string | number | boolean>,
    ][]) {
      for (const [key, value] of Object.entries(values)) {
        const row = documented.get(section)?.get(key);
        expect(row, `[${section}] ${key} is not documented in docs/configuration.md`).toBeDefined();
        const daemonDefault = documentedDefault(key, value);
        expect(row?.daemon, `[${section}] ${key} default`).toBe(daemonDefault);
        const proxyValue = (PROXY_DEFAULTS[section] as Record<string, string | number | boolean>)[key] as
          | string
          | number
          | boolean;
        const proxyDefault = documentedDefault(key, proxyValue);
        expect(row?.proxy, `[${section}] ${key} proxy default`).toBe(proxyDefault);
      }
    }
    // And nothing documented that the code does not have.
    for (const [section, keys] of documented) {
      for (const key of keys.keys()) {
        expect(Object.keys(DAEMON_DEFAULTS[section as keyof Config] ?? {}), `[${section}] ${key}`).toContain(key);
      }
    }
  });

  it("13: README and docs link only to files in the repository, never to ../shared", () => {
    const files = ["README.md", ...readdirSync(join(root, "docs")).map((name) => `docs/${name}`)];
    for (const file of files) {
      const text = read(file);
      expect(text, file).not.toMatch(/\.\.\/shared|\/work\/shared/);
      for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(#[^)]*)?\)/g)) {
        if (/^[a-z]+:/.test(target as string)) continue;
        expect(existsSync(join(root, dirname(file), target as string)), `${file} links to ${target}`).toBe(true);
      }
    }
  });
});
