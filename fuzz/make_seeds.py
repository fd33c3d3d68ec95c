#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<harness>/: small real inputs (the reference
fixtures' small files, the default pipeline) plus hand-made valid ones of each shape the readers
accept. Run from the repository root; fixtures from $DIFFMESH_FIXTURES or ../shared/fixtures."""
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


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
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


if __name__ == '__main__':
    main()
