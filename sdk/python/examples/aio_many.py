#!/usr/bin/env python3
"""Runs several generations at once on one asyncio channel and reports each one's latency.

    PYTHONPATH=sdk/python:build/sdk/python python3 sdk/python/examples/aio_many.py \
        --target 127.0.0.1:50051 --count 4 --steps 2 --size 64
"""

import argparse
import asyncio
import time

import diffmesh
import diffmesh.aio


async def one(client: diffmesh.aio.Client, seed: int, steps: int, size: int):
    start = time.monotonic()
    result = await client.generate(f"image {seed}", seed=seed, steps=steps, height=size, width=size)
    return seed, time.monotonic() - start, result.outputs[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    async with diffmesh.aio.Client(args.target) as client:
        models = await client.list_models()
        print("models:", ", ".join(m.name + (" (default)" if m.default else "") for m in models))
        start = time.monotonic()
        done = await asyncio.gather(*[one(client, s, args.steps, args.size) for s in range(args.count)])
        for seed, seconds, output in done:
            print(f"seed {seed}: {seconds:.2f} s, {output.size_bytes} bytes of {output.mime_type}")
        print(f"{args.count} images in {time.monotonic() - start:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
