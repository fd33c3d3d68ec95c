"""Extra reference data for models/ltx2/transformer_test.cc: configurations and call options that
the shared ltx2-ref-a fixtures do not reach (interleaved RoPE, unequal video/audio head counts,
per-token video and audio timesteps as image-to-video conditioning uses them, a video
self-attention mask, RMSNorm weights, no FFN bias, the static prompt modulation table,
coordinates computed from sizes at another fps and VAE stride).

Run with Debian's torch 1.13 and diffusers at commit 58eb52c0803ea9af3abec60841c2a093bdf1f951:
  REFERENCE_DIFFUSERS_SRC=.../diffusers/src REFERENCE_HFHUB_SRC=.../huggingface_hub/src \
  PYTHONPATH=/work/shared/reference /usr/bin/python3 make_transformer_extra.py <out dir>
Writes <out>/<case>/{config.json, diffusion_pytorch_model.safetensors} and
<out>/<case>_io.safetensors (inputs in.*, outputs out.<call>.{video,audio}; call kwargs in the
metadata as JSON).
"""
import json
import os
import sys

import torch113_env

torch113_env.setup()
import torch  # noqa: E402

import diffusers.models.transformers.transformer_ltx2 as tl  # noqa: E402

# The LTX-2 processors refuse torch < 2.0 only because they need SDPA, which the env provides.
tl.is_torch_version = lambda op, ver: False if (op, ver) == ("<", "2.0") else True
from safetensors.torch import save_file  # noqa: E402

CASES = {
    # Interleaved RoPE, 4 video heads vs 2 audio heads, asymmetric 2.3 flags.
    "transformer_interleaved": dict(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
        attention_head_dim=8, cross_attention_dim=32, vae_scale_factors=(4, 16, 16),
        pos_embed_max_pos=20, base_height=2048, base_width=2048, gated_attn=True, cross_attn_mod=False,
        audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, audio_scale_factor=4,
        audio_gated_attn=False, audio_cross_attn_mod=True, num_layers=2, norm_elementwise_affine=True,
        caption_channels=24, rope_double_precision=False, rope_type="interleaved",
        use_prompt_embeddings=False, perturbed_attn=True, ff_bias=False, audio_ff_bias=True,
        use_prompt_adaln_single=False),
    # Split RoPE (2.3 flags) with 4 video heads vs 2 audio heads: the video-side cross RoPE is cut
    # by video heads while a2v attention runs audio heads.
    "transformer_split_heads": dict(
        in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, gated_attn=True, cross_attn_mod=True, audio_in_channels=8,
        audio_out_channels=8, audio_num_attention_heads=2, audio_attention_head_dim=8,
        audio_cross_attention_dim=16, audio_gated_attn=True, audio_cross_attn_mod=True, num_layers=3,
        caption_channels=24, rope_double_precision=True, rope_type="split", use_prompt_embeddings=False,
        perturbed_attn=True),
}

B, F, H, W, NA, T = 2, 3, 4, 6, 7, 8
FPS = {"transformer_interleaved": 25.0, "transformer_split_heads": 24.0}


def init_weights(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)


def inputs(model, name, gen):
    c = model.config
    nv = F * H * W
    t = torch.tensor([700.0, 250.0])
    per_token = t[:, None].repeat(1, nv)
    per_token[:, : H * W] = 0.0  # conditioned first latent frame sees t = 0
    audio_per_token = t[:, None].repeat(1, NA) * torch.linspace(0.6, 1.0, NA)[None]
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[0, :3] = 0
    self_mask = (torch.rand(B, nv, nv, generator=gen) > 0.2).float()
    self_mask[:, torch.arange(nv), torch.arange(nv)] = 1.0
    return {
        "in.hidden_states": torch.randn(B, nv, c.in_channels, generator=gen),
        "in.audio_hidden_states": torch.randn(B, NA, c.audio_in_channels, generator=gen),
        "in.encoder_hidden_states": torch.randn(B, T, c.cross_attention_dim, generator=gen),
        "in.audio_encoder_hidden_states": torch.randn(B, T, c.audio_cross_attention_dim, generator=gen),
        "in.timestep": t,
        "in.timestep_per_token": per_token,
        "in.audio_timestep_per_token": audio_per_token,
        "in.audio_sigma": torch.tensor([400.0, 900.0]),
        "in.encoder_attention_mask": mask,
        "in.video_self_attention_mask": self_mask,
        "in.perturbation_mask": torch.tensor([1.0, 0.0]),
    }


# Each call: kwargs beyond the common ones, as names of in.* tensors or plain values.
CALLS = {
    "i2v": {"timestep": "in.timestep_per_token", "audio_timestep": "in.timestep", "sigma": "in.timestep",
            "use_cross_timestep": True},
    "i2v_legacy": {"timestep": "in.timestep_per_token", "audio_timestep": "in.audio_timestep_per_token",
                   "sigma": "in.timestep", "audio_sigma": "in.audio_sigma", "use_cross_timestep": False},
    "self_mask_stg": {"timestep": "in.timestep", "sigma": "in.timestep", "use_cross_timestep": True,
                      "video_self_attention_mask": "in.video_self_attention_mask",
                      "spatio_temporal_guidance_blocks": [1], "perturbation_mask": "in.perturbation_mask"},
    "stg_all_isolated": {"timestep": "in.timestep", "sigma": "in.timestep", "use_cross_timestep": True,
                         "spatio_temporal_guidance_blocks": [0, 1], "isolate_modalities": True},
}


def run(model, tensors, name, call, fps):
    kwargs = dict(hidden_states=tensors["in.hidden_states"], audio_hidden_states=tensors["in.audio_hidden_states"],
                  encoder_hidden_states=tensors["in.encoder_hidden_states"],
                  audio_encoder_hidden_states=tensors["in.audio_encoder_hidden_states"],
                  encoder_attention_mask=tensors["in.encoder_attention_mask"],
                  audio_encoder_attention_mask=tensors["in.encoder_attention_mask"],
                  num_frames=F, height=H, width=W, fps=fps, audio_num_frames=NA, return_dict=False)
    for k, v in call.items():
        kwargs[k] = tensors[v] if isinstance(v, str) else v
    with torch.no_grad():
        video, audio = model(**kwargs)
    return video, audio


def main(out):
    torch.set_num_threads(1)
    for seed, (case, cfg) in enumerate(CASES.items()):
        model = tl.LTX2VideoTransformer3DModel(**cfg).eval()
        init_weights(model, 1000 + seed)
        model.save_pretrained(os.path.join(out, case), safe_serialization=True)
        gen = torch.Generator().manual_seed(2000 + seed)
        tensors = inputs(model, case, gen)
        for call_name, call in CALLS.items():
            if case == "transformer_split_heads" and call_name == "self_mask_stg":
                continue
            video, audio = run(model, tensors, case, call, FPS[case])
            tensors[f"out.{call_name}.video"] = video.contiguous()
            tensors[f"out.{call_name}.audio"] = audio.contiguous()
        calls = {k: v for k, v in CALLS.items() if f"out.{k}.video" in tensors}
        meta = {"calls": json.dumps(calls), "fps": str(FPS[case]), "num_frames": str(F), "height": str(H),
                "width": str(W), "audio_num_frames": str(NA),
                "common": "hidden_states, audio_hidden_states, encoder_hidden_states, audio_encoder_hidden_states "
                          "= in.*; encoder_attention_mask = audio_encoder_attention_mask = "
                          "in.encoder_attention_mask; coords computed from num_frames/height/width/fps and "
                          "audio_num_frames",
                "diffusers": "58eb52c0803ea9af3abec60841c2a093bdf1f951", "shims": json.dumps(torch113_env.SHIMS)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, f"{case}_io.safetensors"),
                  metadata=meta)
        print(case, {k: tuple(v.shape) for k, v in tensors.items() if k.startswith("out.")})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
