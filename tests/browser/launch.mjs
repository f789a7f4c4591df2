// Headless Chromium as every browser test here runs it: a fresh profile, no
// sandbox (root in CI), and no background traffic to the closed network.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

// Returns the browser context, with `options` (playwright's) added;
// `close(context)` ends it and removes the profile.
export async function launch(options = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    ...options,
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--headless",
      "--disable-gpu",
      // Chromium may otherwise refuse requests to loopback.
      "--disable-features=LocalNetworkAccessChecks",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  profiles.set(context, userDataDir);
  return context;
}

const profiles = new Map();

export async function close(context) {
  await context.close();
  fs.rmSync(profiles.get(context), { recursive: true, force: true });
}
