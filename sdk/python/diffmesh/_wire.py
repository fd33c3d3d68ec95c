"""The one place that speaks protobuf, shared by the sync and asyncio clients: requests to the
wire, events / results / model descriptions from it, and the assembly of outputs from their
OutputChunk events."""

from typing import Dict, List, Optional

import grpc

from diffmesh._errors import DiffmeshError
from diffmesh._proto import generation_pb2, tensor_pb2
from diffmesh._types import (
    Accepted,
    Event,
    FrameRule,
    GenerateParams,
    Guidance,
    MediaRole,
    Metadata,
    ModelInfo,
    ModelKind,
    ModelLimits,
    Output,
    OutputFormat,
    OutputInfo,
    OutputKind,
    OutputProgress,
    Progress,
    Request,
    Result,
    StageFinished,
    StageStarted,
    StreamGuidance,
    _STREAM_FIELDS,
)

pb = generation_pb2

_ROLE_TO_PB = {MediaRole.EDIT_IMAGE: pb.MEDIA_ROLE_EDIT_IMAGE,
               MediaRole.FIRST_FRAME: pb.MEDIA_ROLE_FIRST_FRAME,
               MediaRole.REFERENCE: pb.MEDIA_ROLE_REFERENCE}
_FORMAT_TO_PB = {OutputFormat.PNG: pb.OUTPUT_FORMAT_PNG, OutputFormat.JPEG: pb.OUTPUT_FORMAT_JPEG,
                 OutputFormat.WEBP: pb.OUTPUT_FORMAT_WEBP, OutputFormat.MP4: pb.OUTPUT_FORMAT_MP4,
                 OutputFormat.RAW: pb.OUTPUT_FORMAT_RAW,
                 OutputFormat.LATENTS: pb.OUTPUT_FORMAT_LATENTS}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_FORMAT_FROM_PB = {v: k for k, v in _FORMAT_TO_PB.items()}
_KIND_FROM_PB = {pb.OUTPUT_KIND_IMAGE: OutputKind.IMAGE, pb.OUTPUT_KIND_VIDEO: OutputKind.VIDEO,
                 pb.OUTPUT_KIND_AUDIO: OutputKind.AUDIO, pb.OUTPUT_KIND_TENSOR: OutputKind.TENSOR}
_MODEL_KIND_FROM_PB = {pb.MODEL_KIND_IMAGE: ModelKind.IMAGE,
                       pb.MODEL_KIND_VIDEO_WITH_AUDIO: ModelKind.VIDEO_WITH_AUDIO}


def _from_enum(mapping, enum_type, value):
    """The typed value; a value this client does not know (a newer server) as its proto name
    in lower case, or "unknown_<n>"."""
    if value in mapping:
        return mapping[value]
    try:
        return enum_type.Name(value).lower()
    except ValueError:
        return f"unknown_{value}"


# --- Requests to the wire -------------------------------------------------------------------


def _stream_guidance_to_proto(g: StreamGuidance, out: "pb.StreamGuidance") -> None:
    for name in _STREAM_FIELDS:
        value = getattr(g, name)
        if value is not None:
            setattr(out, name, value)


def guidance_to_proto(g: Guidance, out: "pb.Guidance") -> None:
    _stream_guidance_to_proto(g.main, out.main)
    if g.audio is not None:
        _stream_guidance_to_proto(g.audio, out.audio)
    if g.stg_blocks is not None:
        out.stg_blocks.SetInParent()  # an empty list is a choice too: no block skipped
        out.stg_blocks.blocks.extend(g.stg_blocks)
    if g.skip_step is not None:
        out.skip_step = g.skip_step


def request_to_proto(p: GenerateParams, max_bytes: Optional[int] = None) -> "pb.GenerateRequest":
    """The wire request: ``images`` first (role unset until ``set_image_role``), then ``inputs``
    in order. ``max_bytes``: the channel's message limit, checked here so that a request too
    large fails before the call."""
    r = pb.GenerateRequest(model=p.model, prompt=p.prompt, negative_prompt=p.negative_prompt,
                           request_id=p.request_id)
    for data in p.images:
        r.inputs.add(role=pb.MEDIA_ROLE_UNSPECIFIED, data=data)
    for item in p.inputs:
        r.inputs.add(role=_ROLE_TO_PB[item.role], data=item.data)
    for name in ("height", "width", "num_frames", "frame_rate", "steps", "seed"):
        value = getattr(p, name)
        if value is not None:
            setattr(r, name, value)
    if p.guidance is not None:
        guidance_to_proto(p.guidance, r.guidance)
    if p.output_format is not None:
        r.output.format = _FORMAT_TO_PB[p.output_format]
    if p.quality is not None:
        r.output.quality = p.quality
    if max_bytes is not None:
        size = r.ByteSize()
        if size > max_bytes:
            raise ValueError(f"inputs: the request is {size} bytes, more than the client's "
                             f"max_message_bytes ({max_bytes})")
    return r


def set_image_role(r: "pb.GenerateRequest", p: GenerateParams, role: MediaRole) -> None:
    """Gives the request's ``images`` (its first len(p.images) inputs) their role."""
    for i in range(len(p.images)):
        r.inputs[i].role = _ROLE_TO_PB[role]


# The longest a client spends looking up the model descriptions that give ``images`` a role.
ROLE_LOOKUP_SECONDS = 10.0


def describes(models: Optional[List[ModelInfo]], model: str) -> bool:
    """Whether the cached ``models`` describe ``model`` ("" = the default model)."""
    return models is not None and (not model or any(m.name == model for m in models))


def image_role_for(models: List[ModelInfo], model: str) -> MediaRole:
    """The role of ``images=[...]`` for ``model`` ("" = the default model), from ListModels."""
    info = next((m for m in models if (m.name == model if model else m.default)), None)
    if info is None:
        known = ", ".join(m.name for m in models) or "none"
        raise DiffmeshError(grpc.StatusCode.NOT_FOUND,
                            f"model: {model or '(default)'!r} is not served (models: {known})")
    role = info.image_role
    if role is None:
        accepted = ", ".join(str(r) for r in info.input_roles) or "none"
        raise ValueError(f"images: model {info.name!r} has no single role for images (accepts: "
                         f"{accepted}); pass inputs=[(role, image)]")
    return role


# --- From the wire --------------------------------------------------------------------------


def _opt(message, name):
    return getattr(message, name) if message.HasField(name) else None


def _stream_guidance_from_proto(g: "pb.StreamGuidance") -> StreamGuidance:
    return StreamGuidance(*(_opt(g, name) for name in _STREAM_FIELDS))


def guidance_from_proto(g: "pb.Guidance") -> Guidance:
    main = _stream_guidance_from_proto(g.main)
    audio = _stream_guidance_from_proto(g.audio) if g.HasField("audio") else None
    return Guidance(*(getattr(main, name) for name in _STREAM_FIELDS), audio=audio,
                    stg_blocks=tuple(g.stg_blocks.blocks) if g.HasField("stg_blocks") else None,
                    skip_step=_opt(g, "skip_step"))


def request_from_proto(r: "pb.GenerateRequest") -> Request:
    output_format = None
    if r.output.format != pb.OUTPUT_FORMAT_UNSPECIFIED:
        output_format = _from_enum(_FORMAT_FROM_PB, pb.OutputFormat, r.output.format)
    return Request(
        model=r.model, prompt=r.prompt, negative_prompt=r.negative_prompt,
        inputs=tuple(_from_enum(_ROLE_FROM_PB, pb.MediaRole, m.role) for m in r.inputs),
        height=_opt(r, "height"), width=_opt(r, "width"), num_frames=_opt(r, "num_frames"),
        frame_rate=_opt(r, "frame_rate"), steps=_opt(r, "steps"), seed=_opt(r, "seed"),
        guidance=guidance_from_proto(r.guidance), output_format=output_format,
        quality=_opt(r.output, "quality"), request_id=r.request_id)


def output_info_from_proto(i: "pb.OutputInfo") -> OutputInfo:
    return OutputInfo(**_output_info_fields(i))


def _output_info_fields(i: "pb.OutputInfo") -> dict:
    return dict(
        index=i.index, name=i.name, kind=_from_enum(_KIND_FROM_PB, pb.OutputKind, i.kind),
        mime_type=i.mime_type, width=i.width, height=i.height, frames=i.frames,
        frame_rate=i.frame_rate, audio_sample_rate=i.audio_sample_rate,
        audio_channels=i.audio_channels, size_bytes=i.size_bytes,
        tensor_dtype=(_from_enum({}, tensor_pb2.DType, i.tensor_dtype).upper()
                      if i.tensor_dtype else None),
        tensor_shape=tuple(i.tensor_shape))


def metadata_from_proto(m: "pb.ResultMetadata") -> Metadata:
    return Metadata(request_id=m.request_id, request=request_from_proto(m.request),
                    timings={t.stage: t.seconds for t in m.stage_timings},
                    total_seconds=m.total_seconds, prior_tokens=m.prior_tokens)


def models_from_proto(r: "pb.ListModelsResponse") -> List[ModelInfo]:
    out = []
    for m in r.models:
        lim = m.limits
        frames = None
        if lim.HasField("frames"):
            frames = FrameRule(multiple=lim.frames.multiple, offset=lim.frames.offset,
                               max_frames=lim.frames.max_frames)
        limits = ModelLimits(
            size_granularity=lim.size_granularity, min_size=lim.min_size, max_size=lim.max_size,
            min_steps=lim.min_steps, max_steps=lim.max_steps,
            max_prompt_bytes=lim.max_prompt_bytes, frames=frames,
            max_input_bytes=lim.max_input_bytes, max_input_pixels=lim.max_input_pixels)
        out.append(ModelInfo(
            name=m.name, description=m.description,
            kind=_from_enum(_MODEL_KIND_FROM_PB, pb.ModelKind, m.kind),
            input_roles=tuple(_from_enum(_ROLE_FROM_PB, pb.MediaRole, v) for v in m.input_roles),
            stages=tuple(m.stages), limits=limits, defaults=request_from_proto(m.defaults),
            output_formats=tuple(_from_enum(_FORMAT_FROM_PB, pb.OutputFormat, v)
                                 for v in m.output_formats),
            default=(m.name == r.default_model)))
    return out


# --- The event stream, with the outputs assembled from their chunks -------------------------


def _broken(message: str) -> DiffmeshError:
    """The server broke the stream's contract: the outputs cannot be trusted."""
    return DiffmeshError(grpc.StatusCode.DATA_LOSS, message)


class _Pending:
    """One output's bytes as they arrive."""

    __slots__ = ("info", "data")

    def __init__(self, info: OutputInfo):
        self.info = info
        self.data = bytearray()


class StreamAssembler:
    """Turns the GenerateEvent messages of one call into typed events.

    OutputChunk events are appended to their output (checked: the first chunk of an output has
    offset 0 and carries its info, each next one starts where the last ended, nothing goes past
    ``size_bytes``) and reported as ``OutputProgress``. The GenerateResult becomes a ``Result``
    whose outputs carry the assembled bytes, each checked to be whole. Contract violations raise
    ``DiffmeshError`` with DATA_LOSS naming the output.
    """

    def __init__(self):
        self._pending: Dict[int, _Pending] = {}
        self.result: Optional[Result] = None

    def feed(self, e: "pb.GenerateEvent") -> Optional[Event]:
        """The typed event for ``e``, or None for a kind this client does not know."""
        kind = e.WhichOneof("event")
        if self.result is not None:
            return None  # nothing follows the result
        if kind == "accepted":
            return Accepted(request_id=e.accepted.request_id,
                            request=request_from_proto(e.accepted.request))
        if kind == "stage":
            s = e.stage
            if s.kind == pb.StageEvent.KIND_STARTED:
                return StageStarted(stage=s.stage)
            if s.kind == pb.StageEvent.KIND_FINISHED:
                return StageFinished(stage=s.stage, duration_seconds=s.duration_seconds)
            return None
        if kind == "progress":
            p = e.progress
            return Progress(stage=p.stage, unit=p.unit, done=p.done, total=p.total)
        if kind == "output":
            return self._chunk(e.output)
        if kind == "result":
            self.result = self._result(e.result)
            return self.result
        return None

    def _chunk(self, c: "pb.OutputChunk") -> OutputProgress:
        pending = self._pending.get(c.index)
        if pending is None:
            if c.offset != 0:
                raise _broken(f"output {c.index}: its first chunk starts at offset {c.offset}, not 0")
            if not c.HasField("info"):
                raise _broken(f"output {c.index}: its first chunk carries no info")
            if c.info.index != c.index:
                raise _broken(f"output {c.index}: its info says index {c.info.index}")
            pending = self._pending[c.index] = _Pending(output_info_from_proto(c.info))
        elif c.offset != len(pending.data):
            raise _broken(f"output {c.index} ({pending.info.name}): a chunk at offset {c.offset}, "
                          f"expected {len(pending.data)} (chunks must be contiguous, in order)")
        end = len(pending.data) + len(c.data)
        if end > pending.info.size_bytes:
            raise _broken(f"output {c.index} ({pending.info.name}): {end} bytes received, more "
                          f"than its size_bytes {pending.info.size_bytes}")
        pending.data += c.data
        return OutputProgress(index=c.index, name=pending.info.name, received_bytes=end,
                              total_bytes=pending.info.size_bytes, info=pending.info)

    def _result(self, r: "pb.GenerateResult") -> Result:
        outputs = []
        listed = set()
        for o in r.outputs:
            fields = _output_info_fields(o.info)
            index, name = fields["index"], fields["name"]
            if index in listed:
                raise _broken(f"output {index} ({name}): listed twice in the result")
            listed.add(index)
            pending = self._pending.get(index)
            if pending is not None:
                if o.data:
                    raise _broken(f"output {index} ({name}): bytes both in chunks and in the result")
                data = bytes(pending.data)
            else:
                data = bytes(o.data)  # no chunks: a server that sends the output whole
            if len(data) != fields["size_bytes"]:
                raise _broken(f"output {index} ({name}): {len(data)} bytes received, its "
                              f"size_bytes is {fields['size_bytes']}")
            outputs.append(Output(**fields, data=data))
        for index in self._pending:
            if index not in listed:
                raise _broken(f"output {index} ({self._pending[index].info.name}): chunks "
                              f"arrived but the result does not list it")
        self._pending.clear()
        return Result(outputs=tuple(outputs), metadata=metadata_from_proto(r.metadata))

    def finish(self) -> None:
        """At the end of the stream: raises unless a result arrived."""
        if self.result is None:
            raise DiffmeshError(grpc.StatusCode.INTERNAL,
                                "the server ended the stream without a result")
