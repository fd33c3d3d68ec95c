# Reference beside bench_ltx2_dit: diffusers' LTX2VideoTransformer3DModel, eager, bf16, random
# weights built on the GPU, the SAME config and input sizes as the C++ benchmark (it prints its
# config with --dump_config). Run both in one device call:
#   build-gpu/bench/bench_ltx2_dit --dump_config > /tmp/ltx2.json
#   DIFFUSERS_SRC=<diffusers checkout>/src python3 bench/ltx2_dit_reference.py /tmp/ltx2.json
# Prints the measured bf16 matmul peak and one line starting FINAL with JSON.
import json, os, sys
sys.path.insert(0, os.environ.get("DIFFUSERS_SRC", "diffusers/src"))
import torch

cfg = json.load(open(sys.argv[1]))
height, width, frames, fps, text = 512, 768, 121, 24.0, 1024
for arg in sys.argv[2:]:  # key=value overrides: height=, width=, frames=, text=
    k, v = arg.split("=")
    if k == "height": height = int(v)
    elif k == "width": width = int(v)
    elif k == "frames": frames = int(v)
    elif k == "text": text = int(v)
dev = "cuda"

def bench(fn, warm=2, iters=5):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts) // 2]

res = {}
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
res["matmul_tflops"] = 2 * 8192**3 / bench(lambda: a @ a, 3, 10) / 1e9
del a

from diffusers import LTX2VideoTransformer3DModel
torch.set_default_dtype(torch.bfloat16)
with torch.device(dev):
    m = LTX2VideoTransformer3DModel(**cfg).eval()
torch.set_default_dtype(torch.float32)
res["params_B"] = sum(p.numel() for p in m.parameters()) / 1e9
vt, vs = cfg["vae_scale_factors"][0], cfg["vae_scale_factors"][1]
f, h, w = (frames - 1) // vt + 1, height // vs, width // vs
sr, hop, asf = m.config.audio_sampling_rate, m.config.audio_hop_length, m.config.audio_scale_factor
na = round(frames / fps * sr / hop / asf)
nv = f * h * w
g = torch.Generator(device=dev).manual_seed(0)
bf = torch.bfloat16
inp = dict(
    hidden_states=torch.randn(1, nv, cfg["in_channels"], device=dev, dtype=bf, generator=g),
    audio_hidden_states=torch.randn(1, na, cfg["audio_in_channels"], device=dev, dtype=bf, generator=g),
    encoder_hidden_states=torch.randn(1, text, cfg["cross_attention_dim"], device=dev, dtype=bf, generator=g),
    audio_encoder_hidden_states=torch.randn(1, text, cfg["audio_cross_attention_dim"], device=dev, dtype=bf, generator=g),
    timestep=torch.full((1,), 700.0, device=dev), sigma=torch.full((1,), 700.0, device=dev),
    num_frames=f, height=h, width=w, fps=fps, audio_num_frames=na, use_cross_timestep=True,
    return_dict=False)
with torch.inference_mode():
    res["eager_ms"] = bench(lambda: m(**inp))
res.update(video_tokens=nv, audio_tokens=na, text_tokens=text,
           peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30, torch=torch.__version__)
print("FINAL", json.dumps(res), flush=True)
