"""Typed request parameters, progress events, results and model descriptions.

Everything here is plain Python (frozen dataclasses and string enums) and knows nothing of
protobuf: ``diffmesh._wire`` converts to and from the wire messages and assembles outputs from
their chunks, once for both clients.
"""

import dataclasses
import difflib
import enum
import math
import os
import pathlib
import struct
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1
_FLOAT32_MAX = 3.4028234663852886e38
REQUEST_ID_MAX_BYTES = 128


# --- Enumerations (strings, so that ``output.kind == "image"`` works) ------------------------


class MediaRole(str, enum.Enum):
    """What an input medium is for (``ModelInfo.input_roles`` lists what a model accepts)."""

    EDIT_IMAGE = "edit_image"    # the image to edit (image-to-image)
    FIRST_FRAME = "first_frame"  # the first frame of the video (image-to-video)
    REFERENCE = "reference"      # a reference image

    def __str__(self) -> str:
        return self.value


class OutputFormat(str, enum.Enum):
    """What the outputs are encoded as. None in a request means the model's own (PNG for image
    models, MP4 for video models)."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    MP4 = "mp4"          # H.264 video with AAC audio
    RAW = "raw"          # tensors: UINT8 frames [F, H, W, 3], FLOAT32 audio [C, samples]
    LATENTS = "latents"  # the final latents, before decoding (FLOAT32 tensors)

    def __str__(self) -> str:
        return self.value


class OutputKind(str, enum.Enum):
    IMAGE = "image"
    VIDEO = "video"    # with its audio track when the model makes sound
    AUDIO = "audio"
    TENSOR = "tensor"  # RAW and LATENTS formats

    def __str__(self) -> str:
        return self.value


class ModelKind(str, enum.Enum):
    IMAGE = "image"
    VIDEO_WITH_AUDIO = "video_with_audio"

    def __str__(self) -> str:
        return self.value


_FORMAT_ALIASES = {"jpg": OutputFormat.JPEG}
# Quality ranges per format (the server rejects quality for any other format).
_QUALITY_RANGE = {OutputFormat.JPEG: (1, 100), OutputFormat.WEBP: (0, 100)}


def _enum_value(enum_type, value, name: str, aliases: Mapping[str, object] = None):
    """``value`` (a member, or its name or value in any case) as a member of ``enum_type``."""
    if isinstance(value, enum_type):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string such as {_choices(enum_type)}, "
                        f"got {type(value).__name__}")
    key = value.strip().lower()
    if aliases and key in aliases:
        return aliases[key]
    for member in enum_type:
        if key in (member.value, member.name.lower()):
            return member
    raise ValueError(f"{name}: {value!r} is not one of {_choices(enum_type)}")


def _choices(enum_type) -> str:
    return ", ".join(repr(m.value) for m in enum_type)


# --- Checks shared by the request types -----------------------------------------------------


def _check_type(name: str, value, expected) -> None:
    if not isinstance(value, expected):
        want = expected.__name__ if isinstance(expected, type) else \
            " or ".join(t.__name__ for t in expected)
        raise TypeError(f"{name}: expected {want}, got {type(value).__name__}")


def _check_int(name: str, value) -> None:
    # bool is an int subclass; True as a size is a bug, not a request.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, got {type(value).__name__}")


def _positive_int32(name: str, value) -> None:
    _check_int(name, value)
    if not 1 <= value <= _INT32_MAX:
        raise ValueError(f"{name}: {value} must be a positive integer (None for the model's default)")


def _float(name: str, value, *, minimum: Optional[float] = 0.0, maximum: Optional[float] = None,
           positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise ValueError(f"{name}: {value} must be finite")
    if positive and value <= 0:
        raise ValueError(f"{name}: {value} must be > 0")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: {value} must be >= {minimum:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: {value} must be <= {maximum:g}")
    return value


# The bounds that hold for every model (the server checks its own upper limits): scales are
# >= 0 except stg_scale (a negative one pushes toward the perturbed prediction); rescale is a
# blend factor in 0..1.
_STREAM_BOUNDS = {"cfg_scale": dict(minimum=0.0), "stg_scale": dict(minimum=None),
                  "modality_scale": dict(minimum=0.0), "rescale": dict(minimum=0.0, maximum=1.0)}


def _reject_unknown(names, known, where: str) -> None:
    for name in names:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(known)}"
            raise TypeError(f"{where} got an unexpected name '{name}'{suggestion}")


# --- Guidance -------------------------------------------------------------------------------

_STREAM_FIELDS = ("cfg_scale", "stg_scale", "modality_scale", "rescale")


@dataclasses.dataclass(frozen=True)
class StreamGuidance:
    """Guidance weights of one stream; None means "the model's default" (ModelInfo.defaults).

    cfg_scale: classifier-free guidance (1: no negative branch).
    stg_scale: spatio-temporal guidance, the perturbed branch (0: off).
    modality_scale: the audio<->video isolation branch (1: off).
    rescale: guidance rescale toward the conditional prediction's std, 0..1 (0: off).
    """

    cfg_scale: Optional[float] = None
    stg_scale: Optional[float] = None
    modality_scale: Optional[float] = None
    rescale: Optional[float] = None
    _where: dataclasses.InitVar[str] = "guidance"

    def __post_init__(self, _where):
        for name in _STREAM_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _float(f"{_where}.{name}", value,
                                                      **_STREAM_BOUNDS[name]))

    @classmethod
    def coerce(cls, value, where: str) -> Optional["StreamGuidance"]:
        """A StreamGuidance, a dict of its fields, or None."""
        if value is None or isinstance(value, StreamGuidance):
            return value
        if isinstance(value, Mapping):
            _reject_unknown(value, _STREAM_FIELDS, where)
            return cls(**value, _where=where)
        raise TypeError(f"{where}: expected diffmesh.StreamGuidance or a dict, "
                        f"got {type(value).__name__}")

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in _STREAM_FIELDS)


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Guidance of a request; every field None means "the model's default".

    The main stream's weights (the image, or a video model's video) are given directly;
    ``audio`` holds the audio stream's (a StreamGuidance or a dict with the same four names;
    its unset fields take the model's audio defaults, not the main stream's values).

        Guidance(cfg_scale=3.0, stg_scale=1.0, audio={"cfg_scale": 7.0}, stg_blocks=[29])
        {"cfg_scale": 3.0, "audio": {"cfg_scale": 7.0}}   # the same as a dict

    stg_blocks: DiT blocks whose self-attention the perturbed (STG) branch skips.
    skip_step: the guided prediction is recomputed every (skip_step + 1)-th step and reused in
        between; 0 = every step.
    """

    cfg_scale: Optional[float] = None
    stg_scale: Optional[float] = None
    modality_scale: Optional[float] = None
    rescale: Optional[float] = None
    audio: Optional[StreamGuidance] = None
    stg_blocks: Optional[Tuple[int, ...]] = None
    skip_step: Optional[int] = None

    def __post_init__(self):
        for name in _STREAM_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _float(f"guidance.{name}", value,
                                                      **_STREAM_BOUNDS[name]))
        object.__setattr__(self, "audio", StreamGuidance.coerce(self.audio, "guidance.audio"))
        if self.stg_blocks is not None:
            if isinstance(self.stg_blocks, (str, bytes)) or not isinstance(self.stg_blocks, Sequence):
                raise TypeError(f"guidance.stg_blocks: expected a list of ints, "
                                f"got {type(self.stg_blocks).__name__}")
            for i, block in enumerate(self.stg_blocks):
                _check_int(f"guidance.stg_blocks[{i}]", block)
                if not 0 <= block <= _INT32_MAX:
                    raise ValueError(f"guidance.stg_blocks[{i}]: {block} must be >= 0")
            object.__setattr__(self, "stg_blocks", tuple(self.stg_blocks))
        if self.skip_step is not None:
            _check_int("guidance.skip_step", self.skip_step)
            if not 0 <= self.skip_step <= _INT32_MAX:
                raise ValueError(f"guidance.skip_step: {self.skip_step} must be >= 0")

    @property
    def main(self) -> StreamGuidance:
        """The main stream's weights as a StreamGuidance."""
        return StreamGuidance(*(getattr(self, name) for name in _STREAM_FIELDS))

    @classmethod
    def coerce(cls, value) -> Optional["Guidance"]:
        """A Guidance, a dict of its fields, a number (the main stream's cfg_scale) or None."""
        if value is None or isinstance(value, Guidance):
            return value
        if isinstance(value, Mapping):
            _reject_unknown(value, [f.name for f in dataclasses.fields(cls)], "guidance")
            return cls(**value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(cfg_scale=value)
        raise TypeError(f"guidance: expected diffmesh.Guidance, a dict or a number, "
                        f"got {type(value).__name__}")


# --- Input media ----------------------------------------------------------------------------

MediaData = Union[bytes, bytearray, memoryview, str, os.PathLike]


def _sniff_image(data: bytes) -> Optional[str]:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _read_media(value, name: str) -> bytes:
    """Encoded image bytes from bytes, a path, or a PIL image (encoded as PNG)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, (str, os.PathLike)):
        try:
            with open(value, "rb") as f:
                data = f.read()
        except OSError as e:
            raise type(e)(e.errno, f"{name}: {e.strerror}", e.filename) from None
    elif hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size"):
        import io  # a PIL.Image.Image (duck-typed: Pillow is optional)

        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"{name}: expected image bytes, a path or a PIL image, "
                        f"got {type(value).__name__}")
    if not data:
        raise ValueError(f"{name}: empty")
    if _sniff_image(data) is None:
        where = f" ({value})" if isinstance(value, (str, os.PathLike)) else ""
        raise ValueError(f"{name}: not a PNG, JPEG or WebP file{where}")
    return data


@dataclasses.dataclass(frozen=True)
class InputMedia:
    """An input image and what it is for. ``data`` may be given as bytes, a path (read at once)
    or a PIL image (sent as PNG); it is held as the encoded bytes."""

    role: MediaRole
    data: bytes = dataclasses.field(repr=False)
    _where: dataclasses.InitVar[str] = "inputs"

    def __post_init__(self, _where):
        object.__setattr__(self, "role", _enum_value(MediaRole, self.role, f"{_where}.role"))
        object.__setattr__(self, "data", _read_media(self.data, f"{_where}.data"))

    @classmethod
    def coerce(cls, value, where: str) -> "InputMedia":
        """An InputMedia, or a (role, data) pair."""
        if isinstance(value, InputMedia):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return cls(value[0], value[1], _where=where)
        raise TypeError(f"{where}: expected a (role, image) pair or diffmesh.InputMedia, "
                        f"got {type(value).__name__}")


# --- Request --------------------------------------------------------------------------------


def _sequence(value, name: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, bytes, bytearray, memoryview, os.PathLike)) or \
            not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a list, got {type(value).__name__}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class GenerateParams:
    """One request. ``None`` means "the model's default" (the server fills it in and reports the
    value back in ``Accepted.request`` and ``Metadata.request``).

    images: input images whose role the client takes from the model's description (see
        ``Client.generate``); inputs: (role, image) pairs with an explicit role. An image is
        bytes (PNG, JPEG or WebP), a path, or a PIL image.
    guidance: a ``Guidance``, a dict of its fields, or a number (the main cfg_scale).
    output_format: "png", "jpeg", "webp", "mp4", "raw" or "latents" (None: the model's own);
    quality: JPEG 1..100, WebP 0..100 (100: lossless); only with those formats.

    Checked on construction, before any call: types (``TypeError``) and the limits that hold for
    every model (``ValueError``), each naming the field. Per-model limits (sizes, frame counts,
    steps, prompt length, input roles) are checked by the server, which answers
    INVALID_ARGUMENT naming the field and the limit.
    """

    prompt: str
    negative_prompt: str = ""
    model: str = ""
    images: Tuple[bytes, ...] = dataclasses.field(default=(), repr=False)
    inputs: Tuple[InputMedia, ...] = ()
    height: Optional[int] = None
    width: Optional[int] = None
    num_frames: Optional[int] = None
    frame_rate: Optional[float] = None
    steps: Optional[int] = None
    seed: Optional[int] = None
    guidance: Optional[Guidance] = None
    output_format: Optional[OutputFormat] = None
    quality: Optional[int] = None
    request_id: str = ""

    def __post_init__(self):
        for name in ("prompt", "negative_prompt", "model", "request_id"):
            _check_type(name, getattr(self, name), str)
        if not self.prompt:
            raise ValueError("prompt: must not be empty")
        if len(self.request_id.encode("utf-8")) > REQUEST_ID_MAX_BYTES:
            raise ValueError(f"request_id: longer than {REQUEST_ID_MAX_BYTES} bytes")
        if not all("!" <= c <= "~" for c in self.request_id):
            raise ValueError("request_id: only visible ASCII characters (no spaces)")
        images = _sequence(self.images, "images")
        object.__setattr__(self, "images", tuple(
            _read_media(image, f"images[{i}]") for i, image in enumerate(images)))
        inputs = _sequence(self.inputs, "inputs")
        object.__setattr__(self, "inputs", tuple(
            InputMedia.coerce(item, f"inputs[{i}]") for i, item in enumerate(inputs)))
        for name in ("height", "width", "num_frames", "steps"):
            value = getattr(self, name)
            if value is not None:
                _positive_int32(name, value)
        if self.frame_rate is not None:
            object.__setattr__(self, "frame_rate", _float("frame_rate", self.frame_rate, positive=True))
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not 0 <= self.seed <= _UINT64_MAX:
                raise ValueError(f"seed: {self.seed} is outside 0..2**64-1")
        object.__setattr__(self, "guidance", Guidance.coerce(self.guidance))
        if self.output_format is not None:
            object.__setattr__(self, "output_format", _enum_value(
                OutputFormat, self.output_format, "output_format", _FORMAT_ALIASES))
        if self.quality is not None:
            _check_int("quality", self.quality)
            allowed = _QUALITY_RANGE.get(self.output_format)
            if allowed is None:
                raise ValueError("quality: only for output_format 'jpeg' (1..100) or 'webp' "
                                 f"(0..100), not {str(self.output_format or 'the default')!r}")
            if not allowed[0] <= self.quality <= allowed[1]:
                raise ValueError(f"quality: {self.quality} is outside {allowed[0]}..{allowed[1]} "
                                 f"for {self.output_format.value}")

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


@dataclasses.dataclass(frozen=True)
class Request:
    """A request as the server reports it (Accepted, Metadata, ModelInfo.defaults): every
    default filled in. Input media are listed by role only (their bytes are not sent back)."""

    model: str
    prompt: str
    negative_prompt: str
    inputs: Tuple[MediaRole, ...]
    height: Optional[int]
    width: Optional[int]
    num_frames: Optional[int]  # video models
    frame_rate: Optional[float]
    steps: Optional[int]
    seed: Optional[int]
    guidance: Guidance
    output_format: Optional[OutputFormat]
    quality: Optional[int]
    request_id: str

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) in pixels."""
        return (self.width or 0, self.height or 0)


# --- Outputs and results --------------------------------------------------------------------

_NUMPY_DTYPES = {"FLOAT32": "<f4", "FLOAT64": "<f8", "FLOAT16": "<f2", "BFLOAT16": None,
                 "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "i1", "UINT8": "u1",
                 "BOOL": "?"}
_STRUCT_FORMATS = {"FLOAT32": "f", "FLOAT64": "d", "FLOAT16": "e", "INT64": "q", "INT32": "i",
                   "INT16": "h", "INT8": "b", "UINT8": "B", "BOOL": "?"}
_ITEM_BYTES = {"FLOAT32": 4, "FLOAT64": 8, "FLOAT16": 2, "BFLOAT16": 2, "INT64": 8, "INT32": 4,
               "INT16": 2, "INT8": 1, "UINT8": 1, "BOOL": 1}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor: dtype name ("FLOAT32", ...), shape, little-endian row-major bytes."""

    dtype: str
    shape: Tuple[int, ...]
    data: bytes = dataclasses.field(repr=False)

    def __post_init__(self):
        item = _ITEM_BYTES.get(self.dtype)
        if item is not None:
            count = 1
            for d in self.shape:
                count *= d
            if count * item != len(self.data):
                raise ValueError(f"tensor: {len(self.data)} bytes do not hold {self.dtype} "
                                 f"{list(self.shape)} ({count * item} bytes)")

    def to_list(self):
        """The data as a flat Python list."""
        fmt = _STRUCT_FORMATS.get(self.dtype)
        if fmt is None:
            raise ValueError(f"to_list: dtype {self.dtype} is not supported")
        count = len(self.data) // struct.calcsize(fmt)
        return list(struct.unpack(f"<{count}{fmt}", self.data))

    def to_numpy(self):
        """The tensor as a numpy array (needs numpy; BFLOAT16 becomes float32)."""
        import numpy as np  # optional dependency

        if self.dtype == "BFLOAT16":  # numpy has no bfloat16: widen to float32
            bits = np.frombuffer(self.data, dtype="<u2").astype("<u4") << 16
            return bits.view("<f4").reshape(self.shape)
        dtype = _NUMPY_DTYPES.get(self.dtype)
        if dtype is None:
            raise ValueError(f"to_numpy: dtype {self.dtype} is not supported")
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape)


_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp",
               "video/mp4": ".mp4", "audio/mp4": ".m4a", "audio/wav": ".wav"}


@dataclasses.dataclass(frozen=True)
class OutputInfo:
    """What one output is. Sizes that do not apply are 0."""

    index: int            # 0-based, in the order the outputs start
    name: str             # "image", "video", "frames", "audio", "latents", ...
    kind: OutputKind
    mime_type: str        # "image/png", "video/mp4", "application/octet-stream", ...
    width: int
    height: int
    frames: int
    frame_rate: float
    audio_sample_rate: int
    audio_channels: int
    size_bytes: int       # length of the whole data
    tensor_dtype: Optional[str]  # OutputKind.TENSOR: "UINT8", "FLOAT32", ...
    tensor_shape: Tuple[int, ...]

    @property
    def extension(self) -> str:
        """A file extension for the data (".png", ".mp4", ...; ".bin" for tensors)."""
        return _EXTENSIONS.get(self.mime_type, ".bin")


@dataclasses.dataclass(frozen=True)
class Output(OutputInfo):
    """One output whole: its ``OutputInfo`` fields and its bytes, ``data``."""

    data: bytes = dataclasses.field(default=b"", repr=False)

    def save(self, path: Union[str, os.PathLike]) -> pathlib.Path:
        """Writes the data to ``path`` (parent folders are created); returns the path."""
        return _write(path, self.data)

    def to_tensor(self) -> Tensor:
        """A tensor output (RAW / LATENTS formats) as a ``Tensor``."""
        if self.kind != OutputKind.TENSOR or not self.tensor_dtype:
            raise ValueError(f"output {self.index} ({self.name}): a {self.kind} output, "
                             f"not a tensor")
        return Tensor(self.tensor_dtype, self.tensor_shape, self.data)

    def to_numpy(self):
        """A tensor output as a numpy array of its shape (needs numpy)."""
        return self.to_tensor().to_numpy()


def _write(path, data: bytes) -> pathlib.Path:
    p = pathlib.Path(path)
    if p.parent != pathlib.Path("."):
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


@dataclasses.dataclass(frozen=True)
class Metadata:
    request_id: str
    request: Request  # as accepted: every default filled in
    # Seconds per pipeline stage, plus "transfer" / "vae_decode" / "orchestrator" where the
    # server reports them (stages may run side by side: the sum can exceed total_seconds).
    timings: Dict[str, float]
    total_seconds: float
    prior_tokens: int  # AR tokens generated, when the pipeline has an AR stage

    @property
    def seed(self) -> Optional[int]:
        return self.request.seed

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) in pixels."""
        return self.request.size


@dataclasses.dataclass(frozen=True)
class Result:
    """The final event: every output with its bytes, and what ran.

    ``image`` / ``video`` / ``audio`` are the first output of that kind (None if there is none);
    ``save(path)`` writes the first output.
    """

    outputs: Tuple[Output, ...]
    metadata: Metadata

    def _first(self, kind: OutputKind) -> Optional[Output]:
        return next((o for o in self.outputs if o.kind == kind), None)

    @property
    def image(self) -> Optional[Output]:
        return self._first(OutputKind.IMAGE)

    @property
    def video(self) -> Optional[Output]:
        return self._first(OutputKind.VIDEO)

    @property
    def audio(self) -> Optional[Output]:
        return self._first(OutputKind.AUDIO)

    def output(self, name: str) -> Output:
        """The output called ``name`` ("image", "frames", "latents", ...); KeyError if none."""
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"no output named {name!r} (outputs: {[o.name for o in self.outputs]})")

    def save(self, path: Union[str, os.PathLike]) -> pathlib.Path:
        """Writes the first output's data to ``path``; returns the path."""
        if not self.outputs:
            raise ValueError("save: the result has no outputs")
        return self.outputs[0].save(path)


# --- Events ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The first event: the request as it will run, every default filled in."""

    request_id: str
    request: Request

    @property
    def seed(self) -> Optional[int]:
        return self.request.seed

    @property
    def model(self) -> str:
        return self.request.model


@dataclasses.dataclass(frozen=True)
class StageStarted:
    stage: str  # a stage of the model's pipeline (ModelInfo.stages)


@dataclasses.dataclass(frozen=True)
class StageFinished:
    stage: str
    duration_seconds: float


@dataclasses.dataclass(frozen=True)
class Progress:
    """Progress of one stage in its own unit ("token", "step", "frame", ...)."""

    stage: str
    unit: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class OutputProgress:
    """An output's bytes arriving: one event per chunk the client received and appended.

    The chunks themselves stay inside the client; the bytes are in the ``Result``.
    """

    index: int
    name: str
    received_bytes: int
    total_bytes: int
    info: OutputInfo

    @property
    def done(self) -> bool:
        return self.received_bytes >= self.total_bytes


Event = Union[Accepted, StageStarted, StageFinished, Progress, OutputProgress, Result]


# --- Models ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FrameRule:
    """Frame counts a video model accepts: multiple * k + offset, up to max_frames."""

    multiple: int
    offset: int
    max_frames: int

    def allows(self, frames: int) -> bool:
        if frames < self.offset or (self.max_frames and frames > self.max_frames):
            return False
        return self.multiple <= 0 or (frames - self.offset) % self.multiple == 0


@dataclasses.dataclass(frozen=True)
class ModelLimits:
    size_granularity: int  # height and width are multiples of this
    min_size: int
    max_size: int
    min_steps: int
    max_steps: int
    max_prompt_bytes: int
    frames: Optional[FrameRule]  # video models
    max_input_bytes: int         # per input medium, encoded
    max_input_pixels: int        # per input medium, decoded


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    kind: ModelKind
    input_roles: Tuple[MediaRole, ...]  # the input media it accepts
    stages: Tuple[str, ...]             # its pipeline's stages, in config order
    limits: ModelLimits
    defaults: Request                   # every default: size, frames, steps, guidance, output
    output_formats: Tuple[OutputFormat, ...]
    default: bool                       # the model used when a request names none

    @property
    def image_role(self) -> Optional[MediaRole]:
        """The role ``images=[...]`` get for this model: the first frame for a video model,
        the image to edit for an image model, else the one role it accepts; None when no
        role fits."""
        preferred = MediaRole.FIRST_FRAME if self.kind == ModelKind.VIDEO_WITH_AUDIO \
            else MediaRole.EDIT_IMAGE
        if preferred in self.input_roles:
            return preferred
        roles = [r for r in self.input_roles if isinstance(r, MediaRole)]
        return roles[0] if len(roles) == 1 else None
