import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    // The JSON report feeds the plain "N passed, M failed" line that .ci/run prints.
    reporters: ["default", "json"],
    outputFile: { json: "reports/vitest.json" },
    // Separate processes: native memory and loop devices stay isolated per test file.
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
