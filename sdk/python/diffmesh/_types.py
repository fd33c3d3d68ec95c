"""Typed request parameters, progress events, results and model descriptions.

Everything here is plain Python (frozen dataclasses); conversion to and from the protobuf
messages happens only in this module.
"""

import dataclasses
import difflib
import math
import os
import pathlib
import struct
from typing import Dict, Optional, Tuple, Union

from diffmesh._proto import generation_pb2, tensor_pb2

_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1


# --- Request ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenerateParams:
    """One image request. ``None`` means "the model's default" (the server fills it in and
    reports the value back in ``Accepted`` and ``Metadata``).

    Checked on construction, before any call: types (``TypeError``) and the limits that hold
    for every model (``ValueError``). Per-model limits (sizes, steps, prompt length) are checked
    by the server, which answers INVALID_ARGUMENT naming the field.
    """

    prompt: str
    negative_prompt: str = ""
    model: str = ""
    height: Optional[int] = None
    width: Optional[int] = None
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    seed: Optional[int] = None
    request_id: str = ""
    include_latents: bool = False

    def __post_init__(self):
        for name in ("prompt", "negative_prompt", "model", "request_id"):
            _check_type(name, getattr(self, name), str)
        if not self.prompt:
            raise ValueError("prompt: must not be empty")
        for name in ("height", "width", "steps"):
            value = getattr(self, name)
            if value is None:
                continue
            _check_int(name, value)
            if not 1 <= value <= _INT32_MAX:
                raise ValueError(
                    f"{name}: {value} must be a positive integer (None for the model's default)")
        if self.guidance_scale is not None:
            if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)):
                raise TypeError(
                    f"guidance_scale: expected a float, got {type(self.guidance_scale).__name__}")
            if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
                raise ValueError(f"guidance_scale: {self.guidance_scale} must be finite and >= 0")
            object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not 0 <= self.seed <= _UINT64_MAX:
                raise ValueError(f"seed: {self.seed} is outside 0..2**64-1")
        _check_type("include_latents", self.include_latents, bool)

    @classmethod
    def from_kwargs(cls, prompt, params: Dict[str, object], caller: str) -> "GenerateParams":
        """``prompt`` plus keyword arguments; unknown names raise ``TypeError``."""
        if isinstance(prompt, GenerateParams):
            if params:
                raise TypeError(f"{caller}(): pass either GenerateParams or keyword arguments, not both")
            return prompt
        known = [f.name for f in dataclasses.fields(cls) if f.name != "prompt"]
        for name in params:
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(known)}"
                raise TypeError(f"{caller}() got an unexpected keyword argument '{name}'{suggestion}")
        return cls(prompt=prompt, **params)

    def to_proto(self) -> "generation_pb2.GenerateRequest":
        r = generation_pb2.GenerateRequest(
            model=self.model,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            height=self.height or 0,
            width=self.width or 0,
            steps=self.steps or 0,
            request_id=self.request_id,
            include_latents=self.include_latents,
        )
        if self.guidance_scale is not None:
            r.guidance_scale = self.guidance_scale
        if self.seed is not None:
            r.seed = self.seed
        return r


def _check_type(name: str, value, expected: type) -> None:
    if not isinstance(value, expected):
        raise TypeError(f"{name}: expected {expected.__name__}, got {type(value).__name__}")


def _check_int(name: str, value) -> None:
    # bool is an int subclass; True as a size is a bug, not a request.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, got {type(value).__name__}")


# --- Events -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The request as it will run, defaults filled in (always the first event)."""

    request_id: str
    model: str
    seed: int
    height: int
    width: int
    steps: int
    guidance_scale: float


@dataclasses.dataclass(frozen=True)
class StageStarted:
    stage: str  # "ar", "encoder", "denoise"


@dataclasses.dataclass(frozen=True)
class StageFinished:
    stage: str
    duration_seconds: float


@dataclasses.dataclass(frozen=True)
class ArProgress:
    tokens_generated: int
    tokens_total: int


@dataclasses.dataclass(frozen=True)
class DenoiseProgress:
    step: int  # 1-based
    total_steps: int


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A wire tensor: dtype name ("FLOAT32", ...), shape, little-endian row-major bytes."""

    dtype: str
    shape: Tuple[int, ...]
    data: bytes = dataclasses.field(repr=False)

    def to_list(self):
        """FLOAT32 / INT64 / INT32 / UINT8 data as a flat Python list."""
        fmt = {"FLOAT32": "f", "FLOAT64": "d", "INT64": "q", "INT32": "i", "INT16": "h",
               "INT8": "b", "UINT8": "B", "BOOL": "?"}.get(self.dtype)
        if fmt is None:
            raise ValueError(f"to_list: dtype {self.dtype} is not supported")
        count = len(self.data) // struct.calcsize(fmt)
        return list(struct.unpack(f"<{count}{fmt}", self.data))

    def to_numpy(self):
        """The tensor as a numpy array (needs numpy)."""
        import numpy as np  # optional dependency

        dtype = {"FLOAT32": "<f4", "FLOAT64": "<f8", "FLOAT16": "<f2", "INT64": "<i8",
                 "INT32": "<i4", "INT16": "<i2", "INT8": "i1", "UINT8": "u1", "BOOL": "?"}[self.dtype]
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape)


@dataclasses.dataclass(frozen=True)
class Metadata:
    request_id: str
    model: str
    seed: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    # Seconds per stage: "ar", "encoder", "denoise", "vae_decode" (the encoder runs beside the
    # AR stage, so the sum can exceed total_seconds).
    timings: Dict[str, float]
    total_seconds: float
    prior_tokens: int

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) in pixels."""
        return (self.width, self.height)


@dataclasses.dataclass(frozen=True)
class Result:
    """The final event: the PNG, what ran, and (if asked for) the latents."""

    png: bytes = dataclasses.field(repr=False)
    metadata: Metadata
    latents: Optional[Tensor] = None

    def save(self, path: Union[str, os.PathLike]) -> pathlib.Path:
        """Writes the PNG to ``path`` (parent folders are created); returns the path."""
        p = pathlib.Path(path)
        if p.parent != pathlib.Path("."):
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.png)
        return p


Event = Union[Accepted, StageStarted, StageFinished, ArProgress, DenoiseProgress, Result]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    default_height: int
    default_width: int
    default_steps: int
    default_guidance_scale: float
    pixel_granularity: int  # height and width must be multiples of this
    min_size: int
    max_size: int
    max_prompt_bytes: int
    stages: Tuple[str, ...]
    default: bool  # the model used when a request names none


# --- Conversion from the wire --------------------------------------------------------------


def tensor_from_proto(t: "tensor_pb2.Tensor") -> Tensor:
    return Tensor(dtype=tensor_pb2.DType.Name(t.dtype), shape=tuple(t.shape), data=bytes(t.data))


def result_from_proto(r: "generation_pb2.GenerateResult") -> Result:
    m = r.metadata
    metadata = Metadata(
        request_id=m.request_id,
        model=m.model,
        seed=m.seed,
        height=m.height,
        width=m.width,
        steps=m.steps,
        guidance_scale=m.guidance_scale,
        timings={t.stage: t.seconds for t in m.stage_timings},
        total_seconds=m.total_seconds,
        prior_tokens=m.prior_tokens,
    )
    latents = tensor_from_proto(r.latents) if r.HasField("latents") else None
    return Result(png=bytes(r.png), metadata=metadata, latents=latents)


def event_from_proto(e: "generation_pb2.GenerateEvent") -> Optional[Event]:
    """The typed event, or None for a kind this client does not know (a newer server)."""
    kind = e.WhichOneof("event")
    if kind == "accepted":
        a = e.accepted
        return Accepted(request_id=a.request_id, model=a.model, seed=a.seed, height=a.height,
                        width=a.width, steps=a.steps, guidance_scale=a.guidance_scale)
    if kind == "stage":
        s = e.stage
        if s.kind == generation_pb2.StageEvent.STARTED:
            return StageStarted(stage=s.stage)
        if s.kind == generation_pb2.StageEvent.FINISHED:
            return StageFinished(stage=s.stage, duration_seconds=s.duration_seconds)
        return None
    if kind == "ar_progress":
        return ArProgress(tokens_generated=e.ar_progress.tokens_generated,
                          tokens_total=e.ar_progress.tokens_total)
    if kind == "denoise_progress":
        return DenoiseProgress(step=e.denoise_progress.step,
                               total_steps=e.denoise_progress.total_steps)
    if kind == "result":
        return result_from_proto(e.result)
    return None


def models_from_proto(r: "generation_pb2.ListModelsResponse"):
    return [
        ModelInfo(
            name=m.name,
            description=m.description,
            default_height=m.default_height,
            default_width=m.default_width,
            default_steps=m.default_steps,
            default_guidance_scale=m.default_guidance_scale,
            pixel_granularity=m.pixel_granularity,
            min_size=m.min_size,
            max_size=m.max_size,
            max_prompt_bytes=m.max_prompt_bytes,
            stages=tuple(m.stages),
            default=(m.name == r.default_model),
        )
        for m in r.models
    ]
