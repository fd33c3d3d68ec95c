"""Extra reference outputs for the LTX-2 video VAE decoder that the shared fixtures do not cover:
temporal tiling (framewise decoding), spatial tiling, both together, and timestep conditioning.

Run on the CPU with Debian's torch 1.13 and the python3-* packages listed in
shared/fixtures/ltx2-ref-a/README.md (see shared/reference/README.md):
  REFERENCE_DIFFUSERS_SRC=<diffusers 58eb52c>/src REFERENCE_HFHUB_SRC=<huggingface_hub>/src \
  PYTHONPATH=/work/shared/reference /usr/bin/python3 make_vae_refs.py <fixtures root> <out dir>

Writes <out dir>/vae_tiling_{v20,v23}_io.safetensors (tiled decodes of the shared fixtures' VAEs)
and <out dir>/vae_tcond/ (a tiny timestep-conditioned VAE, saved with save_pretrained) with
<out dir>/vae_tcond_io.safetensors.
"""
import json
import os
import sys

import torch113_env

torch113_env.setup()
import torch  # noqa: E402
from diffusers import AutoencoderKLLTX2Video  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(1)
fixtures, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir, exist_ok=True)


def decode(vae, z, temb=None):
    with torch.no_grad():
        return vae.decode(z, temb, return_dict=False)[0].contiguous()


# Spatial tiles small enough that a tiny latent splits into several (sample pixels, as in
# enable_tiling); temporal tiles stay at the reference defaults (16 frames, stride 8).
SPATIAL = dict(tile_sample_min_height=32, tile_sample_min_width=32,
               tile_sample_stride_height=24, tile_sample_stride_width=24)

for variant in ("v20", "v23"):
    vae = AutoencoderKLLTX2Video.from_pretrained(f"{fixtures}/ltx2-ref-a/{variant}/vae").eval()
    g = torch.Generator().manual_seed(1234 if variant == "v20" else 4321)
    c = vae.config.latent_channels
    # More latent frames than one temporal tile (16 // temporal ratio).
    frames = 16 // vae.temporal_compression_ratio + 3
    # 5x5 latents: spatial tiles of 4 every 3, the last ones 2 wide (reflect padding needs >= 2).
    z = torch.randn(1, c, frames, 5, 5, generator=g)
    out = {"in.z": z}
    untiled = decode(vae, z)
    vae.use_framewise_decoding = True
    out["out.temporal"] = decode(vae, z)
    vae.enable_tiling(**SPATIAL)
    out["out.temporal_spatial"] = decode(vae, z)
    vae.use_framewise_decoding = False
    out["out.spatial"] = decode(vae, z)
    rel = {k: float((out[k] - untiled).norm() / untiled.norm()) for k in list(out)[1:]}
    meta = {"rel_vs_untiled": json.dumps(rel), "diffusers": "58eb52c0803ea9af3abec60841c2a093bdf1f951",
            "calls": "vae.decode(in.z): out.temporal with use_framewise_decoding=True "
                     "(tile_sample_min_num_frames=16, stride 8); out.spatial with enable_tiling(**spatial); "
                     "out.temporal_spatial with both",
            "spatial": json.dumps(SPATIAL), "temporal": json.dumps({"tile_sample_min_num_frames": 16,
                                                                    "tile_sample_stride_num_frames": 8}),
            "shims": json.dumps(torch113_env.SHIMS)}
    save_file(out, f"{out_dir}/vae_tiling_{variant}_io.safetensors", metadata=meta)
    print(variant, {k: tuple(v.shape) for k, v in out.items()}, rel)

# Timestep conditioning: a 2.3-style layout (channel-reducing upsamplers, a factor-1 upsampler,
# residual and plain ones) with timestep_conditioning=True. (An up block whose channel count
# changes would get a conv_in resnet, which the reference cannot run with timestep conditioning.)
torch.manual_seed(0)
vae = AutoencoderKLLTX2Video(
    in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 16, 16),
    decoder_block_out_channels=(8, 16, 32), decoder_layers_per_block=(1, 1, 2, 1),
    decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
    upsample_type=("spatiotemporal", "temporal", "spatial"), upsample_residual=(True, True, False),
    upsample_factor=(1, 2, 2), timestep_conditioning=True, patch_size=2, patch_size_t=1,
    decoder_causal=False, decoder_spatial_padding_mode="zeros", layers_per_block=(1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, True), downsample_type=("spatial", "temporal", "spatiotemporal"),
    down_block_types=("LTX2VideoDownBlock3D",) * 3).eval()
g = torch.Generator().manual_seed(77)
with torch.no_grad():
    for name, module in vae.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if pname == "timestep_scale_multiplier":
                continue
            if isinstance(module, torch.nn.LayerNorm) and pname == "weight":
                p.copy_(1 + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    vae.latents_mean.copy_(0.1 * torch.randn(8, generator=g))
    vae.latents_std.copy_(1 + 0.25 * torch.rand(8, generator=g))
vae.save_pretrained(f"{out_dir}/vae_tcond", safe_serialization=True)
vae = AutoencoderKLLTX2Video.from_pretrained(f"{out_dir}/vae_tcond").eval()
z = torch.randn(2, 8, 3, 4, 5, generator=g)
temb = torch.tensor([0.05, 0.7])
out = {"in.z": z, "in.temb": temb, "out.sample": decode(vae, z, temb),
       "out.sample_causal": None}
with torch.no_grad():
    out["out.sample_causal"] = vae.decode(z, temb, causal=True, return_dict=False)[0].contiguous()
save_file(out, f"{out_dir}/vae_tcond_io.safetensors",
          metadata={"diffusers": "58eb52c0803ea9af3abec60841c2a093bdf1f951",
                    "calls": "out.sample = vae.decode(in.z, in.temb); out.sample_causal = same with causal=True",
                    "shims": json.dumps(torch113_env.SHIMS)})
print("tcond", {k: tuple(v.shape) for k, v in out.items()})
