"""The Python SDK without a server: parameter checks, wire conversion, errors, retries."""

import asyncio
import math
import os
import socket
import tempfile
import time
import unittest

import grpc

import diffmesh
import diffmesh.aio
from diffmesh import _types
from diffmesh.v1 import generation_pb2, tensor_pb2


def unused_target() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


class NoCallStub:
    """Stands in for the generated stub: any call is a test failure."""

    def __getattr__(self, name):
        raise AssertionError(f"the client called {name} although the request was invalid")


class GenerateParamsTest(unittest.TestCase):
    def test_defaults_stay_unset_on_the_wire(self):
        r = diffmesh.GenerateParams("p").to_proto()
        self.assertEqual((r.height, r.width, r.steps), (0, 0, 0))
        self.assertFalse(r.HasField("seed"))
        self.assertFalse(r.HasField("guidance_scale"))

    def test_values_reach_the_wire(self):
        r = diffmesh.GenerateParams("p", height=64, width=128, steps=3, guidance_scale=0,
                                    seed=2**64 - 1, negative_prompt="n", model="m",
                                    request_id="id", include_latents=True).to_proto()
        self.assertEqual((r.height, r.width, r.steps), (64, 128, 3))
        self.assertTrue(r.HasField("guidance_scale"))
        self.assertEqual(r.guidance_scale, 0.0)
        self.assertEqual(r.seed, 2**64 - 1)
        self.assertEqual((r.negative_prompt, r.model, r.request_id), ("n", "m", "id"))
        self.assertTrue(r.include_latents)

    def test_wrong_types(self):
        for kwargs in (dict(height="64"), dict(width=64.0), dict(steps=True), dict(seed=1.5),
                       dict(guidance_scale="2"), dict(guidance_scale=True),
                       dict(negative_prompt=None), dict(model=3), dict(include_latents=1)):
            with self.subTest(kwargs=kwargs), self.assertRaises(TypeError) as cm:
                diffmesh.GenerateParams("p", **kwargs)
            self.assertIn(next(iter(kwargs)), str(cm.exception))
        with self.assertRaises(TypeError):
            diffmesh.GenerateParams(b"bytes prompt")

    def test_bad_values(self):
        for kwargs in (dict(height=0), dict(width=-64), dict(steps=0), dict(steps=2**31),
                       dict(seed=-1), dict(seed=2**64), dict(guidance_scale=-0.5),
                       dict(guidance_scale=math.nan), dict(guidance_scale=math.inf)):
            with self.subTest(kwargs=kwargs), self.assertRaises(ValueError) as cm:
                diffmesh.GenerateParams("p", **kwargs)
            self.assertIn(next(iter(kwargs)), str(cm.exception))
        with self.assertRaises(ValueError):
            diffmesh.GenerateParams("")

    def test_unknown_name_suggests_the_right_one(self):
        with self.assertRaises(TypeError) as cm:
            diffmesh.GenerateParams.from_kwargs("p", {"heigth": 64}, "generate")
        self.assertIn("heigth", str(cm.exception))
        self.assertIn("height", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            diffmesh.GenerateParams.from_kwargs("p", {"zzz": 1}, "generate")
        self.assertIn("known:", str(cm.exception))

    def test_params_object_or_kwargs(self):
        p = diffmesh.GenerateParams("p", steps=2)
        self.assertIs(diffmesh.GenerateParams.from_kwargs(p, {}, "generate"), p)
        with self.assertRaises(TypeError):
            diffmesh.GenerateParams.from_kwargs(p, {"steps": 3}, "generate")


class ClientChecksBeforeCallingTest(unittest.TestCase):
    def test_sync_client_never_calls_with_a_bad_request(self):
        client = diffmesh.Client(unused_target())
        client._stub = NoCallStub()
        with self.assertRaises(TypeError):
            client.generate("p", heigth=64)
        with self.assertRaises(TypeError):
            client.stream("p", steps="many")
        with self.assertRaises(ValueError):
            client.generate("p", seed=-3)
        client.close()

    def test_aio_client_never_calls_with_a_bad_request(self):
        async def main():
            client = diffmesh.aio.Client(unused_target())
            client._stub_for_loop = NoCallStub
            with self.assertRaises(TypeError):
                await client.generate("p", heigth=64)
            with self.assertRaises(TypeError):
                client.stream("p", guidance_scale="x")
            with self.assertRaises(ValueError):
                await client.generate("p", steps=-1)
            await client.close()

        asyncio.run(main())

    def test_client_settings_are_checked(self):
        with self.assertRaises(TypeError):
            diffmesh.Client("")
        with self.assertRaises(ValueError):
            diffmesh.Client("127.0.0.1:1", timeout=0)
        with self.assertRaises(TypeError):
            diffmesh.Client("127.0.0.1:1", tls="yes")
        with self.assertRaises(TypeError):
            diffmesh.Client("127.0.0.1:1", token=123)
        diffmesh.Client("127.0.0.1:1", tls=True, token="t").close()
        diffmesh.Client("127.0.0.1:1", tls=diffmesh.Tls(target_name_override="x")).close()

    def test_tls_and_token_settings_are_checked(self):
        with self.assertRaises(ValueError):
            diffmesh.Client("127.0.0.1:1", token="two words")
        with self.assertRaises(ValueError) as cm:
            diffmesh.Client("127.0.0.1:1",
                            tls=diffmesh.Tls(client_cert=b"-----BEGIN CERTIFICATE-----"))
        self.assertIn("client_key", str(cm.exception))
        with self.assertRaises(FileNotFoundError) as cm:
            diffmesh.Client("127.0.0.1:1", tls=diffmesh.Tls(root_certs="/nonexistent/ca.pem"))
        self.assertIn("/nonexistent/ca.pem", str(cm.exception))
        with self.assertRaises(ValueError):
            diffmesh.Client("127.0.0.1:1", tls=diffmesh.Tls(root_certs=b"not a certificate"))
        with self.assertRaises(TypeError):
            diffmesh.aio.Client("127.0.0.1:1", tls=diffmesh.Tls(root_certs=42))

    def test_token_travels_as_bearer_metadata(self):
        from diffmesh._channel import channel_args
        _, _, metadata = channel_args("h:1", "t0k3n", None, None, 1024)
        self.assertEqual(metadata, (("authorization", "Bearer t0k3n"),))
        _, _, metadata = channel_args("h:1", None, None, None, 1024)
        self.assertEqual(metadata, ())


class ConversionTest(unittest.TestCase):
    def test_events(self):
        E = generation_pb2.GenerateEvent
        accepted = E(accepted=generation_pb2.Accepted(request_id="r", model="m", seed=9, height=64,
                                                      width=32, steps=2, guidance_scale=1.5))
        self.assertEqual(_types.event_from_proto(accepted),
                         diffmesh.Accepted("r", "m", 9, 64, 32, 2, 1.5))
        started = E(stage=generation_pb2.StageEvent(stage="ar", kind=generation_pb2.StageEvent.STARTED))
        self.assertEqual(_types.event_from_proto(started), diffmesh.StageStarted("ar"))
        finished = E(stage=generation_pb2.StageEvent(stage="ar", kind=generation_pb2.StageEvent.FINISHED,
                                                     duration_seconds=0.25))
        self.assertEqual(_types.event_from_proto(finished), diffmesh.StageFinished("ar", 0.25))
        self.assertEqual(_types.event_from_proto(E(ar_progress=generation_pb2.ArProgress(
            tokens_generated=3, tokens_total=10))), diffmesh.ArProgress(3, 10))
        self.assertEqual(_types.event_from_proto(E(denoise_progress=generation_pb2.DenoiseProgress(
            step=1, total_steps=4))), diffmesh.DenoiseProgress(1, 4))
        self.assertIsNone(_types.event_from_proto(E()))

    def test_result(self):
        meta = generation_pb2.ResultMetadata(request_id="r", model="m", seed=5, height=64, width=128,
                                             steps=2, guidance_scale=1.0, total_seconds=0.5,
                                             prior_tokens=17)
        for stage, s in (("ar", 0.1), ("denoise", 0.2)):
            meta.stage_timings.add(stage=stage, seconds=s)
        latents = tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[1, 2], data=b"\0\0\x80?\0\0\0@")
        event = generation_pb2.GenerateEvent(result=generation_pb2.GenerateResult(
            png=b"\x89PNG...", metadata=meta, latents=latents))
        r = _types.event_from_proto(event)
        self.assertIsInstance(r, diffmesh.Result)
        self.assertEqual(r.png, b"\x89PNG...")
        self.assertEqual(r.metadata.timings, {"ar": 0.1, "denoise": 0.2})
        self.assertEqual(r.metadata.size, (128, 64))
        self.assertEqual(r.metadata.prior_tokens, 17)
        self.assertEqual(r.latents.dtype, "FLOAT32")
        self.assertEqual(r.latents.shape, (1, 2))
        self.assertEqual(r.latents.to_list(), [1.0, 2.0])
        self.assertNotIn("PNG", repr(r))  # bytes stay out of the repr
        with tempfile.TemporaryDirectory() as d:
            path = r.save(os.path.join(d, "out.png"))
            self.assertEqual(path.read_bytes(), b"\x89PNG...")

    def test_models(self):
        resp = generation_pb2.ListModelsResponse(default_model="b")
        resp.models.add(name="a", stages=["denoise"])
        resp.models.add(name="b", stages=["ar", "denoise"], min_size=64, max_size=512)
        models = _types.models_from_proto(resp)
        self.assertEqual([(m.name, m.default) for m in models], [("a", False), ("b", True)])
        self.assertEqual(models[1].stages, ("ar", "denoise"))


class ErrorTest(unittest.TestCase):
    def test_error_carries_code_and_message(self):
        e = diffmesh.DiffmeshError(grpc.StatusCode.INVALID_ARGUMENT, "height: 100 is not allowed")
        self.assertEqual(e.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(e.message, "height: 100 is not allowed")
        self.assertEqual(str(e), "INVALID_ARGUMENT: height: 100 is not allowed")

    def test_nothing_listening_is_unavailable_after_retries(self):
        target = unused_target()
        with diffmesh.Client(target) as client:
            start = time.monotonic()
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.list_models(timeout=0.5)
            self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
            self.assertLess(time.monotonic() - start, 5)
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.generate("p", steps=1)
            self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.wait_until_serving(timeout=0.3)
            self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)

    def test_aio_nothing_listening_is_unavailable(self):
        async def main():
            async with diffmesh.aio.Client(unused_target()) as client:
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    await client.list_models(timeout=0.5)
                self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    await client.generate("p")
                self.assertEqual(cm.exception.code, grpc.StatusCode.UNAVAILABLE)

        asyncio.run(main())


if __name__ == "__main__":
    unittest.main()
