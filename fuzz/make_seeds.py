#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<harness>/: small real inputs (the reference
fixtures' small files, the default pipeline) plus hand-made valid ones of each shape the readers
accept. Run from the repository root with /usr/bin/python3 (Debian's, with PIL for the image
seeds); fixtures from $DIFFMESH_FIXTURES or ../shared/fixtures."""
import io
import json
import os
import shutil
import struct

ROOT = 'fuzz/corpus'
FIXTURES = os.environ.get('DIFFMESH_FIXTURES', '../shared/fixtures')


def put(harness, name, data):
    os.makedirs(os.path.join(ROOT, harness), exist_ok=True)
    with open(os.path.join(ROOT, harness, name), 'wb') as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def copy(harness, name, path):
    if os.path.exists(path):
        put(harness, name, open(path, 'rb').read())


SIZES = {'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'U8': 1, 'F64': 8, 'I8': 1,
         'BOOL': 1, 'I16': 2}


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape)], laid out in order; bytes are a counting pattern."""
    header, data = {}, b''
    if metadata:
        header['__metadata__'] = metadata
    for name, dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        nbytes = n * SIZES[dtype]
        header[name] = {'dtype': dtype, 'shape': shape,
                        'data_offsets': [len(data), len(data) + nbytes]}
        data += bytes((i * 7 + 3) & 0xff for i in range(nbytes))
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    return struct.pack('<Q', len(h)) + h + data


def varint(v):
    v &= (1 << 64) - 1
    out = b''
    while True:
        b = v & 0x7f
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def wire_tensor(dtype, shape, nbytes):
    packed = b''.join(varint(d) for d in shape)
    msg = b''
    if dtype:
        msg += b'\x08' + varint(dtype)
    if shape:
        msg += b'\x12' + varint(len(packed)) + packed
    if nbytes:
        msg += b'\x1a' + varint(nbytes) + bytes((i * 13) & 0xff for i in range(nbytes))
    return msg


# Hand-made seeds, kept as committed.
HAND_MADE = ['pipeline_config_fuzzer/two_models_shared_services']


def main():
    kept = {name: open(os.path.join(ROOT, name), 'rb').read() for name in HAND_MADE
            if os.path.exists(os.path.join(ROOT, name))}
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    for name, data in kept.items():
        put(*name.split('/'), data)
    h = 'safetensors_header_fuzzer'
    copy(h, 'vae_stats', os.path.join(FIXTURES, 'ltx2-upsampler-ref-a/vae_stats.safetensors'))
    put(h, 'two_f32', safetensors([('a.weight', 'F32', [3, 2]), ('b', 'F32', [4])],
                                  {'format': 'pt'}))
    put(h, 'all_dtypes', safetensors([(d.lower(), d, [2]) for d in SIZES]))
    put(h, 'empty_tensor', safetensors([('empty', 'F32', [0, 3]), ('scalar', 'BF16', [])]))
    put(h, 'no_tensors', safetensors([], {'format': 'pt'}))

    h = 'shard_index_fuzzer'
    put(h, 'two_shards', json.dumps({'metadata': {'total_size': 16}, 'weight_map': {
        'x': 'model-00001-of-00002.safetensors', 'y': 'model-00002-of-00002.safetensors'}}))
    put(h, 'subfolder_and_link', json.dumps({'weight_map': {
        'x': 'link-in.safetensors', 'z': 'sub/model-sub.safetensors',
        'y': './model-00002-of-00002.safetensors'}}))
    put(h, 'one_shard', json.dumps({'weight_map': {'x': 'model-00001-of-00002.safetensors'}}))

    h = 'wire_tensor_fuzzer'
    put(h, 'f32_2x3', b'\x00' + wire_tensor(1, [2, 3], 24))
    put(h, 'bf16_4_expect_dtype', bytes([0x83]) + wire_tensor(3, [4], 8))
    put(h, 'i64_rank1_expect_rank', bytes([0x50]) + wire_tensor(4, [1], 8))
    put(h, 'u8_scalar', b'\x00' + wire_tensor(6, [], 1))
    put(h, 'bool_empty', b'\x00' + wire_tensor(9, [0, 5], 0))

    h = 'token_file_fuzzer'
    put(h, 'one', 'tok-4f9a1c2e\n')
    put(h, 'comments_crlf', '# operators\n\n  alpha-token  \r\nbeta_token\n# end\n')

    h = 'pipeline_config_fuzzer'
    copy(h, 'default', 'common/config/default_pipeline.json')
    copy(h, 'trivial', 'loadtest/trivial_pipeline.json')

    h = 'config_json_fuzzer'
    for component in ('transformer', 'vae', 'text_encoder', 'vision_language_encoder'):
        copy(h, 'glm_' + component, os.path.join(FIXTURES, 'glm-image-ref-a', component,
                                                 'config.json'))
    copy(h, 'glm_scheduler', os.path.join(FIXTURES, 'glm-image-ref-a/scheduler/scheduler_config.json'))
    copy(h, 'glm_generation', os.path.join(
        FIXTURES, 'glm-image-ref-a/vision_language_encoder/generation_config.json'))
    for component in ('transformer', 'vae', 'audio_vae', 'vocoder', 'connectors'):
        copy(h, 'ltx2_' + component, os.path.join(FIXTURES, 'ltx2-ref-a/v20', component,
                                                  'config.json'))


    image_seeds()
    request_seeds()

    h = 'gemma_tokenizer_fuzzer'
    prompt = 'A cat\u00a0on a mat,\n  caf\u00e9 \U0001F600 <start_of_image> 12345'.encode()
    for name, path in (('dflt', 'models/ltx2/testdata/tokenizer/dflt.model'),
                       ('suffix', 'models/ltx2/testdata/tokenizer/suffix.model'),
                       ('gemma_like', os.path.join(FIXTURES,
                                                   'gemma3-ref-a/tokenizer/tiny_gemma_like_bpe.model'))):
        if os.path.exists(path):
            model = open(path, 'rb').read()
            put(h, name, bytes([len(prompt)]) + prompt + model)
            put(h, name + '_empty_prompt', b'\x00' + model)

    kv_seeds()

    h = 'bpe_tokenizer_fuzzer'
    # Cut-down variants of the GLM tokenizer.json only: the whole file (89 kB) parses ~100 times
    # a second under the sanitizers.
    full = json.load(open('tests/data/tokenizer/tokenizer.json'))
    for name, small in small_tokenizers(full):
        put(h, name, json.dumps(small, ensure_ascii=False) + '\0 Hi there!\n\n  caf\u00e9 99')


def image_seeds():
    """PNG / JPEG / WebP files of each kind the decoder converts, behind a limits byte (0: the
    default model's limits, 1: the small box)."""
    from PIL import Image  # Debian's python3-pil
    h = 'image_decode_fuzzer'

    def image(mode, size=(7, 5)):
        im = Image.new('RGB', size)
        im.putdata([((x * 37) & 255, (y * 51) & 255, ((x + y) * 23) & 255)
                    for y in range(size[1]) for x in range(size[0])])
        if mode == 'RGBA':
            im.putalpha(Image.linear_gradient('L').resize(size))
        return im.convert(mode) if mode != 'RGB' else im

    def save(im, fmt, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        return b.getvalue()

    seeds = {
        'png_rgb': save(image('RGB'), 'PNG'),
        'png_rgba': save(image('RGBA'), 'PNG'),
        'png_gray': save(image('L'), 'PNG'),
        'png_palette': save(image('P'), 'PNG'),
        'png_gray16': save(image('L').convert('I').point(lambda v: v * 257), 'PNG'),
        'jpeg_baseline': save(image('RGB', (17, 9)), 'JPEG', quality=80),
        'jpeg_progressive': save(image('RGB', (17, 9)), 'JPEG', quality=80, progressive=True),
        'jpeg_gray': save(image('L'), 'JPEG'),
        'jpeg_cmyk': save(image('CMYK'), 'JPEG'),
        'webp_lossy': save(image('RGB', (9, 6)), 'WEBP', quality=70),
        'webp_lossless': save(image('RGB'), 'WEBP', lossless=True),
        'webp_alpha': save(image('RGBA'), 'WEBP', quality=70),
    }
    for name, data in seeds.items():
        put(h, name, b'\x00' + data)
        put(h, name + '_small_limits', b'\x01' + data)
    put(h, 'png_too_wide_for_small_limits', b'\x01' + save(image('RGB', (97, 2)), 'PNG'))
    path = os.path.join(FIXTURES, 'glm-image-edit-ref-a/condition_image_0.png')
    if os.path.exists(path):
        put(h, 'fixture_condition_image', b'\x00' + open(path, 'rb').read())
    return seeds


def kv_seeds():
    """Connections' byte streams to the rendezvous store (common/kvstore/kv_server.h): frames
    [u32 length][op byte, arguments], strings [u32 length][bytes], integers int64."""
    def s(b):
        return struct.pack('<I', len(b)) + b

    def frame(op, *args):
        payload = bytes([op]) + b''.join(args)
        return struct.pack('<I', len(payload)) + payload

    def i64(v):
        return struct.pack('<q', v)

    set_, get, add, check, delete, numkeys, cas = range(1, 8)
    h = 'kv_frames_fuzzer'
    put(h, 'set_get', frame(set_, s(b'key'), s(b'value')) + frame(get, s(b'key')) +
        frame(get, s(b'missing')))
    put(h, 'add_numkeys', frame(add, s(b'n'), i64(5)) + frame(add, s(b'n'), i64(-7)) +
        frame(numkeys))
    put(h, 'check_delete', frame(set_, s(b'a'), s(b'1')) +
        frame(check, struct.pack('<I', 2), s(b'a'), s(b'b')) + frame(delete, s(b'a')) +
        frame(delete, s(b'a')))
    put(h, 'compare_set', frame(cas, s(b'c'), s(b''), s(b'x')) +
        frame(cas, s(b'c'), s(b'x'), s(b'y')) + frame(cas, s(b'c'), s(b'z'), s(b'w')) +
        frame(cas, s(b'd'), s(b'q'), s(b'r')))
    put(h, 'group_keys', frame(set_, s(b'/gloo/rank_0'), s(bytes(range(64)))) +
        frame(add, s(b'hb/1'), i64(1)) + frame(get, s(b'invite/3')) + frame(numkeys))


def field(number, wire, value):
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(value)
    if wire == 1:
        return key + struct.pack('<d', value)
    if wire == 5:
        return key + struct.pack('<f', value)
    value = value.encode() if isinstance(value, str) else value
    return key + varint(len(value)) + value


def request_seeds():
    """Serialized diffmesh.v1.GenerateRequests for the default pipeline's two models."""
    from PIL import Image
    h = 'request_validator_fuzzer'
    b = io.BytesIO()
    Image.new('RGB', (8, 8), (200, 30, 60)).save(b, 'PNG')
    png = b.getvalue()

    def stream(cfg, stg=None, modality=None, rescale=None):
        out = field(1, 5, cfg)
        if stg is not None:
            out += field(2, 5, stg)
        if modality is not None:
            out += field(3, 5, modality)
        if rescale is not None:
            out += field(4, 5, rescale)
        return out

    put(h, 'prompt_only', field(2, 2, 'a red fox in snow'))
    put(h, 'glm_edit', field(1, 2, 'glm-image-tiny') + field(2, 2, 'make it blue') +
        field(3, 2, 'blurry') + field(4, 2, field(1, 0, 1) + field(2, 2, png)) +
        field(5, 0, 128) + field(6, 0, 192) + field(9, 0, 4) + field(10, 0, 42) +
        field(11, 2, field(1, 2, stream(2.5)) + field(4, 0, 1)) +
        field(12, 2, field(1, 0, 2) + field(2, 0, 85)) + field(13, 2, 'req-seed-1'))
    put(h, 'glm_webp_lossless', field(2, 2, 'x') + field(12, 2, field(1, 0, 3) + field(2, 0, 100)))
    put(h, 'ltx2_video', field(1, 2, 'ltx2-tiny') + field(2, 2, 'waves at dusk, with gulls') +
        field(4, 2, field(1, 0, 2) + field(2, 2, png)) + field(5, 0, 64) + field(6, 0, 96) +
        field(7, 0, 17) + field(8, 1, 25.0) + field(9, 0, 6) +
        field(11, 2, field(1, 2, stream(3, 1, 3, 0.7)) + field(2, 2, stream(7, 1, 3, 0.5)) +
              field(3, 2, field(1, 2, bytes([1, 2, 5]))) + field(4, 0, 2)) +
        field(12, 2, field(1, 0, 4)))
    put(h, 'ltx2_latents', field(1, 2, 'ltx2-tiny') + field(2, 2, 'p') + field(12, 2, field(1, 0, 6)))


def small_tokenizers(full):
    """Small tokenizer.json variants cut from the GLM one: its byte alphabet and first merges,
    under each normalizer, pre-tokenizer and post-processor kind the reader accepts."""
    keep = {t: i for t, i in full['model']['vocab'].items() if i < 320}
    merges = []
    for m in full['model']['merges']:
        a, b = m.split(' ') if isinstance(m, str) else m
        if a in keep and b in keep and a + b in keep:
            merges.append(m)
    base = dict(full)
    base['model'] = dict(full['model'], vocab=keep, merges=merges)
    base['added_tokens'] = [t for t in full['added_tokens'] if t['id'] in (260, 3000, 3002, 3004)]
    yield 'small', base
    yield 'small_nfc_gpt2', dict(base, normalizer={'type': 'Sequence', 'normalizers': [
        {'type': 'NFC'}]}, pre_tokenizer={'type': 'ByteLevel', 'add_prefix_space': True,
                                          'trim_offsets': True, 'use_regex': True},
        post_processor={'type': 'RobertaProcessing', 'sep': ['<|endoftext|>', 3000],
                        'cls': ['<sop>', 3004], 'trim_offsets': True, 'add_prefix_space': True})
    yield 'small_nfkd_no_post', dict(base, normalizer={'type': 'NFKD'}, post_processor=None,
                                     decoder=None)


if __name__ == '__main__':
    main()
