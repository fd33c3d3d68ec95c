"""Reference data for models/ltx2/lora_test.cc: a tiny random LoRA for the ltx2-ref-a v23
transformer, in the two key styles LTX-2 LoRAs come in, and the transformer's outputs with the
LoRA merged into its weights.

* lora_v23_ltx.safetensors: the released (ComfyUI / ltx-core) style, keys
  `diffusion_model.<ltx-core module>.lora_A.weight` / `.lora_B.weight` with the original module
  names (patchify_proj, adaln_single, q_norm, ...), and `<module>.alpha` scalars on some modules.
* lora_v23_diffusers.safetensors: the diffusers / PEFT style, keys
  `transformer.<diffusers module>.lora_{A,B}.weight`, no alpha (alpha == rank): the same update,
  with alpha/rank folded into lora_B.
Every Linear layer of the model is targeted (ranks 4, 3 for the feed-forward layers).

The outputs: W' = W + strength · (alpha/rank) · B·A for every targeted layer (alpha/rank = 1 for a
module without alpha), written into diffusers' LTX2VideoTransformer3DModel, run on the fixture's
inputs (its "base" and "stg" calls). The script checks that diffusers' own converter
(_convert_non_diffusers_ltx2_lora_to_diffusers) maps every ltx-style key to the diffusers key it
was made from.

Run with Debian's torch 1.13 and diffusers at commit 58eb52c0803ea9af3abec60841c2a093bdf1f951:
  REFERENCE_DIFFUSERS_SRC=.../diffusers/src REFERENCE_HFHUB_SRC=.../huggingface_hub/src \
  PYTHONPATH=/work/shared/reference /usr/bin/python3 make_lora_ref.py <fixtures dir> [<out dir>]
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
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_ltx2_lora_to_diffusers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

STRENGTH = 0.75
SEED = 3100

# diffusers name fragment -> original (ltx-core) name fragment; the inverse of the renames that
# diffusers applies (lora_conversion_utils / scripts/convert_ltx2_to_diffusers.py).
TO_LTX_PREFIX = [("audio_time_embed.", "audio_adaln_single."), ("time_embed.", "adaln_single.")]
TO_LTX_SUBSTRING = [
    ("audio_proj_in", "audio_patchify_proj"),
    ("av_cross_attn_video_scale_shift", "av_ca_video_scale_shift_adaln_single"),
    ("av_cross_attn_video_a2v_gate", "av_ca_a2v_gate_adaln_single"),
    ("av_cross_attn_audio_scale_shift", "av_ca_audio_scale_shift_adaln_single"),
    ("av_cross_attn_audio_v2a_gate", "av_ca_v2a_gate_adaln_single"),
    ("audio_prompt_adaln", "audio_prompt_adaln_single"),
]


def to_ltx(name):
    for new, old in TO_LTX_PREFIX:
        if name.startswith(new):
            return old + name[len(new):]
    for new, old in TO_LTX_SUBSTRING:
        if new in name:
            return name.replace(new, old)
    if name.startswith("prompt_adaln"):
        return name.replace("prompt_adaln", "prompt_adaln_single", 1)
    if name.startswith("proj_in"):
        return name.replace("proj_in", "patchify_proj", 1)
    return name


def main(fixtures, out):
    torch.set_num_threads(1)
    model_dir = os.path.join(fixtures, "ltx2-ref-a", "v23", "transformer")
    io = load_file(os.path.join(fixtures, "ltx2-ref-a", "v23", "transformer_io.safetensors"))
    model = tl.LTX2VideoTransformer3DModel.from_pretrained(model_dir).eval()
    gen = torch.Generator().manual_seed(SEED)
    ltx, diff, updates = {}, {}, {}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for i, (name, module) in enumerate(sorted(linears)):
        rank = 3 if ".ff.net." in name or ".audio_ff.net." in name else 4
        a = torch.randn(rank, module.in_features, generator=gen) * 0.1
        b = torch.randn(module.out_features, rank, generator=gen) * 0.1
        alpha = None
        if ".attn1." in name or name.startswith("proj_in"):
            alpha = 2.0 if i % 2 == 0 else 6.0  # scale alpha/rank = 0.5 or 1.5
        scale = 1.0 if alpha is None else alpha / rank
        ltx_name = "diffusion_model." + to_ltx(name)
        ltx[ltx_name + ".lora_A.weight"] = a
        ltx[ltx_name + ".lora_B.weight"] = b
        if alpha is not None:
            ltx[ltx_name + ".alpha"] = torch.tensor(alpha)
        diff["transformer." + name + ".lora_A.weight"] = a
        diff["transformer." + name + ".lora_B.weight"] = (b * scale).contiguous()
        updates[name] = scale * (b @ a)

    # diffusers' converter must take the ltx-style names back to the diffusers ones.
    converted = _convert_non_diffusers_ltx2_lora_to_diffusers(
        {k: v for k, v in ltx.items() if not k.endswith(".alpha")})
    assert set(converted) == set(diff), sorted(set(converted) ^ set(diff))[:10]

    with torch.no_grad():
        for name, module in linears:
            module.weight += STRENGTH * updates[name]

    common = dict(hidden_states=io["in.hidden_states"], audio_hidden_states=io["in.audio_hidden_states"],
                  encoder_hidden_states=io["in.encoder_hidden_states"],
                  audio_encoder_hidden_states=io["in.audio_encoder_hidden_states"],
                  encoder_attention_mask=io["in.encoder_attention_mask"],
                  audio_encoder_attention_mask=io["in.encoder_attention_mask"],
                  timestep=io["in.timestep"], sigma=io["in.timestep"], video_coords=io["in.video_coords"],
                  audio_coords=io["in.audio_coords"], use_cross_timestep=True, return_dict=False)
    calls = {"base": {}, "stg": {"spatio_temporal_guidance_blocks": [1]}}
    tensors = {}
    changes = {}
    for call, extra in calls.items():
        with torch.no_grad():
            video, audio = model(**common, **extra)
        tensors[f"out.{call}.video"] = video.contiguous()
        tensors[f"out.{call}.audio"] = audio.contiguous()
        for stream, t in (("video", video), ("audio", audio)):
            ref = io[f"out.{call}.{stream}"]
            changes[f"{call}.{stream}"] = float((t - ref).norm() / ref.norm())
    meta = {"strength": str(STRENGTH), "calls": json.dumps(calls),
            "common": "the inputs of ltx2-ref-a/v23/transformer_io.safetensors as its 'base' call uses "
                      "them (use_cross_timestep=True); stg: spatio_temporal_guidance_blocks=[1], all rows",
            "relative_change_from_no_lora": json.dumps(changes),
            "diffusers": "58eb52c0803ea9af3abec60841c2a093bdf1f951", "shims": json.dumps(torch113_env.SHIMS)}
    save_file(ltx, os.path.join(out, "lora_v23_ltx.safetensors"))
    save_file(diff, os.path.join(out, "lora_v23_diffusers.safetensors"))
    save_file(tensors, os.path.join(out, "lora_v23_io.safetensors"), metadata=meta)
    print(len(linears), "linear layers; change from the no-LoRA outputs:", changes)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__)))
