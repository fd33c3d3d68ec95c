// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) loads the playground
// from diffmesh-http, submits a prompt and checks the rendered image; saves a screenshot.
//   DIFFMESH_HTTP_URL=http://127.0.0.1:P DIFFMESH_HTTP_KEY=... DIFFMESH_MODEL=trivial \
//   DIFFMESH_SCREENSHOT=out/playground.png node playground_test.mjs
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const url = process.env.DIFFMESH_HTTP_URL;
const screenshot = process.env.DIFFMESH_SCREENSHOT;
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "diffmesh-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.DIFFMESH_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${url}/`);
  await page.fill("#apikey", process.env.DIFFMESH_HTTP_KEY || "");
  // The key is read when the page loads the models; reload with it stored.
  await page.evaluate((k) => localStorage.setItem("diffmesh_api_key", k),
                      process.env.DIFFMESH_HTTP_KEY || "");
  await page.reload();
  await page.waitForSelector(`#model option[value="${process.env.DIFFMESH_MODEL}"]`,
                             { state: "attached" });
  await page.selectOption("#model", process.env.DIFFMESH_MODEL);
  await page.fill("#prompt", "a grey square from the playground");
  // 128x96 is on the stub's grid (32); a real model (granularity 16/32) takes it too.
  await page.fill("#width", "128");
  await page.fill("#height", "96");
  await page.fill("#steps", "4");
  await page.fill("#seed", "1234");
  await page.click("#go");
  await page.waitForFunction(() => document.body.dataset.state === "done" ||
                                   document.body.dataset.state === "error", null, { timeout: 60000 });
  const state = await page.evaluate(() => document.body.dataset.state);
  const error = await page.textContent("#error");
  assert.equal(state, "done", `playground error: ${error}`);
  const img = await page.waitForSelector("#result img#image");
  const size = await img.evaluate(async (el) => {
    await el.decode();
    // Drawn and read back: a decoded, opaque image (not a broken-image placeholder).
    const c = document.createElement("canvas");
    c.width = el.naturalWidth; c.height = el.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(el, 0, 0);
    const px = ctx.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
    return { w: el.naturalWidth, h: el.naturalHeight, alpha: px[3] };
  });
  assert.deepEqual(size, { w: 128, h: 96, alpha: 255 });
  const meta = await page.textContent("#meta");
  assert.match(meta, /seed 1234/);
  assert.equal(await page.evaluate(() => document.getElementById("progress").value), 100);
  const stages = await page.textContent("#stages");
  assert.match(stages, /denoise/);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  assert.deepEqual(errors, []);
  console.log(`ok   playground rendered a ${size.w}x${size.h} image; ${meta.split("\n")[0]}`);
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
