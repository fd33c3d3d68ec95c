#!/usr/bin/env python3
"""Generates one image (or a video) through a running mesh and saves its outputs.

    diffmesh up --base-port 50051 &
    PYTHONPATH=sdk/python:build/sdk/python python3 sdk/python/examples/generate.py \
        --target 127.0.0.1:50051 --prompt 'a sign that says "hello"' --steps 4 --output out/hello.png

    # image-to-video with sound, audio guidance of its own, MP4 out:
    ... generate.py --model ltx-2 --prompt 'waves at dusk' --image first.png --frames 121 \
        --frame-rate 24 --cfg 3 --audio-cfg 7 --output out/waves.mp4
"""

import argparse
import os
import sys

import diffmesh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--model", default="", help="default: the server's default model")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--image", action="append", default=[],
                        help="input image (repeatable); its role comes from the model")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int, help="video models: frame count")
    parser.add_argument("--frame-rate", type=float, help="video models: frames per second")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    parser.add_argument("--audio-cfg", type=float, help="the audio stream's guidance scale")
    parser.add_argument("--format", choices=[f.value for f in diffmesh.OutputFormat],
                        help="output format (default: the model's own)")
    parser.add_argument("--quality", type=int, help="JPEG / WebP quality")
    parser.add_argument("--output", default="out.png",
                        help="path of the first output; further outputs get -<name> added")
    parser.add_argument("--token", help="API token, if the server requires one")
    args = parser.parse_args()

    guidance = {}
    if args.cfg is not None:
        guidance["cfg_scale"] = args.cfg
    if args.audio_cfg is not None:
        guidance["audio"] = {"cfg_scale": args.audio_cfg}
    params = dict(model=args.model, negative_prompt=args.negative_prompt, images=args.image,
                  height=args.height, width=args.width, num_frames=args.frames,
                  frame_rate=args.frame_rate, steps=args.steps, seed=args.seed,
                  guidance=guidance or None, output_format=args.format, quality=args.quality)
    with diffmesh.Client(args.target, token=args.token) as client:
        try:
            result = client.generate(args.prompt, **params)
        except (TypeError, ValueError) as e:  # the request itself, before any call
            print(f"bad request: {e}", file=sys.stderr)
            return 2
        except diffmesh.DiffmeshError as e:
            print(f"failed: {e.code.name}: {e.message}", file=sys.stderr)
            return 1
    root, ext = os.path.splitext(args.output)
    for i, output in enumerate(result.outputs):
        path = args.output if i == 0 else f"{root}-{output.name}{ext if ext else output.extension}"
        output.save(path)
        shape = (f"{output.tensor_dtype} {list(output.tensor_shape)}" if output.kind == "tensor"
                 else f"{output.width}x{output.height}" +
                 (f", {output.frames} frames at {output.frame_rate:g} fps"
                  if output.kind == "video" else ""))
        print(f"wrote {path}: {output.name} ({output.mime_type}, {shape}, {output.size_bytes} bytes)")
    m = result.metadata
    timings = ", ".join(f"{stage} {s:.2f} s" for stage, s in m.timings.items())
    print(f"{m.model}, seed {m.seed}, {m.request.steps} steps in {m.total_seconds:.2f} s: {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
