"""Image-to-video reference for pipeline_test: diffusers' LTX2ImageToVideoPipeline (58eb52c) with
the tiny components of an ltx2-ref-a variant (v20, v23), a 3-step guided run from given 5-D latents (frame 0 = the
conditioning image latent, kept clean) and audio latents, prompt embeddings passed in.

  REFERENCE_DIFFUSERS_SRC=.../diffusers/src REFERENCE_HFHUB_SRC=.../huggingface_hub/src \
  PYTHONPATH=/work/shared/reference /usr/bin/python3 make_i2v_ref.py FIXTURES/ltx2-ref-a/v23 i2v_v23_io.safetensors

Shims beyond torch113_env (as the ltx2-ref-a fixtures record them): transformer_ltx2's
is_torch_version('<', '2.0') -> False (the processors only need SDPA, shimmed); a placeholder
`transformers` module (Gemma classes for annotations; text_encoder/tokenizer are None);
diffusers.loaders exposes FromSingleFileMixin / LTX2LoraLoaderMixin (never called).
"""
import json
import sys
import types

import torch113_env

torch113_env.setup()
import torch  # noqa: E402


import diffusers  # noqa: E402
tf = types.ModuleType("transformers")
for n in ["Gemma3ForConditionalGeneration", "Gemma3Processor", "GemmaTokenizer", "GemmaTokenizerFast",
          "Gemma4ForConditionalGeneration", "Gemma4UnifiedForConditionalGeneration", "ProcessorMixin",
          "AutoProcessor", "AutoTokenizer", "PreTrainedModel", "PreTrainedTokenizerBase"]:
    setattr(tf, n, type(n, (), {}))
sys.modules["transformers"] = tf
import diffusers.loaders as loaders  # noqa: E402
from diffusers.loaders.single_file import FromSingleFileMixin  # noqa: E402
from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin  # noqa: E402
loaders.FromSingleFileMixin = FromSingleFileMixin
loaders.LTX2LoraLoaderMixin = LTX2LoraLoaderMixin
import diffusers.models.transformers.transformer_ltx2 as tl  # noqa: E402
_orig = tl.is_torch_version
tl.is_torch_version = lambda op, v: False if (op, v) == ("<", "2.0") else _orig(op, v)

from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video,  # noqa: E402
                       FlowMatchEulerDiscreteScheduler, LTX2VideoTransformer3DModel)
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors  # noqa: E402
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE  # noqa: E402
from diffusers.pipelines.ltx2.pipeline_ltx2_image2video import LTX2ImageToVideoPipeline  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

torch.set_num_threads(1)
fix, out_path = sys.argv[1], sys.argv[2]
pipe = LTX2ImageToVideoPipeline(
    scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(fix, subfolder="scheduler"),
    vae=AutoencoderKLLTX2Video.from_pretrained(fix, subfolder="vae"),
    audio_vae=AutoencoderKLLTX2Audio.from_pretrained(fix, subfolder="audio_vae"),
    text_encoder=None, tokenizer=None,
    connectors=LTX2TextConnectors.from_pretrained(fix, subfolder="connectors"),
    transformer=LTX2VideoTransformer3DModel.from_pretrained(fix, subfolder="transformer"),
    vocoder=(LTX2VocoderWithBWE if json.load(open(fix + "/vocoder/config.json"))["_class_name"] ==
             "LTX2VocoderWithBWE" else LTX2Vocoder).from_pretrained(fix, subfolder="vocoder"))
io = load_file(fix + "/pipeline_io.safetensors")
g = torch.Generator().manual_seed(1234)
latents = torch.randn(io["in.latents"].shape, generator=g)
audio_latents = io["in.audio_latents"]
kw = dict(prompt_embeds=io["in.prompt_embeds"], prompt_attention_mask=io["in.prompt_attention_mask"],
          negative_prompt_embeds=io["in.negative_prompt_embeds"],
          negative_prompt_attention_mask=io["in.negative_prompt_attention_mask"],
          image=torch.zeros(1, 3, 32, 64), height=32, width=64, num_frames=17, frame_rate=24.0,
          num_inference_steps=3, guidance_scale=3.0, stg_scale=1.0, modality_scale=3.0,
          guidance_rescale=0.7, audio_guidance_scale=7.0, audio_stg_scale=1.0, audio_modality_scale=3.0,
          audio_guidance_rescale=0.7, spatio_temporal_guidance_blocks=[1], noise_scale=0.0,
          use_cross_timestep=True, latents=latents, audio_latents=audio_latents, output_type="latent",
          return_dict=False, max_sequence_length=io["in.prompt_embeds"].shape[1])
with torch.no_grad():
    video, audio = pipe(**kw)
meta = {k: v for k, v in kw.items() if not isinstance(v, torch.Tensor)}
save_file({"in.latents": latents.contiguous(), "in.audio_latents": audio_latents.contiguous(),
           "out.video_latents": video.contiguous(), "out.audio_latents": audio.contiguous()}, out_path,
          metadata={"pipeline_kwargs": json.dumps(meta), "shims": json.dumps(torch113_env.SHIMS),
                    "call": "LTX2ImageToVideoPipeline(**pipeline_kwargs, prompt/negative embeds and masks and "
                            "audio latents of the variant's pipeline_io; in.latents seeded) -> output_type='latent': "
                            "denormalised video latents [B,C,F,H,W], unpacked audio latents [B,C,L,M]; "
                            "frame 0 of in.latents is the conditioning latent"})
print("done", video.shape, audio.shape, (video[:, :, :1] - latents[:, :, :1]).abs().max().item())
