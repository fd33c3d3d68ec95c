#!/usr/bin/env python3
"""Generates one image through a running mesh and saves it.

    diffmesh up --base-port 50051 &
    PYTHONPATH=sdk/python:build/sdk/python python3 sdk/python/examples/generate.py \
        --target 127.0.0.1:50051 --prompt 'a sign that says "hello"' --steps 4 --output out/hello.png
"""

import argparse
import sys

import diffmesh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output", default="out.png")
    args = parser.parse_args()

    params = {k: v for k, v in dict(height=args.height, width=args.width, steps=args.steps,
                                    seed=args.seed).items() if v is not None}
    with diffmesh.Client(args.target) as client:
        try:
            result = client.generate(args.prompt, **params)
        except diffmesh.DiffmeshError as e:
            print(f"failed: {e.code.name}: {e.message}", file=sys.stderr)
            return 1
    path = result.save(args.output)
    m = result.metadata
    timings = ", ".join(f"{stage} {s:.2f} s" for stage, s in m.timings.items())
    print(f"wrote {path} ({m.width}x{m.height}, seed {m.seed}) in {m.total_seconds:.2f} s: {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
