"""The Python SDK against a real mesh: `diffmesh up` on free loopback ports, glm-image-tiny."""

import asyncio
import os
import struct
import tempfile
import threading
import time
import unittest

import grpc

import diffmesh
import diffmesh.aio
from _mesh import Mesh

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = dict(height=64, width=64, steps=2)

mesh = None


def setUpModule():
    global mesh
    mesh = Mesh()


def tearDownModule():
    if mesh is not None:
        mesh.stop()


def png_size(png: bytes):
    """(width, height) from the IHDR chunk, which must come first."""
    assert png[:8] == PNG_SIGNATURE, png[:8]
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and length == 13, (kind, length)
    return struct.unpack(">II", png[16:24])


class SyncClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = diffmesh.Client(mesh.target, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_generate_tiny_image(self):
        result = self.client.generate("a sign that says \"py\"", seed=7, **TINY)
        self.assertTrue(result.png.startswith(PNG_SIGNATURE))
        self.assertEqual(png_size(result.png), (64, 64))
        m = result.metadata
        self.assertEqual((m.seed, m.height, m.width, m.steps), (7, 64, 64, 2))
        self.assertEqual(m.size, (64, 64))
        self.assertEqual(m.model, "glm-image-tiny")
        self.assertTrue(m.request_id)
        self.assertGreater(m.prior_tokens, 0)
        self.assertEqual(set(m.timings), {"ar", "encoder", "denoise", "vae_decode"})
        self.assertTrue(all(t >= 0 for t in m.timings.values()), m.timings)
        self.assertGreater(m.total_seconds, 0)
        self.assertIsNone(result.latents)
        with tempfile.TemporaryDirectory() as d:
            path = result.save(os.path.join(d, "sub", "a.png"))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), result.png)

    def test_same_seed_same_bytes(self):
        a = self.client.generate("determinism", seed=11, **TINY)
        b = self.client.generate("determinism", seed=11, **TINY)
        self.assertEqual(a.png, b.png)

    def test_latents_on_request(self):
        result = self.client.generate("latents", seed=1, include_latents=True, **TINY)
        self.assertIsNotNone(result.latents)
        self.assertEqual(result.latents.dtype, "FLOAT32")
        self.assertEqual(len(result.latents.shape), 4)
        self.assertEqual(result.latents.shape[2:], (8, 8))  # 64 / 8
        count = 1
        for d in result.latents.shape:
            count *= d
        self.assertEqual(len(result.latents.data), 4 * count)

    def test_stream_event_order(self):
        events = list(self.client.stream("events in order", seed=3, **TINY))
        self.assertIsInstance(events[0], diffmesh.Accepted)
        self.assertEqual(events[0].seed, 3)
        self.assertEqual((events[0].height, events[0].width, events[0].steps), (64, 64, 2))
        self.assertIsInstance(events[-1], diffmesh.Result)
        self.assertEqual(sum(isinstance(e, diffmesh.Result) for e in events), 1)
        steps = [e.step for e in events if isinstance(e, diffmesh.DenoiseProgress)]
        self.assertEqual(steps, [1, 2])
        tokens = [e.tokens_generated for e in events if isinstance(e, diffmesh.ArProgress)]
        self.assertTrue(tokens)
        self.assertEqual(tokens, sorted(tokens))
        for stage in ("ar", "encoder", "denoise"):
            started = [i for i, e in enumerate(events)
                       if isinstance(e, diffmesh.StageStarted) and e.stage == stage]
            finished = [i for i, e in enumerate(events)
                        if isinstance(e, diffmesh.StageFinished) and e.stage == stage]
            self.assertEqual(len(started), 1, stage)
            self.assertEqual(len(finished), 1, stage)
            self.assertLess(started[0], finished[0], stage)
        # Denoising starts after the AR stage and the encoder are done.
        first_denoise = next(i for i, e in enumerate(events) if isinstance(e, diffmesh.DenoiseProgress))
        last_ar = max(i for i, e in enumerate(events) if isinstance(e, diffmesh.ArProgress))
        self.assertLess(last_ar, first_denoise)

    def test_generate_on_event_sees_the_stream(self):
        seen = []
        result = self.client.generate("callback", seed=5, on_event=seen.append, **TINY)
        self.assertIsInstance(seen[0], diffmesh.Accepted)
        self.assertIs(seen[-1], result)

    def test_bad_request_names_the_field(self):
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            self.client.generate("bad size", height=100, width=64, steps=2)
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(cm.exception.message.startswith("height:"), cm.exception.message)
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            self.client.generate("too many steps", steps=1000, height=64, width=64)
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("steps", cm.exception.message)

    def test_unknown_model_is_not_found(self):
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            self.client.generate("x", model="no-such-model", **TINY)
        self.assertEqual(cm.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("model", cm.exception.message)

    def test_unknown_kwarg_raises_type_error_before_any_call(self):
        calls = []
        real = self.client._stub.Generate
        self.client._stub.Generate = lambda *a, **k: calls.append(a) or real(*a, **k)
        try:
            with self.assertRaises(TypeError):
                self.client.generate("x", heigth=64)
            with self.assertRaises(TypeError):
                self.client.stream("x", stepz=2)
            with self.assertRaises(TypeError):
                self.client.generate("x", steps="2")
        finally:
            self.client._stub.Generate = real
        self.assertEqual(calls, [])

    def test_list_models(self):
        models = self.client.list_models()
        tiny = [m for m in models if m.name == "glm-image-tiny"]
        self.assertEqual(len(tiny), 1)
        m = tiny[0]
        self.assertTrue(m.default)
        self.assertEqual(m.stages, ("ar", "encoder", "denoise"))
        self.assertGreater(m.max_size, m.min_size)
        self.assertEqual(m.default_height % m.pixel_granularity, 0)

    def test_cancel_from_another_thread(self):
        stream = self.client.stream("cancel me", seed=1, steps=50, height=256, width=256)
        kinds = []
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            for event in stream:
                kinds.append(type(event))
                if isinstance(event, diffmesh.Accepted):
                    threading.Thread(target=stream.cancel).start()
        self.assertEqual(cm.exception.code, grpc.StatusCode.CANCELLED)
        self.assertNotIn(diffmesh.Result, kinds)

    def test_deadline(self):
        start = time.monotonic()
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            self.client.generate("slow", steps=50, height=256, width=256, timeout=0.3)
        self.assertEqual(cm.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - start, 30)

    def test_token_is_accepted_as_metadata(self):
        # The mesh does not check tokens; the call must still go through with the header set.
        with diffmesh.Client(mesh.target, token="secret") as client:
            self.assertTrue(client.list_models())


class AioClientTest(unittest.TestCase):
    def test_generate_stream_list_and_errors(self):
        async def main():
            async with diffmesh.aio.Client(mesh.target, timeout=120) as client:
                await client.wait_until_serving(timeout=30)
                models = await client.list_models()
                self.assertTrue(any(m.default for m in models))

                result = await client.generate("aio", seed=7, **TINY)
                self.assertTrue(result.png.startswith(PNG_SIGNATURE))
                self.assertEqual(png_size(result.png), (64, 64))
                self.assertEqual(result.metadata.seed, 7)

                events = [e async for e in client.stream("aio", seed=7, **TINY)]
                self.assertIsInstance(events[0], diffmesh.Accepted)
                self.assertIsInstance(events[-1], diffmesh.Result)
                self.assertEqual([e.step for e in events if isinstance(e, diffmesh.DenoiseProgress)],
                                 [1, 2])
                # Same request, same seed: the same bytes as the first call.
                self.assertEqual(events[-1].png, result.png)

                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    await client.generate("bad", height=100, width=64, steps=2)
                self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn("height", cm.exception.message)

                with self.assertRaises(TypeError):
                    client.stream("x", heigth=1)

                # Several at once on one channel.
                results = await asyncio.gather(
                    *[client.generate("gather", seed=s, **TINY) for s in (1, 2, 3)])
                self.assertEqual([r.metadata.seed for r in results], [1, 2, 3])

                # Cancel mid-stream.
                stream = client.stream("cancel", seed=1, steps=50, height=256, width=256)
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    async for event in stream:
                        if isinstance(event, diffmesh.Accepted):
                            stream.cancel()
                self.assertEqual(cm.exception.code, grpc.StatusCode.CANCELLED)

        asyncio.run(main())


if __name__ == "__main__":
    unittest.main()
