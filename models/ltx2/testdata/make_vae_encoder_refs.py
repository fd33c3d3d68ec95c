"""Video VAE encoder and image-to-video image conditioning references for video_vae_encoder_test.

diffusers 58eb52c (src/ from `git archive`), Debian torch 1.13 / Pillow 9.4 with
/work/shared/reference/torch113_env.py; the tiny AutoencoderKLLTX2Video of an ltx2-ref-a variant
(its checkpoint holds the encoder weights, so none are generated here):

  REFERENCE_DIFFUSERS_SRC=.../diffusers/src REFERENCE_HFHUB_SRC=.../huggingface_hub/src \
  PYTHONPATH=/work/shared/reference /usr/bin/python3 make_vae_encoder_refs.py \
      FIXTURES/ltx2-ref-a/v20 vae_encoder_v20_io.safetensors

What it records (every size is in the tensors; height/width in the metadata):
* `in.video` [1, 3, F, H, W] uniform in [-1, 1] → `vae.encode(video)`: `out.parameters` (the
  encoder's output, the DiagonalGaussianDistribution parameters [1, 2C, F', H', W']) and
  `out.mode` (its mode, the mean half).
* The image conditioning of LTX2ImageToVideoPipeline with `image_crf=0` (no H.264 re-compression):
  `VideoProcessor(vae_scale_factor=spatial ratio, resample="bilinear").preprocess(image, height,
  width)` then `retrieve_latents(vae.encode(img[None, :, None]), mode="argmax")` and
  `_normalize_latents(latents, vae.latents_mean, vae.latents_std)` (no scaling factor, as
  prepare_latents calls it). For
  - `in.image_a_u8`, `in.image_b_u8` uint8 [h0, w0, 3] given as PIL images (PIL bilinear resize):
    `out.pixels_a` / `out.pixels_b` [1, 3, H, W] in [-1, 1], `out.raw_latent_a|b`,
    `out.image_latent_a|b` [1, C, 1, H/r, W/r] (raw and normalised);
  - `in.image_c_f32` float [3, h0, w0] in [0, 1] given as a torch tensor (nearest resize):
    `out.pixels_c`, `out.image_latent_c`.
* When the encoder's grid fits the pipeline's (v20; the tiny v23 encoder compresses by 4 where its
  decoder expands by 8, so the reference pipeline cannot run I2V on it): a whole
  LTX2ImageToVideoPipeline run from image a (PIL, image_crf=0), 3 steps, the prompt embeddings and
  audio latents of the variant's pipeline_io, the generator's noise recorded as `e2e.noise`
  (normalised space), output `e2e.video_latents` (denormalised) and `e2e.audio_latents`.
"""
import json
import sys
import types

import torch113_env

torch113_env.setup()
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

import diffusers  # noqa: E402,F401

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
from diffusers.pipelines.ltx2.pipeline_ltx2_image2video import (LTX2ImageToVideoPipeline,  # noqa: E402
                                                                 retrieve_latents)
from diffusers.video_processor import VideoProcessor  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

torch.set_num_threads(1)
fix, out_path = sys.argv[1], sys.argv[2]
vae = AutoencoderKLLTX2Video.from_pretrained(fix, subfolder="vae").eval()
r_s = vae.spatial_compression_ratio
height, width = 32, 64
out = {}
g = torch.Generator().manual_seed(20261205)
rng = np.random.default_rng(20261205)

with torch.no_grad():
    video = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1
    dist = vae.encode(video).latent_dist
    out.update({"in.video": video, "out.parameters": dist.parameters, "out.mode": dist.mode()})

    processor = VideoProcessor(vae_scale_factor=r_s, resample="bilinear")

    def encode_image(pixels):
        raw = retrieve_latents(vae.encode(pixels.unsqueeze(0).unsqueeze(2)), None, "argmax")
        return raw, LTX2ImageToVideoPipeline._normalize_latents(raw, vae.latents_mean, vae.latents_std)

    def smooth_image(h, w):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([127 + 100 * np.sin(x / 5.0 + c) * np.cos(y / 7.0 - c) for c in range(3)], -1)
        return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)

    # a: larger than the target in both directions; b: smaller in height, larger in width.
    for key, (h0, w0) in {"a": (75, 101), "b": (21, 90)}.items():
        img = smooth_image(h0, w0)
        pixels = processor.preprocess(PIL.Image.fromarray(img), height=height, width=width)
        raw, norm = encode_image(pixels[0])
        out.update({f"in.image_{key}_u8": torch.from_numpy(img), f"out.pixels_{key}": pixels,
                    f"out.raw_latent_{key}": raw, f"out.image_latent_{key}": norm})
    img_c = torch.rand(3, 23, 50, generator=g)
    pixels = processor.preprocess(img_c, height=height, width=width)
    raw, norm = encode_image(pixels[0])
    out.update({"in.image_c_f32": img_c, "out.pixels_c": pixels, "out.raw_latent_c": raw,
                "out.image_latent_c": norm})

meta = {"height": json.dumps(height), "width": json.dumps(width), "shims": json.dumps(torch113_env.SHIMS)}

latent_grid = (height // r_s, width // r_s)
if tuple(out["out.image_latent_a"].shape[-2:]) == latent_grid:
    pipe = LTX2ImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(fix, subfolder="scheduler"), vae=vae,
        audio_vae=AutoencoderKLLTX2Audio.from_pretrained(fix, subfolder="audio_vae"),
        text_encoder=None, tokenizer=None,
        connectors=LTX2TextConnectors.from_pretrained(fix, subfolder="connectors"),
        transformer=LTX2VideoTransformer3DModel.from_pretrained(fix, subfolder="transformer"),
        vocoder=(LTX2VocoderWithBWE if json.load(open(fix + "/vocoder/config.json"))["_class_name"] ==
                 "LTX2VocoderWithBWE" else LTX2Vocoder).from_pretrained(fix, subfolder="vocoder"))
    io = load_file(fix + "/pipeline_io.safetensors")
    seed = 1234
    kw = dict(image=PIL.Image.fromarray(out["in.image_a_u8"].numpy()), image_crf=0, height=height,
              width=width, num_frames=17, frame_rate=24.0, num_inference_steps=3, guidance_scale=3.0,
              stg_scale=1.0, modality_scale=3.0, guidance_rescale=0.7, audio_guidance_scale=7.0,
              audio_stg_scale=1.0, audio_modality_scale=3.0, audio_guidance_rescale=0.7,
              spatio_temporal_guidance_blocks=[1], noise_scale=0.0, use_cross_timestep=True,
              output_type="latent", return_dict=False, max_sequence_length=io["in.prompt_embeds"].shape[1])
    latent_shape = (1, vae.config.latent_channels, (kw["num_frames"] - 1) // vae.temporal_compression_ratio + 1,
                    *latent_grid)
    # prepare_latents draws only this from the generator (argmax encoding and given audio latents
    # draw nothing).
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        video_latents, audio_latents = pipe(
            prompt_embeds=io["in.prompt_embeds"], prompt_attention_mask=io["in.prompt_attention_mask"],
            negative_prompt_embeds=io["in.negative_prompt_embeds"],
            negative_prompt_attention_mask=io["in.negative_prompt_attention_mask"],
            audio_latents=io["in.audio_latents"], generator=torch.Generator().manual_seed(seed), **kw)
    kw.pop("image")
    out.update({"e2e.noise": noise, "e2e.audio_latents_in": io["in.audio_latents"],
                "e2e.video_latents": video_latents, "e2e.audio_latents": audio_latents})
    meta["pipeline_kwargs"] = json.dumps(kw)
    meta["e2e"] = ("LTX2ImageToVideoPipeline(image=PIL(in.image_a_u8), **pipeline_kwargs, prompt/negative "
                   "embeds and masks and audio latents of the variant's pipeline_io, generator seed 1234) -> "
                   "output_type='latent'")
    print("e2e", video_latents.shape, audio_latents.shape)

save_file({k: v.contiguous() for k, v in out.items()}, out_path, metadata=meta)
print("saved", out_path, {k: tuple(v.shape) for k, v in out.items()})
