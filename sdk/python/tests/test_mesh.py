"""The Python SDK against a real mesh: `diffmesh up` on free loopback ports, glm-image-tiny."""

import asyncio
import os
import struct
import tempfile
import threading
import time
import unittest
import zlib

import grpc

import diffmesh
import diffmesh.aio
from _mesh import Mesh

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = dict(height=64, width=64, steps=2)
PIPELINE = ("ar", "encoder", "denoise", "vae_decode")  # glm-image-tiny's stages, in config order
# Timings the server adds to the pipeline's stages (GenerationService's StageTiming).
SERVER_TIMINGS = {"transfer", "vae_decode", "orchestrator"}

mesh = None


def setUpModule():
    global mesh
    mesh = Mesh()


def tearDownModule():
    if mesh is not None:
        mesh.stop()


def numel(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def png_size(png: bytes):
    """(width, height) from the IHDR chunk, which must come first."""
    assert png[:8] == PNG_SIGNATURE, png[:8]
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and length == 13, (kind, length)
    return struct.unpack(">II", png[16:24])


def png_rgb(png: bytes) -> bytes:
    """The pixels of an 8-bit RGB or RGBA, non-interlaced PNG as RGB bytes, row-major."""
    width, height = png_size(png)
    depth, color, _, _, interlace = png[24:29]
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    channels = 3 if color == 2 else 4
    pos, idat = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            idat += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if channels == 3 else
                    b"".join(bytes(line[x * 4:x * 4 + 3]) for x in range(width)))
        prev = line
    return b"".join(rows)


class SyncClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = diffmesh.Client(mesh.target, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_generate_tiny_image(self):
        result = self.client.generate("a sign that says \"py\"", seed=7, **TINY)
        self.assertEqual(len(result.outputs), 1)
        image = result.image
        self.assertIs(image, result.outputs[0])
        self.assertTrue(image.data.startswith(PNG_SIGNATURE))
        self.assertEqual(png_size(image.data), (64, 64))
        self.assertEqual((image.kind, image.mime_type, image.index), ("image", "image/png", 0))
        self.assertEqual((image.width, image.height), (64, 64))
        self.assertEqual(image.size_bytes, len(image.data))
        self.assertIsNone(result.video)
        m = result.metadata
        r = m.request
        self.assertEqual((m.seed, r.height, r.width, r.steps), (7, 64, 64, 2))
        self.assertEqual(m.size, (64, 64))
        self.assertEqual(m.model, "glm-image-tiny")
        # Every default filled in: the guidance and the output format the request left open.
        self.assertIsNotNone(r.guidance.cfg_scale)
        self.assertEqual(r.output_format, "png")
        self.assertIsNone(r.num_frames)  # an image model
        self.assertTrue(m.request_id)
        self.assertEqual(r.request_id, m.request_id)
        self.assertGreater(m.prior_tokens, 0)
        self.assertLessEqual(set(PIPELINE), set(m.timings))
        self.assertLessEqual(set(m.timings), set(PIPELINE) | SERVER_TIMINGS)
        self.assertTrue(all(t >= 0 for t in m.timings.values()), m.timings)
        self.assertGreater(m.total_seconds, 0)
        with tempfile.TemporaryDirectory() as d:
            path = image.save(os.path.join(d, "sub", "a.png"))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), image.data)

    def test_same_seed_same_bytes(self):
        a = self.client.generate("determinism", seed=11, **TINY)
        b = self.client.generate("determinism", seed=11, **TINY)
        self.assertEqual(a.image.data, b.image.data)

    def test_jpeg_and_webp(self):
        jpeg = self.client.generate("jpeg", seed=1, output_format="jpeg", quality=90, **TINY)
        self.assertEqual(jpeg.image.mime_type, "image/jpeg")
        self.assertTrue(jpeg.image.data.startswith(b"\xff\xd8\xff"))
        self.assertEqual(jpeg.metadata.request.output_format, "jpeg")
        self.assertEqual(jpeg.metadata.request.quality, 90)
        webp = self.client.generate("webp", seed=1, output_format="webp", **TINY)
        self.assertEqual(webp.image.mime_type, "image/webp")
        self.assertEqual((webp.image.data[:4], webp.image.data[8:12]), (b"RIFF", b"WEBP"))

    def test_raw_frames(self):
        result = self.client.generate("raw", seed=1, output_format="raw", **TINY)
        out = result.outputs[0]
        self.assertEqual(out.kind, "tensor")
        self.assertEqual(out.tensor_dtype, "UINT8")
        self.assertEqual(out.tensor_shape[-3:], (64, 64, 3))
        self.assertEqual(len(out.data), numel(out.tensor_shape))
        # The same pixels as the PNG of the same request.
        png = self.client.generate("raw", seed=1, **TINY)
        self.assertEqual(png_rgb(png.image.data), out.data)
        try:
            import numpy  # noqa: F401
        except ImportError:
            return
        self.assertEqual(out.to_numpy().shape, out.tensor_shape)

    def test_latents_on_request(self):
        result = self.client.generate("latents", seed=1, output_format="latents", **TINY)
        out = result.outputs[0]
        self.assertEqual(out.kind, "tensor")
        self.assertEqual(out.tensor_dtype, "FLOAT32")
        self.assertEqual(len(out.tensor_shape), 4)
        self.assertEqual(out.tensor_shape[2:], (8, 8))  # 64 / 8
        self.assertEqual(len(out.data), 4 * numel(out.tensor_shape))
        self.assertEqual(len(out.to_tensor().to_list()), numel(out.tensor_shape))

    def test_stream_event_order(self):
        events = list(self.client.stream("events in order", seed=3, **TINY))
        self.assertIsInstance(events[0], diffmesh.Accepted)
        self.assertEqual(events[0].seed, 3)
        r = events[0].request
        self.assertEqual((r.height, r.width, r.steps), (64, 64, 2))
        self.assertIsInstance(events[-1], diffmesh.Result)
        self.assertEqual(sum(isinstance(e, diffmesh.Result) for e in events), 1)
        self.assertEqual(events[-1].metadata.request, r)
        denoise = [e for e in events if isinstance(e, diffmesh.Progress) and e.stage == "denoise"]
        self.assertEqual([(e.unit, e.done, e.total) for e in denoise], [("step", 1, 2), ("step", 2, 2)])
        tokens = [e.done for e in events if isinstance(e, diffmesh.Progress) and e.stage == "ar"]
        self.assertTrue(tokens)
        self.assertEqual(tokens, sorted(tokens))
        for stage in PIPELINE:
            started = [i for i, e in enumerate(events)
                       if isinstance(e, diffmesh.StageStarted) and e.stage == stage]
            finished = [i for i, e in enumerate(events)
                        if isinstance(e, diffmesh.StageFinished) and e.stage == stage]
            self.assertEqual(len(started), 1, stage)
            self.assertEqual(len(finished), 1, stage)
            self.assertLess(started[0], finished[0], stage)
        # Denoising starts after the AR stage and the encoder are done; the output follows it.
        first_denoise = events.index(denoise[0])
        last_ar = max(i for i, e in enumerate(events)
                      if isinstance(e, diffmesh.Progress) and e.stage == "ar")
        self.assertLess(last_ar, first_denoise)
        chunks = [i for i, e in enumerate(events) if isinstance(e, diffmesh.OutputProgress)]
        self.assertTrue(chunks)
        self.assertLess(events.index(denoise[-1]), chunks[0])
        received = [events[i].received_bytes for i in chunks]
        self.assertEqual(received, sorted(received))
        self.assertEqual(received[-1], len(events[-1].image.data))

    def test_generate_on_event_sees_the_stream(self):
        seen = []
        result = self.client.generate("callback", seed=5, on_event=seen.append, **TINY)
        self.assertIsInstance(seen[0], diffmesh.Accepted)
        self.assertIs(seen[-1], result)

    def test_bad_request_names_the_field(self):
        cases = [
            (dict(height=100, width=64, steps=2), "height"),
            (dict(steps=1000, height=64, width=64), "steps"),
            (dict(num_frames=9, **TINY), "num_frames"),  # an image model: no frames
            (dict(guidance={"audio": {"cfg_scale": 2.0}}, **TINY), "audio"),  # no sound
        ]
        for kwargs, field in cases:
            with self.subTest(kwargs=kwargs), self.assertRaises(diffmesh.DiffmeshError) as cm:
                self.client.generate("bad request", **kwargs)
            self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(field, cm.exception.message)
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            self.client.generate("bad size", height=100, width=64, steps=2)
        self.assertTrue(cm.exception.message.startswith("height:"), cm.exception.message)

    def test_input_media_roles(self):
        model = next(m for m in self.client.list_models() if m.name == "glm-image-tiny")
        png = self.client.generate("an input", seed=2, **TINY).image.data
        unaccepted = [r for r in diffmesh.MediaRole if r not in model.input_roles]
        for role in unaccepted:
            with self.subTest(role=role), self.assertRaises(diffmesh.DiffmeshError) as cm:
                self.client.generate("with input", inputs=[(role, png)], **TINY)
            self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("inputs", cm.exception.message)
        if model.image_role is None:
            with self.assertRaises(ValueError) as cm:
                self.client.generate("with images", images=[png], **TINY)
            self.assertIn("images", str(cm.exception))
        else:
            result = self.client.generate("with images", images=[png], seed=2, **TINY)
            self.assertEqual(result.metadata.request.inputs, (model.image_role,))
            self.assertTrue(result.image.data.startswith(PNG_SIGNATURE))

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
        self.assertEqual(m.kind, diffmesh.ModelKind.IMAGE)
        self.assertEqual(m.stages, PIPELINE)
        lim = m.limits
        self.assertGreater(lim.max_size, lim.min_size)
        self.assertGreater(lim.size_granularity, 0)
        self.assertGreater(lim.max_steps, 0)
        self.assertLessEqual(lim.min_steps, lim.max_steps)
        self.assertGreater(lim.max_prompt_bytes, 0)
        d = m.defaults
        self.assertEqual(d.height % lim.size_granularity, 0)
        self.assertEqual(d.width % lim.size_granularity, 0)
        self.assertTrue(lim.min_steps <= d.steps <= lim.max_steps, (d.steps, lim))
        self.assertIsNotNone(d.guidance.cfg_scale)
        self.assertIsNone(d.num_frames)
        self.assertIn("png", m.output_formats)
        self.assertEqual(d.output_format, "png")

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
                self.assertTrue(result.image.data.startswith(PNG_SIGNATURE))
                self.assertEqual(png_size(result.image.data), (64, 64))
                self.assertEqual(result.metadata.seed, 7)

                events = [e async for e in client.stream("aio", seed=7, **TINY)]
                self.assertIsInstance(events[0], diffmesh.Accepted)
                self.assertIsInstance(events[-1], diffmesh.Result)
                self.assertEqual([e.done for e in events
                                  if isinstance(e, diffmesh.Progress) and e.stage == "denoise"],
                                 [1, 2])
                self.assertTrue(any(isinstance(e, diffmesh.OutputProgress) for e in events))
                # Same request, same seed: the same bytes as the first call.
                self.assertEqual(events[-1].image.data, result.image.data)

                jpeg = await client.generate("aio", seed=7, output_format="jpeg", **TINY)
                self.assertEqual(jpeg.image.mime_type, "image/jpeg")

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
