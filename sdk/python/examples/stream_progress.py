#!/usr/bin/env python3
"""Streams a generation's events and prints them; Ctrl-C cancels the call.

    PYTHONPATH=sdk/python:build/sdk/python python3 sdk/python/examples/stream_progress.py \
        --target 127.0.0.1:50051 --prompt 'a lighthouse' --steps 8
"""

import argparse
import sys

import diffmesh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--model", default="")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output", default="out.png")
    args = parser.parse_args()

    with diffmesh.Client(args.target) as client, \
            client.stream(args.prompt, model=args.model, steps=args.steps) as events:
        try:
            for event in events:
                if isinstance(event, diffmesh.Accepted):
                    r = event.request
                    frames = f", {r.num_frames} frames" if r.num_frames else ""
                    print(f"accepted {event.request_id}: {r.model} {r.width}x{r.height}{frames}, "
                          f"{r.steps} steps, seed {r.seed}, guidance {r.guidance.cfg_scale}, "
                          f"output {r.output_format}")
                elif isinstance(event, diffmesh.StageStarted):
                    print(f"stage {event.stage} started")
                elif isinstance(event, diffmesh.StageFinished):
                    print(f"stage {event.stage} finished in {event.duration_seconds:.2f} s")
                elif isinstance(event, diffmesh.Progress):
                    print(f"{event.stage}: {event.unit} {event.done}/{event.total}")
                elif isinstance(event, diffmesh.OutputProgress):
                    print(f"output {event.name}: {event.received_bytes}/{event.total_bytes} bytes")
                elif isinstance(event, diffmesh.Result):
                    print(f"wrote {event.save(args.output)} ({event.outputs[0].mime_type})")
        except KeyboardInterrupt:
            events.cancel()
            print("cancelled", file=sys.stderr)
            return 130
        except diffmesh.DiffmeshError as e:
            print(f"failed: {e.code.name}: {e.message}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
