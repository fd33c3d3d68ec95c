#!/usr/bin/env python3
"""Builds the BPE tokenizer fixture for models/glm_image/bpe_tokenizer_test.cc.

Usage: make_fixture.py OUT_DIR

Needs the Python `tokenizers` package (and optionally `transformers`); downloads nothing. It
trains a small byte-level BPE with the pre-tokenizer layout of GLM-4 / GLM-Image's
processor/tokenizer.json (a Split on the GPT-4-style regex, then ByteLevel without its own regex),
adds GLM-style special tokens after the trained vocabulary, and records how the reference
implementation encodes and decodes a deliberately hostile corpus. Writes into OUT_DIR:

  tokenizer.json         the trained tokenizer, as `tokenizers` serialises it
  tokenizer_config.json  GLM-Image-like processor settings (grid/bos special tokens)
  expected.json          reference encodings, decodings and prompt ids

Everything is deterministic: the training corpus comes from a seeded generator.
"""

import copy
import json
import math
import os
import random
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from tokenizers import processors, trainers

# The Split regex of GLM-4's tokenizer.json (the cl100k_base / Llama-3 pattern).
GLM4_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Same with single digits (the Qwen2 variant), to check the digit-run parameter.
SINGLE_DIGIT_SPLIT = GLM4_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# Special tokens as GLM-4 / GLM-Image define them (ids follow the trained vocabulary).
GLM_SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
    "<|begin_of_video|>", "<|end_of_video|>", "<|image|>", "<|video|>",
]
DIT_TOKENS = ["<|dit_token_%d|>" % i for i in (0, 1, 16, 163, 1638, 16384, 16385)]

WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or his her which "
    "cat dog bird fish horse tree river mountain city street house window door table chair lamp "
    "red green blue yellow white black golden silver purple orange bright dark soft sharp "
    "photo painting drawing portrait landscape sunset sunrise night morning light shadow color "
    "sitting standing running flying walking reading writing holding wearing looking smiling "
    "beautiful detailed realistic cinematic dramatic colorful vintage modern ancient futuristic "
    "image generation model token tokenizer prompt style quality resolution texture pattern "
    "hello world people person woman man child girl boy friend family group crowd market "
    "coffee tea cup book paper pen sign poster banner text letter word sentence title caption "
    "supercalifragilisticexpialidocious antidisestablishmentarianism internationalization"
).split()
CJK = (
    "一只猫坐在红色的沙发上写着你好世界这是一个句子中文测试图片生成模型高清细节城市夜晚灯光"
    "山水画风格可爱的小狗在草地上奔跑天空中有白云和彩虹春夏秋冬东南西北人们在街道上行走"
)
KANA = "ひらがなカタカナのテキストとにほんごですわたしはねこがすきですアイウエオ"
HANGUL = "한국어문장입니다안녕하세요고양이사진"
OTHER_SCRIPTS = ["Привет", "мир", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย", "naïve",
                 "café", "façade", "jalapeño", "Zürich", "ǅemal", "ʰʲ"]
EMOJI = ["😀", "🎨", "🐱", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇨🇳", "🇺🇸", "✨", "🍕", "🌙"]
CONTRACTIONS = ["I'm", "you're", "he's", "we've", "they'll", "I'd", "don't", "can't", "it's",
                "DON'T", "I'M", "We'Ve", "O'Neil"]
PUNCT = [".", ",", "!", "?", ";", ":", "...", "--", "(", ")", "[", "]", "{", "}", "\"", "'",
         "“", "”", "‘", "’", "「", "」", "，", "。", "：", "、", "#", "@", "&", "*", "->", "=="]


def training_corpus():
    rng = random.Random(20240601)
    lines = []
    for _ in range(6000):
        kind = rng.randrange(10)
        if kind < 4:
            n = rng.randrange(3, 16)
            words = [rng.choice(WORDS + CONTRACTIONS) for _ in range(n)]
            if rng.random() < 0.3:
                words[0] = words[0].capitalize()
            s = " ".join(words) + rng.choice([".", ",", "!", "?", "", ":"])
        elif kind == 4:
            s = "".join(rng.choice(CJK) for _ in range(rng.randrange(4, 30)))
            s += rng.choice(["。", "，", "！", "：", ""])
        elif kind == 5:
            s = "".join(rng.choice(KANA) for _ in range(rng.randrange(3, 15))) + " " + \
                "".join(rng.choice(HANGUL) for _ in range(rng.randrange(2, 8)))
        elif kind == 6:
            s = " ".join(str(rng.randrange(10 ** rng.randrange(1, 8))) for _ in range(5))
        elif kind == 7:
            s = "def f%d(x):\n    return x * %d  # %s\n\tpass\n\n" % (
                rng.randrange(100), rng.randrange(1000), rng.choice(WORDS))
        elif kind == 8:
            s = " ".join(rng.choice(EMOJI + OTHER_SCRIPTS + PUNCT) for _ in range(8))
        else:
            s = "%s%s%s  \n %s\t%s" % (rng.choice(WORDS), rng.choice(PUNCT), rng.choice(WORDS),
                                       rng.choice(CJK), rng.choice(WORDS))
        lines.append(s)
    return lines


# Strings the C++ tokenizer must encode exactly as `tokenizers` does.
HOSTILE = [
    "",
    "Hello world",
    "hello",
    "  leading and trailing spaces   ",
    "tabs\tand\t\tmultiple\t \t mixed\t",
    "line1\nline2\r\nline3\n\n\nline4 \n  \n x",
    "\n",
    " ",
    "   ",
    "\t\n \n",
    "\r\n\r\n",
    "nbsp\u00a0between\u00a0\u00a0words \u00a0x \u00a0",
    "ideographic\u3000space, em\u2003space, line\u2028sep, para\u2029sep, nel\u0085x, "
    "vt\x0bff\x0cx, fs\x1cgs\x1dus\x1fx",
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\ufeffbom",
    "中文测试，这是一个句子。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 문장입니다.",
    "GLM-Image生成一张图片：a cat 在月球上 riding a 🚲!",
    "I ❤️ 🍕 and 👍🏽 and 👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇨🇳🇺🇸 flags ✨✨✨",
    "👩🏿‍🚀👩🏻‍🔬🧑🏽‍🤝‍🧑🏼",
    "cafe\u0301 vs caf\u00e9, n\u0303, Z\u0351\u0310a\u036bl\u0352g\u0350o t\u0334e\u0335x\u0336t",
    "e\u0301\u0301\u0301",
    "\u0301leading mark, \u20dd enclosing",
    "He said 'hello' and \u201cgoodbye\u201d and \"quoted\" and \u300c\u5f15\u7528\u300d and "
    "\u2018single curly\u2019.",
    "'x' \"y\" \u201cz\u201d \u300cw\u300d",
    "I'm, you're, he's, we've, they'll, I'd, don't, DON'T, I'M, We'Ve, It'S, O'Neil, "
    "rock'n'roll, 'twas, ''double, it'\u017f, '\u017f",
    "1234567890 12 123 1234 3.14159 1,000,000 \u0663\u0664\u0665\u0666 \u00bd \u00b2 \u216b "
    "0x1F 2024-06-01",
    "abc123def4567ghi",
    " 123 a1 1a",
    "a" * 300,
    "supercalifragilisticexpialidocious" * 10,
    "zqxj" * 60,
    "\u6f22" * 100,
    "!!!??? ... ---> <== @#$%^&*()_+ {}[]|\\:;\"'<>,.?/~`",
    "end.\n\nNext:\r\n\r\nmore!!\n",
    "  .  ..\t,\n;",
    "def f(x):\n    return x**2  # comment\n\tpass\n",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440, \u0395\u03bb\u03bb\u03b7\u03bd"
    "\u03b9\u03ba\u03ac, \u05e2\u05d1\u05e8\u05d9\u05ea, \u0627\u0644\u0639\u0631\u0628\u064a"
    "\u0629, \u0939\u093f\u0928\u094d\u0926\u0940, \u0e44\u0e17\u0e22",
    "\u01c5 titlecase, \u02b0\u02b2 modifiers, \u00aa\u00ba ordinals",
    "\x00\x01\x1f\x7f controls \x08",
    "\ue000\uffff private and nonchar",
    "<|user|>\nDraw a cat<|assistant|>",
    "text<sop>36 24<eop><sop>16 16<eop><|dit_token_16384|>",
    "<sop><sop>",
    "almost <sop special <sop > <so p> sop",
    "<|dit_token_16384|><|dit_token_16385|><|dit_token_1|><|dit_token_16|>",
    "<|dit_token_163844|> <|dit_token_1638|>",
    "[gMASK]<sop>hello",
    "[MASK][gMASK][sMASK]",
    "abc<eop>def",
    "<x><y> and <x> <y> and <x><x><y>",
    "  <mask>  after, x<mask>y",
    "<pad_r>   x <pad_r>\n\ny",
    "qq aqq qq_ qq. (qq) qq\u00e9 qqq",
    "<|endoftext|>",
    "thing sing ing ring",
    "\u4f60\u597d<|image|>\u4e16\u754c",
]


def set_pointer(obj, pointer, value):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    for p in parts[:-1]:
        obj = obj[p]
    obj[parts[-1]] = value


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    # GLM-style specials after the trained vocabulary.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GLM_SPECIALS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in DIT_TOKENS])
    # Flags the real files leave at their defaults, exercised here: lstrip / rstrip on specials,
    # non-special normalized tokens (one a prefix of another: leftmost-longest), single_word.
    tok.add_special_tokens([
        AddedToken("<mask>", special=True, normalized=False, lstrip=True),
        AddedToken("<pad_r>", special=True, normalized=False, rstrip=True),
    ])
    tok.add_tokens([
        AddedToken("<x>", special=False, normalized=True),
        AddedToken("<x><y>", special=False, normalized=True),
        AddedToken("<y>", special=False, normalized=False),
        AddedToken("ing", special=False, normalized=True),
        AddedToken("qq", special=False, normalized=True, single_word=True),
    ])
    gmask = tok.token_to_id("[gMASK]")
    sop = tok.token_to_id("<sop>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B",
            special_tokens=[("[gMASK]", gmask), ("<sop>", sop)]),
    ])
    return tok


def variants(base_json):
    gpt2 = {
        "/pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                           "use_regex": True},
        "/post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                            "use_regex": True},
        "/model/ignore_merges": True,
    }
    single_digit = copy.deepcopy(base_json["pre_tokenizer"])
    single_digit["pretokenizers"][0]["pattern"] = {"Regex": SINGLE_DIGIT_SPLIT}
    return [
        ("glm4", {}),
        ("gpt2_bytelevel", gpt2),
        ("single_digit_nfc", {"/pre_tokenizer": single_digit, "/normalizer": {"type": "NFC"},
                              "/post_processor": None}),
    ]


def cases_for(tok, texts):
    out = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=True).ids
        plain = tok.encode(t, add_special_tokens=False).ids
        out.append({
            "text": t,
            "ids": ids,
            "ids_no_special": plain,
            "decode": tok.decode(plain, skip_special_tokens=False),
            "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    return out


def grid_prompt(prompt, height, width):
    # As transformers' GlmImageProcessor builds the text-to-image prompt.
    token_h, token_w = height // 32, width // 32
    ratio = token_h / token_w
    prev_h = int(math.sqrt(ratio) * 16)
    prev_w = int(math.sqrt(1 / ratio) * 16)
    return "%s<sop>%d %d<eop><sop>%d %d<eop><|dit_token_16384|>" % (
        prompt, token_h, token_w, prev_h, prev_w)


CHAT_TEMPLATE = (
    "{%- for m in messages -%}{%- if m.content is string -%}{{ m.content }}{%- else -%}"
    "{%- for item in m.content -%}{%- if item.type == 'text' -%}{{ item.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}")


def transformers_prompts(out_dir, prompts, record):
    """Prompt ids through transformers (tokenizer call, GlmImageProcessor, chat template)."""
    try:
        import transformers
        record["transformers_version"] = transformers.__version__
    except Exception as e:  # noqa: BLE001
        record["transformers_error"] = repr(e)
        return
    try:
        hf_tok = transformers.AutoTokenizer.from_pretrained(out_dir)
        record["transformers_tokenizer_class"] = type(hf_tok).__name__
    except Exception as e:  # noqa: BLE001
        record["transformers_error"] = "AutoTokenizer: " + repr(e)
        return
    for p in prompts:
        try:
            p["ids_transformers_tokenizer"] = hf_tok(p["text"])["input_ids"]
        except Exception as e:  # noqa: BLE001
            p["transformers_tokenizer_error"] = repr(e)
    processor = None
    try:
        from transformers.models.glm_image.processing_glm_image import GlmImageProcessor
        image_processor = None
        for name in ("GlmImageImageProcessorFast", "GlmImageImageProcessor",
                     "Glm4vImageProcessorFast", "Glm4vImageProcessor"):
            cls = getattr(transformers, name, None)
            if cls is not None:
                try:
                    image_processor = cls()
                    break
                except Exception:  # noqa: BLE001
                    continue
        processor = GlmImageProcessor(image_processor=image_processor, tokenizer=hf_tok,
                                      chat_template=CHAT_TEMPLATE)
        record["processor_image_processor"] = type(image_processor).__name__
    except Exception as e:  # noqa: BLE001
        record["processor_error"] = repr(e)
    if processor is None:
        return
    for p in prompts:
        try:
            enc = processor(text=p["prompt"], target_h=p["height"], target_w=p["width"])
            ids = enc["input_ids"]
            p["ids_processor"] = list(ids[0]) if ids and isinstance(ids[0], list) else list(ids)
        except Exception as e:  # noqa: BLE001
            p["processor_call_error"] = repr(e)
        try:
            messages = [{"role": "user", "content": [{"type": "text", "text": p["prompt"]}]}]
            enc = processor.apply_chat_template(messages, tokenize=True, target_h=p["height"],
                                                target_w=p["width"], return_dict=True)
            ids = enc["input_ids"]
            p["ids_chat_template"] = list(ids[0]) if ids and isinstance(ids[0], list) else list(ids)
        except Exception as e:  # noqa: BLE001
            p["chat_template_error"] = repr(e)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer()
    tok_json_text = tok.to_str(pretty=False)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok_json_text)
    config = {
        "backend": "tokenizers",
        "bos_token": "<|dit_token_16384|>",
        "eos_token": "<|dit_token_16385|>",
        "pad_token": "<|dit_token_16385|>",
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "extra_special_tokens": GLM_SPECIALS,
        "grid_bos_token": "<sop>",
        "grid_eos_token": "<eop>",
        "image_token": "<|image|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 65536,
        "model_specific_special_tokens": {"grid_bos_token": "<sop>", "grid_eos_token": "<eop>",
                                          "image_token": "<|image|>"},
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "TokenizersBackend",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")

    base_json = json.loads(tok_json_text)
    record = {
        "tokenizers_version": tokenizers.__version__,
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "token_to_id": {t: tok.token_to_id(t) for t in
                        GLM_SPECIALS + DIT_TOKENS + ["<mask>", "<pad_r>", "<x>", "<x><y>", "<y>",
                                                     "ing", "qq", "Ġthe", "the", "ĠĠ", "Ċ"]},
        "variants": [],
    }
    for name, overrides in variants(base_json):
        j = copy.deepcopy(base_json)
        for pointer, value in overrides.items():
            set_pointer(j, pointer, value)
        vtok = Tokenizer.from_str(json.dumps(j))
        record["variants"].append({"name": name, "overrides": overrides,
                                   "cases": cases_for(vtok, HOSTILE)})

    prefixes = []
    for t in ["👨‍👩‍👧‍👦 家族", "中文测试，这是", "cafe\u0301 Z\u0351\u0310a"]:
        ids = tok.encode(t, add_special_tokens=False).ids
        prefixes.append({"ids": ids, "texts": [tok.decode(ids[:k]) for k in range(len(ids) + 1)]})
    record["decode_prefixes"] = prefixes

    prompts = []
    for prompt, h, w in [("A cat sitting on a 'red' sofa, 4k, highly detailed", 1024, 1024),
                         ("一只猫坐在“红色”沙发上，墙上写着「你好」", 1152, 768),
                         ("", 768, 1344),
                         ("emoji 🎨 prompt with <sop> inside\nand a newline", 512, 2048)]:
        text = grid_prompt(prompt, h, w)
        prompts.append({"prompt": prompt, "height": h, "width": w, "text": text,
                        "ids_tokenizers": tok.encode(text).ids})
    transformers_prompts(out_dir, prompts, record)
    record["prompts"] = prompts

    with open(os.path.join(out_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    summary = {k: v for k, v in record.items() if k not in ("variants", "prompts",
                                                            "decode_prefixes", "token_to_id")}
    print(json.dumps(summary, indent=1))
    for p in prompts:
        print({k: v for k, v in p.items() if k not in ("text", "prompt")})
    for name in ("tokenizer.json", "tokenizer_config.json", "expected.json"):
        print(name, os.path.getsize(os.path.join(out_dir, name)))


if __name__ == "__main__":
    main()
