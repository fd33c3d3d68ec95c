// The official `openai` npm client against diffmesh-http (started by http_e2e_test.py over
// orchestrator + diffmesh-stub-stages): images, edits, models, videos and the error classes.
//   DIFFMESH_HTTP_URL=http://127.0.0.1:P DIFFMESH_HTTP_KEY=... DIFFMESH_MODEL=trivial \
//     node openai_client_test.mjs
import assert from "node:assert/strict";
import OpenAI, { toFile } from "openai";

const baseURL = `${process.env.DIFFMESH_HTTP_URL}/v1`;
const apiKey = process.env.DIFFMESH_HTTP_KEY;
const model = process.env.DIFFMESH_MODEL;
// Retries off: a 429 or 503 must reach the test, not be retried away.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });

function pngSize(bytes) {
  assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
                   "not a PNG");
  return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

async function expectError(promise, cls, status, check = () => {}) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e.constructor.name}: ${e.message}`);
    assert.equal(e.status, status);
    check(e);
    return e;
  }
  assert.fail(`expected ${cls.name}`);
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test("models.list lists the served model", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model), `${model} not in ${ids}`);
});

test("images.generate returns PNGs of the requested size, seeds reported", async () => {
  const res = await client.images.generate({
    model, prompt: "a grey square", size: "96x64", n: 2, response_format: "b64_json", seed: 11,
  });
  assert.equal(res.data.length, 2);
  assert.equal(res.output_format, "png");
  assert.equal(res.size, "96x64");
  for (const [i, d] of res.data.entries()) {
    assert.deepEqual(pngSize(Buffer.from(d.b64_json, "base64")), { width: 96, height: 64 });
    assert.equal(d.diffmesh.seed, 11 + i);
  }
});

test("images.generate output_format jpeg", async () => {
  const res = await client.images.generate({ model, prompt: "x", size: "64x64",
                                             output_format: "jpeg", output_compression: 80 });
  const bytes = Buffer.from(res.data[0].b64_json, "base64");
  // The stub stages make PNGs only; a model that encodes JPEG answers jpeg. Either way the
  // reported format matches the bytes.
  const fmt = bytes[0] === 0xff && bytes[1] === 0xd8 ? "jpeg" : "png";
  assert.equal(res.output_format, fmt);
});

test("images.generate stream: progress events, then the image", async () => {
  const stream = await client.images.generate({ model, prompt: "x", size: "64x64", steps: 3,
                                                stream: true });
  const types = [];
  let completed;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "image_generation.completed") completed = event;
  }
  assert.ok(types.includes("image_generation.progress"), types.join(","));
  assert.ok(completed, types.join(","));
  assert.deepEqual(pngSize(Buffer.from(completed.b64_json, "base64")), { width: 64, height: 64 });
  assert.equal(types.at(-1), "image_generation.completed");
});

test("response_format url: BadRequestError naming the field", async () => {
  await expectError(client.images.generate({ model, prompt: "x", response_format: "url" }),
                    OpenAI.BadRequestError, 400, (e) => assert.equal(e.param, "response_format"));
});

test("a size off the model's grid: BadRequestError from the orchestrator", async () => {
  await expectError(client.images.generate({ model, prompt: "x", size: "65x64" }),
                    OpenAI.BadRequestError, 400, (e) => assert.match(e.message, /width/));
});

test("an unknown model: NotFoundError", async () => {
  await expectError(client.images.generate({ model: "no-such-model", prompt: "x" }),
                    OpenAI.NotFoundError, 404, (e) => assert.equal(e.code, "model_not_found"));
});

test("a wrong API key: AuthenticationError", async () => {
  const bad = new OpenAI({ baseURL, apiKey: "wrong-key", maxRetries: 0 });
  await expectError(bad.models.list(), OpenAI.AuthenticationError, 401);
});

const png = async () => {
  const res = await client.images.generate({ model, prompt: "input", size: "64x64" });
  return toFile(Buffer.from(res.data[0].b64_json, "base64"), "in.png", { type: "image/png" });
};

test("images.edit: the model takes no edit image, so 400 naming the image", async () => {
  const e = await expectError(client.images.edit({ model, prompt: "make it red", image: await png() }),
                              OpenAI.BadRequestError, 400);
  assert.equal(e.param, "image");
  assert.match(e.message, /inputs\[0\]\.role/);
});

test("images.edit with image[] and a mask: 400 naming the mask", async () => {
  await expectError(client.images.edit({ model, prompt: "x", image: [await png(), await png()],
                                         mask: await png() }),
                    OpenAI.BadRequestError, 400, (e) => assert.equal(e.param, "mask"));
});

async function waitForVideo(id) {
  for (let i = 0; i < 600; i++) {
    const v = await client.videos.retrieve(id);
    if (v.status === "completed" || v.status === "failed") return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`video ${id} did not finish`);
}

test("videos.create / retrieve / downloadContent / delete", async () => {
  const job = await client.videos.create({ model, prompt: "a clip", seconds: "4", size: "64x64" });
  assert.equal(job.object, "video");
  assert.match(job.id, /^video_/);
  assert.ok(["queued", "in_progress", "completed"].includes(job.status), job.status);
  const done = await waitForVideo(job.id);
  assert.equal(done.status, "completed", JSON.stringify(done.error));
  assert.equal(done.progress, 100);
  assert.equal(done.size, "64x64");
  assert.ok(done.completed_at >= done.created_at);
  assert.ok(done.expires_at > done.completed_at);
  const content = await client.videos.downloadContent(job.id);
  const bytes = Buffer.from(await content.arrayBuffer());
  // An image model's job returns its image (a video model's an MP4).
  assert.equal(content.headers.get("content-type"), "image/png");
  assert.deepEqual(pngSize(bytes), { width: 64, height: 64 });
  const deleted = await client.videos.delete(job.id);
  assert.deepEqual({ id: deleted.id, deleted: deleted.deleted, object: deleted.object },
                   { id: job.id, deleted: true, object: "video.deleted" });
  await expectError(client.videos.retrieve(job.id), OpenAI.NotFoundError, 404);
});

test("videos.delete of a running job cancels it", async () => {
  // DIFFMESH_SLOW_STEPS steps take a while on the stub stages (--denoise-step-ms).
  const steps = Number(process.env.DIFFMESH_SLOW_STEPS);
  const job = await client.videos.create({ model, prompt: "long", size: "64x64", steps });
  let v;
  for (let i = 0; i < 200; i++) {
    v = await client.videos.retrieve(job.id);
    if (v.progress > 0) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.equal(v.status, "in_progress");
  assert.ok(v.progress > 0 && v.progress < 100, `progress ${v.progress}`);
  await expectError(client.videos.downloadContent(job.id), OpenAI.ConflictError, 409);
  await client.videos.delete(job.id);
  await expectError(client.videos.retrieve(job.id), OpenAI.NotFoundError, 404);
  // The generation ends well before its steps would have (it was cancelled, not orphaned).
  const t0 = performance.now();
  while (await inFlight() > 0) {
    assert.ok(performance.now() - t0 < 2000, "the deleted job's generation still runs");
    await new Promise((r) => setTimeout(r, 25));
  }
});

async function inFlight() {
  const text = await (await fetch(`${process.env.DIFFMESH_HTTP_URL}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("diffmesh_http_generations_in_flight"));
  return Number(line.split(" ").at(-1));
}

test("a full video store: RateLimitError", async () => {
  // The front door runs with --max-video-jobs DIFFMESH_MAX_JOBS; jobs finished within the
  // retention still hold their slots.
  const max = Number(process.env.DIFFMESH_MAX_JOBS);
  const ids = [];
  let err;
  for (let i = 0; i <= max; i++) {
    try {
      ids.push((await client.videos.create({ model, prompt: `job ${i}`, size: "64x64" })).id);
    } catch (e) {
      err = e;
      break;
    }
  }
  assert.ok(err instanceof OpenAI.RateLimitError, `no 429 after ${ids.length} jobs: ${err}`);
  assert.equal(err.status, 429);
  for (const id of ids) await client.videos.delete(id);
  await client.videos.create({ model, prompt: "after", size: "64x64" });
});

let failed = 0;
for (const { name, fn } of tests) {
  const t0 = performance.now();
  try {
    await fn();
    console.log(`ok   ${name} (${(performance.now() - t0).toFixed(0)} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n     ${e.stack || e}`);
  }
}
console.log(`${tests.length - failed}/${tests.length} passed`);
process.exit(failed ? 1 : 0);
