/** The product version, from package.json (one source of truth). */
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
// src/version.ts and dist/version.js both sit one level below package.json.
const packageJson = require("../package.json") as { version: string };

export const VERSION: string = packageJson.version;
