"""The Python SDK without a mesh: parameter checks, wire conversion, output assembly from chunks,
errors, retries; and both clients against an in-process fake GenerationService (real gRPC on
loopback) that streams scripted events."""

import asyncio
import math
import os
import socket
import tempfile
import threading
import time
import unittest
from concurrent import futures

import grpc

import diffmesh
import diffmesh.aio
from diffmesh import _wire
from diffmesh.v1 import generation_pb2 as pb
from diffmesh.v1 import generation_pb2_grpc, tensor_pb2

PNG = b"\x89PNG\r\n\x1a\n" + b"png-body"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-body"
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 "
E = pb.GenerateEvent


def unused_target() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


class NoCallStub:
    """Stands in for the generated stub: any call is a test failure."""

    def __getattr__(self, name):
        raise AssertionError(f"the client called {name} although the request was invalid")


def info(index=0, name="image", kind=pb.OUTPUT_KIND_IMAGE, mime="image/png", size=0, **kw):
    return pb.OutputInfo(index=index, name=name, kind=kind, mime_type=mime, size_bytes=size, **kw)


def chunks(index, data, piece, output_info):
    """OutputChunk events of ``data`` in pieces of ``piece`` bytes, the first with its info."""
    events = []
    for offset in range(0, max(len(data), 1), piece):
        c = pb.OutputChunk(index=index, offset=offset, data=data[offset:offset + piece])
        if offset == 0:
            c.info.CopyFrom(output_info)
        events.append(E(output=c))
    return events


def accepted_request(**overrides):
    r = pb.GenerateRequest(model="m", prompt="p", height=64, width=32, steps=2, seed=9,
                           request_id="r1")
    r.guidance.main.cfg_scale = 1.5
    r.output.format = pb.OUTPUT_FORMAT_PNG
    for k, v in overrides.items():
        setattr(r, k, v)
    return r


def result_event(outputs_info, **meta):
    result = pb.GenerateResult(metadata=pb.ResultMetadata(
        request_id="r1", request=accepted_request(), total_seconds=0.5, prior_tokens=17, **meta))
    result.metadata.stage_timings.add(stage="ar", seconds=0.1)
    result.metadata.stage_timings.add(stage="denoise", seconds=0.2)
    for i in outputs_info:
        result.outputs.add(info=i)
    return E(result=result)


def full_stream(data=PNG * 100, piece=256):
    i = info(size=len(data))
    return [E(accepted=pb.Accepted(request_id="r1", request=accepted_request())),
            E(stage=pb.StageEvent(stage="denoise", kind=pb.StageEvent.KIND_STARTED)),
            E(progress=pb.Progress(stage="denoise", unit="step", done=1, total=2)),
            E(progress=pb.Progress(stage="denoise", unit="step", done=2, total=2)),
            E(stage=pb.StageEvent(stage="denoise", kind=pb.StageEvent.KIND_FINISHED,
                                  duration_seconds=0.25)),
            *chunks(0, data, piece, i),
            result_event([i])]


# --- Requests -------------------------------------------------------------------------------


class GenerateParamsTest(unittest.TestCase):
    def test_defaults_stay_unset_on_the_wire(self):
        r = _wire.request_to_proto(diffmesh.GenerateParams("p"))
        for name in ("height", "width", "num_frames", "frame_rate", "steps", "seed"):
            self.assertFalse(r.HasField(name), name)
        self.assertFalse(r.HasField("guidance"))
        self.assertFalse(r.HasField("output"))
        self.assertEqual(len(r.inputs), 0)

    def test_values_reach_the_wire(self):
        p = diffmesh.GenerateParams(
            "p", height=64, width=128, num_frames=121, frame_rate=24, steps=3, seed=2**64 - 1,
            negative_prompt="n", model="m", request_id="id",
            guidance=diffmesh.Guidance(cfg_scale=0, stg_scale=1.0, modality_scale=3.0,
                                       rescale=0.7, audio={"cfg_scale": 7.0}, stg_blocks=[28, 29],
                                       skip_step=1),
            output_format="webp", quality=100)
        r = _wire.request_to_proto(p)
        self.assertEqual((r.height, r.width, r.num_frames, r.steps), (64, 128, 121, 3))
        self.assertEqual(r.frame_rate, 24.0)
        self.assertEqual(r.seed, 2**64 - 1)
        self.assertEqual((r.negative_prompt, r.model, r.request_id), ("n", "m", "id"))
        g = r.guidance
        self.assertTrue(g.main.HasField("cfg_scale"))  # 0 is a value, not "unset"
        self.assertEqual(g.main.cfg_scale, 0.0)
        self.assertAlmostEqual(g.main.rescale, 0.7, places=6)
        self.assertEqual((g.main.stg_scale, g.main.modality_scale), (1.0, 3.0))
        self.assertEqual(g.audio.cfg_scale, 7.0)
        self.assertFalse(g.audio.HasField("stg_scale"))
        self.assertEqual(list(g.stg_blocks.blocks), [28, 29])
        self.assertEqual(g.skip_step, 1)
        self.assertEqual(r.output.format, pb.OUTPUT_FORMAT_WEBP)
        self.assertEqual(r.output.quality, 100)

    def test_guidance_forms(self):
        as_dict = diffmesh.GenerateParams("p", guidance={"cfg_scale": 3, "audio": {"cfg_scale": 7}})
        as_object = diffmesh.GenerateParams("p", guidance=diffmesh.Guidance(
            cfg_scale=3.0, audio=diffmesh.StreamGuidance(cfg_scale=7.0)))
        self.assertEqual(as_dict.guidance, as_object.guidance)
        self.assertEqual(as_dict.guidance.main, diffmesh.StreamGuidance(cfg_scale=3.0))
        self.assertEqual(diffmesh.GenerateParams("p", guidance=4).guidance.cfg_scale, 4.0)
        # A negative STG scale is a value (toward the perturbed prediction), not an error.
        self.assertEqual(diffmesh.Guidance(stg_scale=-1).stg_scale, -1.0)
        # An empty block list is a choice (skip none), not "the default".
        r = _wire.request_to_proto(diffmesh.GenerateParams("p", guidance={"stg_blocks": []}))
        self.assertTrue(r.guidance.HasField("stg_blocks"))
        self.assertEqual(list(r.guidance.stg_blocks.blocks), [])

    def test_wrong_types_name_the_field(self):
        cases = [
            (dict(height="64"), "height"), (dict(width=64.0), "width"),
            (dict(steps=True), "steps"), (dict(seed=1.5), "seed"),
            (dict(num_frames=[1]), "num_frames"), (dict(frame_rate="24"), "frame_rate"),
            (dict(negative_prompt=None), "negative_prompt"), (dict(model=3), "model"),
            (dict(guidance="2"), "guidance"), (dict(guidance=True), "guidance"),
            (dict(guidance={"cfg_scale": "2"}), "guidance.cfg_scale"),
            (dict(guidance={"audio": {"stg_scale": True}}), "guidance.audio.stg_scale"),
            (dict(guidance={"audio": 3}), "guidance.audio"),
            (dict(guidance={"stg_blocks": [1.0]}), "guidance.stg_blocks[0]"),
            (dict(guidance={"stg_blocks": 5}), "guidance.stg_blocks"),
            (dict(guidance={"skip_step": 0.5}), "guidance.skip_step"),
            (dict(guidance={"cfg": 3}), "cfg_scale"),  # suggests the right name
            (dict(guidance={"audio": {"cfg": 3}}), "guidance.audio"),
            (dict(output_format=4), "output_format"), (dict(quality="9", output_format="jpeg"), "quality"),
            (dict(images=PNG), "images"), (dict(images=[3]), "images[0]"),
            (dict(inputs=[PNG]), "inputs[0]"), (dict(inputs=[("first_frame", 3)]), "inputs[0].data"),
            (dict(inputs=[(1, PNG)]), "inputs[0].role"),
        ]
        for kwargs, field in cases:
            with self.subTest(kwargs=kwargs), self.assertRaises(TypeError) as cm:
                diffmesh.GenerateParams("p", **kwargs)
            self.assertIn(field, str(cm.exception))
        with self.assertRaises(TypeError):
            diffmesh.GenerateParams(b"bytes prompt")

    def test_bad_values_name_the_field(self):
        cases = [
            (dict(height=0), "height"), (dict(width=-64), "width"), (dict(steps=0), "steps"),
            (dict(steps=2**31), "steps"), (dict(num_frames=0), "num_frames"),
            (dict(frame_rate=0), "frame_rate"), (dict(frame_rate=math.inf), "frame_rate"),
            (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"),
            (dict(guidance={"cfg_scale": -0.5}), "guidance.cfg_scale"),
            (dict(guidance={"stg_scale": math.nan}), "guidance.stg_scale"),
            (dict(guidance={"stg_scale": -1e39}), "guidance.stg_scale"),
            (dict(guidance={"rescale": 1.5}), "guidance.rescale"),
            (dict(guidance={"rescale": -0.1}), "guidance.rescale"),
            (dict(guidance={"audio": {"modality_scale": -1}}), "guidance.audio.modality_scale"),
            (dict(guidance={"stg_blocks": [-1]}), "guidance.stg_blocks[0]"),
            (dict(guidance={"skip_step": -1}), "guidance.skip_step"),
            (dict(output_format="gif"), "output_format"),
            (dict(quality=80), "quality"),                           # no format given
            (dict(quality=80, output_format="png"), "quality"),      # not for PNG
            (dict(quality=0, output_format="jpeg"), "quality"),      # JPEG is 1..100
            (dict(quality=101, output_format="webp"), "quality"),
            (dict(request_id="x" * 129), "request_id"),
            (dict(request_id="two words"), "request_id"),
            (dict(images=[b"GIF89a..."]), "images[0]"), (dict(images=[b""]), "images[0]"),
            (dict(inputs=[("middle_frame", PNG)]), "inputs[0].role"),
            (dict(inputs=[("reference", b"text")]), "inputs[0].data"),
        ]
        for kwargs, field in cases:
            with self.subTest(kwargs=kwargs), self.assertRaises(ValueError) as cm:
                diffmesh.GenerateParams("p", **kwargs)
            self.assertIn(field, str(cm.exception))
        with self.assertRaises(ValueError):
            diffmesh.GenerateParams("")

    def test_output_format_names(self):
        for name, fmt in (("png", pb.OUTPUT_FORMAT_PNG), ("JPG", pb.OUTPUT_FORMAT_JPEG),
                          ("jpeg", pb.OUTPUT_FORMAT_JPEG), ("mp4", pb.OUTPUT_FORMAT_MP4),
                          ("raw", pb.OUTPUT_FORMAT_RAW), (diffmesh.OutputFormat.LATENTS,
                                                          pb.OUTPUT_FORMAT_LATENTS)):
            with self.subTest(name=name):
                r = _wire.request_to_proto(diffmesh.GenerateParams("p", output_format=name))
                self.assertEqual(r.output.format, fmt)
                self.assertFalse(r.output.HasField("quality"))

    def test_input_media(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "frame.jpg")
            with open(path, "wb") as f:
                f.write(JPEG)
            p = diffmesh.GenerateParams(
                "p", images=[PNG, path],
                inputs=[("first_frame", WEBP), diffmesh.InputMedia("REFERENCE", bytearray(PNG))])
        self.assertEqual(p.images, (PNG, JPEG))  # paths are read at once
        self.assertEqual(p.inputs[0].role, diffmesh.MediaRole.FIRST_FRAME)
        self.assertEqual(p.inputs[1].role, "reference")
        r = _wire.request_to_proto(p)
        # images first with their role still open, then inputs in order.
        self.assertEqual([m.role for m in r.inputs],
                         [pb.MEDIA_ROLE_UNSPECIFIED, pb.MEDIA_ROLE_UNSPECIFIED,
                          pb.MEDIA_ROLE_FIRST_FRAME, pb.MEDIA_ROLE_REFERENCE])
        self.assertEqual([m.data for m in r.inputs], [PNG, JPEG, WEBP, PNG])
        _wire.set_image_role(r, p, diffmesh.MediaRole.EDIT_IMAGE)
        self.assertEqual([m.role for m in r.inputs][:2], [pb.MEDIA_ROLE_EDIT_IMAGE] * 2)
        self.assertNotIn("png-body", repr(p))  # bytes stay out of the repr

    def test_missing_file_names_the_field_and_the_file(self):
        with self.assertRaises(FileNotFoundError) as cm:
            diffmesh.GenerateParams("p", inputs=[("edit_image", "/nonexistent/in.png")])
        self.assertIn("inputs[0].data", str(cm.exception))
        self.assertIn("/nonexistent/in.png", str(cm.exception))

    def test_pil_images_are_sent_as_png(self):
        try:
            from PIL import Image
        except ImportError:
            self.skipTest("Pillow is not installed")
        p = diffmesh.GenerateParams("p", images=[Image.new("RGB", (4, 2), (255, 0, 0))])
        self.assertTrue(p.images[0].startswith(b"\x89PNG"))

    def test_request_larger_than_the_channel_allows(self):
        p = diffmesh.GenerateParams("p", images=[PNG + b"\0" * 2000])
        with self.assertRaises(ValueError) as cm:
            _wire.request_to_proto(p, max_bytes=1000)
        self.assertIn("max_message_bytes", str(cm.exception))
        _wire.request_to_proto(p, max_bytes=10000)

    def test_unknown_name_suggests_the_right_one(self):
        with self.assertRaises(TypeError) as cm:
            diffmesh.GenerateParams.from_kwargs("p", {"heigth": 64}, "generate")
        self.assertIn("heigth", str(cm.exception))
        self.assertIn("height", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            diffmesh.GenerateParams.from_kwargs("p", {"guidance_scale": 3}, "generate")
        self.assertIn("guidance", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            diffmesh.GenerateParams.from_kwargs("p", {"zzz": 1}, "generate")
        self.assertIn("known:", str(cm.exception))

    def test_params_object_or_kwargs(self):
        p = diffmesh.GenerateParams("p", steps=2)
        self.assertIs(diffmesh.GenerateParams.from_kwargs(p, {}, "generate"), p)
        with self.assertRaises(TypeError):
            diffmesh.GenerateParams.from_kwargs(p, {"steps": 3}, "generate")


# --- From the wire --------------------------------------------------------------------------


class ConversionTest(unittest.TestCase):
    def feed_all(self, events):
        a = _wire.StreamAssembler()
        out = [a.feed(e) for e in events]
        a.finish()
        return [e for e in out if e is not None]

    def test_events_and_result(self):
        data = bytes(range(256)) * 10
        events = self.feed_all(full_stream(PNG + data, piece=1000))
        accepted = events[0]
        self.assertIsInstance(accepted, diffmesh.Accepted)
        self.assertEqual(accepted.request_id, "r1")
        req = accepted.request
        self.assertEqual((req.model, req.height, req.width, req.steps, req.seed), ("m", 64, 32, 2, 9))
        self.assertIsNone(req.num_frames)
        self.assertEqual(req.guidance.cfg_scale, 1.5)
        self.assertIsNone(req.guidance.audio)
        self.assertEqual(req.output_format, "png")
        self.assertEqual(accepted.seed, 9)
        self.assertEqual(events[1], diffmesh.StageStarted("denoise"))
        self.assertEqual(events[2], diffmesh.Progress("denoise", "step", 1, 2))
        self.assertEqual(events[2].fraction, 0.5)
        self.assertEqual(events[4], diffmesh.StageFinished("denoise", 0.25))
        progress = [e for e in events if isinstance(e, diffmesh.OutputProgress)]
        total = len(PNG) + len(data)
        self.assertEqual([e.received_bytes for e in progress], [1000, 2000, total])
        self.assertTrue(progress[-1].done)
        self.assertEqual(progress[0].info.name, "image")
        r = events[-1]
        self.assertIsInstance(r, diffmesh.Result)
        self.assertEqual(len(r.outputs), 1)
        image = r.image
        self.assertIs(image, r.outputs[0])
        self.assertEqual(image.data, PNG + data)
        self.assertEqual((image.kind, image.mime_type, image.size_bytes), ("image", "image/png", total))
        self.assertEqual(image.extension, ".png")
        self.assertIsNone(r.video)
        self.assertIs(r.output("image"), image)
        with self.assertRaises(KeyError):
            r.output("video")
        m = r.metadata
        self.assertEqual(m.timings, {"ar": 0.1, "denoise": 0.2})
        self.assertEqual((m.seed, m.model, m.size, m.prior_tokens), (9, "m", (32, 64), 17))
        self.assertEqual(m.request, req)
        self.assertNotIn("png-body", repr(r))  # bytes stay out of the repr
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(image.save(os.path.join(d, "sub", "a.png")).read_bytes(), PNG + data)
            self.assertEqual(r.save(os.path.join(d, "b.png")).read_bytes(), PNG + data)

    def test_several_outputs_and_tensors(self):
        frames = bytes(range(2 * 2 * 3 * 3))  # UINT8 [2, 2, 3, 3]
        audio = b"\0\0\x80?\0\0\0@\0\0@@\0\0\x80@"  # FLOAT32 [2, 2]: 1, 2, 3, 4
        i0 = info(0, "frames", pb.OUTPUT_KIND_TENSOR, "application/octet-stream", len(frames),
                  width=3, height=2, frames=2, frame_rate=24.0, tensor_dtype=tensor_pb2.UINT8,
                  tensor_shape=[2, 2, 3, 3])
        i1 = info(1, "audio", pb.OUTPUT_KIND_TENSOR, "application/octet-stream", len(audio),
                  audio_sample_rate=48000, audio_channels=2, tensor_dtype=tensor_pb2.FLOAT32,
                  tensor_shape=[2, 2])
        # The two outputs' chunks interleave; each output's own chunks stay in order.
        c0, c1 = chunks(0, frames, 10, i0), chunks(1, audio, 5, i1)
        mixed = [c0[0], c1[0], c0[1], c1[1], c1[2], c0[2], c1[3], c0[3]]
        r = self.feed_all([*mixed, result_event([i0, i1])])[-1]
        self.assertEqual([o.name for o in r.outputs], ["frames", "audio"])
        self.assertEqual(r.outputs[0].data, frames)
        self.assertEqual(r.outputs[1].to_tensor().to_list(), [1.0, 2.0, 3.0, 4.0])
        self.assertEqual(r.outputs[1].tensor_dtype, "FLOAT32")
        self.assertEqual(r.outputs[1].audio_sample_rate, 48000)
        self.assertEqual(r.outputs[0].extension, ".bin")
        try:
            import numpy as np
        except ImportError:
            return
        a = r.outputs[0].to_numpy()
        self.assertEqual(a.shape, (2, 2, 3, 3))
        self.assertEqual(a.dtype, np.uint8)
        self.assertEqual(int(a[1, 1, 2, 2]), 35)
        self.assertEqual(r.outputs[1].to_numpy().tolist(), [[1.0, 2.0], [3.0, 4.0]])

    def test_image_outputs_are_not_tensors(self):
        r = self.feed_all(full_stream())[-1]
        with self.assertRaises(ValueError):
            r.image.to_numpy()
        with self.assertRaises(ValueError):
            diffmesh.Tensor("FLOAT32", (3,), b"\0" * 8)  # 8 bytes do not hold 3 floats

    def test_bfloat16_tensor(self):
        try:
            import numpy  # noqa: F401
        except ImportError:
            self.skipTest("numpy is not installed")
        t = diffmesh.Tensor("BFLOAT16", (2,), b"\x80\x3f\x00\xc0")  # 1.0, -2.0
        self.assertEqual(t.to_numpy().tolist(), [1.0, -2.0])

    def test_output_given_whole_in_the_result(self):
        i = info(size=len(PNG))
        result = result_event([i])
        result.result.outputs[0].data = PNG
        self.assertEqual(self.feed_all([result])[-1].image.data, PNG)

    def test_empty_output(self):
        i = info(size=0)
        self.assertEqual(self.feed_all([result_event([i])])[-1].image.data, b"")

    def broken(self, events, *words):
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            self.feed_all(events)
        self.assertEqual(cm.exception.code, grpc.StatusCode.DATA_LOSS)
        for w in words:
            self.assertIn(w, cm.exception.message)

    def test_chunks_out_of_order_or_missing_are_data_loss(self):
        data = PNG * 10
        i = info(size=len(data))
        c = chunks(0, data, 20, i)
        self.broken([c[0], c[2], c[1], c[3], result_event([i])], "output 0", "offset 40", "expected 20")
        self.broken([c[0], c[1], c[1], result_event([i])], "offset 20", "expected 40")
        self.broken([c[0], c[1], result_event([i])], "output 0", "40 bytes received", "size_bytes")
        self.broken([c[1]], "first chunk starts at offset 20")
        self.broken(chunks(0, data, 20, info(size=30)), "more than its size_bytes 30")
        no_info = pb.OutputChunk(index=0, offset=0, data=data)
        self.broken([E(output=no_info)], "carries no info")
        self.broken([*chunks(1, data, 200, info(index=0, size=len(data)))], "output 1", "index 0")
        self.broken([*c, result_event([])], "does not list it")
        self.broken([*c, result_event([i, i])], "listed twice")
        whole = result_event([i])
        whole.result.outputs[0].data = data
        self.broken([*c, whole], "both in chunks and in the result")

    def test_a_stream_without_result_is_an_error(self):
        a = _wire.StreamAssembler()
        a.feed(full_stream()[0])
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            a.finish()
        self.assertEqual(cm.exception.code, grpc.StatusCode.INTERNAL)

    def test_unknown_or_empty_events_are_skipped(self):
        a = _wire.StreamAssembler()
        self.assertIsNone(a.feed(E()))
        self.assertIsNone(a.feed(E(stage=pb.StageEvent(stage="x"))))  # KIND_UNSPECIFIED

    def test_models(self):
        resp = pb.ListModelsResponse(default_model="ltx")
        img = resp.models.add(name="glm", kind=pb.MODEL_KIND_IMAGE, stages=["ar", "encoder", "denoise"],
                              input_roles=[pb.MEDIA_ROLE_EDIT_IMAGE, pb.MEDIA_ROLE_REFERENCE],
                              output_formats=[pb.OUTPUT_FORMAT_PNG, pb.OUTPUT_FORMAT_JPEG])
        img.limits.size_granularity = 32
        img.limits.min_size, img.limits.max_size = 256, 2048
        img.defaults.CopyFrom(accepted_request(height=1024, width=1024))
        vid = resp.models.add(name="ltx", kind=pb.MODEL_KIND_VIDEO_WITH_AUDIO,
                              input_roles=[pb.MEDIA_ROLE_FIRST_FRAME],
                              output_formats=[pb.OUTPUT_FORMAT_MP4, pb.OUTPUT_FORMAT_RAW, 99])
        vid.limits.frames.multiple, vid.limits.frames.offset, vid.limits.frames.max_frames = 8, 1, 257
        vid.defaults.num_frames = 121
        vid.defaults.frame_rate = 24.0
        vid.defaults.guidance.audio.cfg_scale = 7.0
        vid.defaults.guidance.stg_blocks.blocks.extend([29])
        resp.models.add(name="plain", kind=pb.MODEL_KIND_IMAGE)
        glm, ltx, plain = _wire.models_from_proto(resp)
        self.assertEqual([(m.name, m.default) for m in (glm, ltx)], [("glm", False), ("ltx", True)])
        self.assertEqual(glm.kind, diffmesh.ModelKind.IMAGE)
        self.assertEqual(glm.stages, ("ar", "encoder", "denoise"))
        self.assertEqual(glm.input_roles, ("edit_image", "reference"))
        self.assertEqual(glm.output_formats, ("png", "jpeg"))
        self.assertEqual((glm.limits.size_granularity, glm.limits.min_size), (32, 256))
        self.assertIsNone(glm.limits.frames)
        self.assertEqual(glm.defaults.size, (1024, 1024))
        self.assertEqual(ltx.kind, "video_with_audio")
        self.assertEqual(ltx.output_formats[2], "unknown_99")  # a format newer than this client
        self.assertEqual(ltx.limits.frames, diffmesh.FrameRule(8, 1, 257))
        self.assertTrue(ltx.limits.frames.allows(121))
        self.assertFalse(ltx.limits.frames.allows(120))
        self.assertFalse(ltx.limits.frames.allows(265))
        self.assertEqual((ltx.defaults.num_frames, ltx.defaults.frame_rate), (121, 24.0))
        self.assertEqual(ltx.defaults.guidance.audio.cfg_scale, 7.0)
        self.assertEqual(ltx.defaults.guidance.stg_blocks, (29,))
        # The role ``images`` take: the first frame, the image to edit, or none.
        self.assertEqual(ltx.image_role, diffmesh.MediaRole.FIRST_FRAME)
        self.assertEqual(glm.image_role, diffmesh.MediaRole.EDIT_IMAGE)
        self.assertIsNone(plain.image_role)
        models = [glm, ltx, plain]
        self.assertEqual(_wire.image_role_for(models, ""), "first_frame")  # the default model
        with self.assertRaises(ValueError) as cm:
            _wire.image_role_for(models, "plain")
        self.assertIn("images", str(cm.exception))
        with self.assertRaises(diffmesh.DiffmeshError) as cm:
            _wire.image_role_for(models, "nope")
        self.assertEqual(cm.exception.code, grpc.StatusCode.NOT_FOUND)


# --- Both clients against an in-process fake server -----------------------------------------


class FakeService(generation_pb2_grpc.GenerationServiceServicer):
    """Answers ListModels from ``models``; Generate runs ``script(request, context)``."""

    def __init__(self):
        self.requests = []
        self.metadata = []
        self.list_calls = 0
        self.script = lambda request, context: full_stream()
        self.models = pb.ListModelsResponse(default_model="video")
        self.models.models.add(name="video", kind=pb.MODEL_KIND_VIDEO_WITH_AUDIO,
                               input_roles=[pb.MEDIA_ROLE_FIRST_FRAME])
        self.models.models.add(name="image", kind=pb.MODEL_KIND_IMAGE,
                               input_roles=[pb.MEDIA_ROLE_EDIT_IMAGE, pb.MEDIA_ROLE_REFERENCE])
        self.models.models.add(name="text-only", kind=pb.MODEL_KIND_IMAGE)

    def Generate(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        yield from self.script(request, context)

    def ListModels(self, request, context):
        self.list_calls += 1
        return self.models


def wait_for_cancel(request, context):
    yield full_stream()[0]
    while context.is_active():
        time.sleep(0.01)


class FakeServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.service = FakeService()
        cls.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(cls.service, cls.server)
        cls.target = f"127.0.0.1:{cls.server.add_insecure_port('127.0.0.1:0')}"
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(None)

    def setUp(self):
        self.service.requests.clear()
        self.service.metadata.clear()
        self.service.list_calls = 0
        self.service.script = lambda request, context: full_stream()

    def test_sync_generate_assembles_a_large_output(self):
        data = PNG + os.urandom(3 * (1 << 20) + 123)  # four chunks of at most 1 MiB
        self.service.script = lambda r, c: full_stream(data, piece=1 << 20)
        seen = []
        with diffmesh.Client(self.target, token="t0k") as client:
            result = client.generate("p", seed=9, guidance={"cfg_scale": 2}, on_event=seen.append)
        self.assertEqual(result.image.data, data)
        self.assertIs(seen[-1], result)
        self.assertEqual(sum(isinstance(e, diffmesh.OutputProgress) for e in seen), 4)
        request = self.service.requests[0]
        self.assertEqual((request.prompt, request.seed, request.guidance.main.cfg_scale), ("p", 9, 2.0))
        self.assertEqual(self.service.metadata[0]["authorization"], "Bearer t0k")

    def test_sync_stream_events_in_order(self):
        with diffmesh.Client(self.target) as client, client.stream("p") as events:
            kinds = [type(e).__name__ for e in events]
            self.assertIsInstance(events.result, diffmesh.Result)
        self.assertEqual(kinds[:5], ["Accepted", "StageStarted", "Progress", "Progress",
                                     "StageFinished"])
        self.assertEqual(kinds[-1], "Result")
        self.assertTrue(all(k == "OutputProgress" for k in kinds[5:-1]))

    def test_images_take_the_models_role(self):
        with diffmesh.Client(self.target) as client:
            client.generate("p", images=[PNG], inputs=[("reference", JPEG)], model="image")
            client.generate("p", images=[PNG])  # the default model: a video model
            with self.assertRaises(ValueError) as cm:
                client.generate("p", images=[PNG], model="text-only")
            self.assertIn("images", str(cm.exception))
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.generate("p", images=[PNG], model="nope")
            self.assertEqual(cm.exception.code, grpc.StatusCode.NOT_FOUND)
        roles = [[m.role for m in r.inputs] for r in self.service.requests]
        self.assertEqual(roles, [[pb.MEDIA_ROLE_EDIT_IMAGE, pb.MEDIA_ROLE_REFERENCE],
                                 [pb.MEDIA_ROLE_FIRST_FRAME]])
        self.assertEqual(self.service.requests[0].inputs[0].data, PNG)
        self.assertEqual(self.service.list_calls, 2)  # once, and again for the unknown model

    def test_broken_chunks_fail_the_call(self):
        def script(request, context):
            events = full_stream(PNG * 10, piece=20)
            del events[6]  # the second chunk
            return events

        self.service.script = script
        with diffmesh.Client(self.target) as client:
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.generate("p")
        self.assertEqual(cm.exception.code, grpc.StatusCode.DATA_LOSS)

    def test_no_result_is_internal(self):
        self.service.script = lambda r, c: full_stream()[:3]
        with diffmesh.Client(self.target) as client:
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.generate("p")
        self.assertEqual(cm.exception.code, grpc.StatusCode.INTERNAL)

    def test_server_errors_keep_code_and_message(self):
        def script(request, context):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "num_frames: 120 is not 8k+1")
            yield  # a generator

        self.service.script = script
        with diffmesh.Client(self.target) as client:
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.generate("p", num_frames=120)
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(cm.exception.message, "num_frames: 120 is not 8k+1")

    def test_sync_cancel_from_another_thread_and_deadline(self):
        self.service.script = wait_for_cancel
        with diffmesh.Client(self.target) as client:
            stream = client.stream("cancel me")
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                for event in stream:
                    if isinstance(event, diffmesh.Accepted):
                        threading.Thread(target=stream.cancel).start()
            self.assertEqual(cm.exception.code, grpc.StatusCode.CANCELLED)
            with self.assertRaises(diffmesh.DiffmeshError) as cm:
                client.generate("slow", timeout=0.3)
            self.assertEqual(cm.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_aio_client(self):
        data = PNG + os.urandom(5000)

        async def main():
            async with diffmesh.aio.Client(self.target, token="t0k") as client:
                models = await client.list_models()
                self.assertEqual([m.name for m in models if m.default], ["video"])
                self.service.script = lambda r, c: full_stream(data, piece=1000)
                result = await client.generate("aio", images=[PNG], output_format="mp4")
                self.assertEqual(result.image.data, data)
                stream = client.stream("aio")
                events = [e async for e in stream]
                self.assertIsInstance(events[0], diffmesh.Accepted)
                self.assertIs(events[-1], stream.result)
                self.assertEqual(sum(isinstance(e, diffmesh.OutputProgress) for e in events), 6)
                results = await asyncio.gather(*[client.generate("g", seed=s) for s in (1, 2, 3)])
                self.assertEqual([r.image.data for r in results], [data] * 3)

                self.service.script = wait_for_cancel
                stream = client.stream("cancel")
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    async for event in stream:
                        if isinstance(event, diffmesh.Accepted):
                            stream.cancel()
                self.assertEqual(cm.exception.code, grpc.StatusCode.CANCELLED)
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    await client.generate("slow", timeout=0.3)
                self.assertEqual(cm.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)

                self.service.script = lambda r, c: full_stream()[:2]
                with self.assertRaises(diffmesh.DiffmeshError) as cm:
                    await client.generate("no result")
                self.assertEqual(cm.exception.code, grpc.StatusCode.INTERNAL)

        asyncio.run(main())
        first = self.service.requests[0]
        self.assertEqual([m.role for m in first.inputs], [pb.MEDIA_ROLE_FIRST_FRAME])
        self.assertEqual(first.output.format, pb.OUTPUT_FORMAT_MP4)
        self.assertEqual(self.service.metadata[0]["authorization"], "Bearer t0k")
        # list_models() filled the cache that the role lookup of ``images`` uses.
        self.assertEqual(self.service.list_calls, 1)


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
        with self.assertRaises(ValueError):
            client.generate("p", images=[b"not an image"])
        with self.assertRaises(ValueError):
            client.generate("p", output_format="png", quality=90)
        client.close()

    def test_request_over_max_message_bytes_is_refused_before_calling(self):
        client = diffmesh.Client(unused_target(), max_message_bytes=1024)
        client._stub = NoCallStub()
        with self.assertRaises(ValueError) as cm:
            client.generate("p", inputs=[("edit_image", PNG + b"\0" * 4096)])
        self.assertIn("max_message_bytes", str(cm.exception))
        client.close()

    def test_aio_client_never_calls_with_a_bad_request(self):
        async def main():
            client = diffmesh.aio.Client(unused_target())
            client._stub_for_loop = NoCallStub
            with self.assertRaises(TypeError):
                await client.generate("p", heigth=64)
            with self.assertRaises(TypeError):
                client.stream("p", guidance="x")
            with self.assertRaises(ValueError):
                await client.generate("p", steps=-1)
            with self.assertRaises(ValueError):
                client.stream("p", guidance={"audio": {"cfg_scale": math.nan}})
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
                client.generate("p", images=[PNG], timeout=0.5)  # the role lookup fails
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
