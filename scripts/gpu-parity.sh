#!/usr/bin/env bash
# Parity of the denoise group across GPUs (bf16, NCCL): every layout below against one GPU,
# through the real services. Prints one line per layout: relative error of the final latents
# and PSNR of the PNG. Usage: scripts/gpu-parity.sh BUILD_DIR OUT_DIR [LAYOUT...]
# where a LAYOUT is a comma-separated list of denoise flags, e.g. cfg_degree=2,ulysses_degree=2.
set -u
bin=${1:?build dir}/services
out=${2:?output dir}
shift 2
layouts=("$@")
[ ${#layouts[@]} -eq 0 ] && layouts=(cfg_degree=2 ulysses_degree=2 ring_degree=2 tp_degree=2)
mkdir -p "$out"
port=58000
device=${DEVICE:-cuda}   # DEVICE=cpu checks the script itself on a machine without GPUs
run() {  # $1 name, $2 denoise flags (comma-separated)
  local name=$1 flags=() pids=()
  IFS=, read -ra kv <<<"$2"
  for f in "${kv[@]}"; do [ -n "$f" ] && flags+=("--$f"); done
  "$bin/ar/diffmesh-ar" --port $((port + 1)) >"$out/$name.ar.log" 2>&1 & pids+=($!)
  "$bin/encoder/diffmesh-encoder" --port $((port + 2)) >/dev/null 2>&1 & pids+=($!)
  "$bin/denoise/diffmesh-denoise" --device "$device" --port $((port + 3)) --master_port $((port + 9)) \
    "${flags[@]}" >"$out/$name.denoise.log" 2>&1 & pids+=($!)
  "$bin/orchestrator/diffmesh-orchestrator" --port $port --ar-address 127.0.0.1:$((port + 1)) \
    --encoder-address 127.0.0.1:$((port + 2)) --denoise-address 127.0.0.1:$((port + 3)) >/dev/null 2>&1 & pids+=($!)
  local ok=0
  # The latents and the image of the same request (one output per request).
  gen() {
    "$bin/cli/diffmesh" generate --server 127.0.0.1:$port --prompt 'a lighthouse, "parity"' \
      --seed 11 --height 512 --width 512 --steps 8 --timeout 120 --output "$1"
  }
  for attempt in $(seq 20); do  # the services need a few seconds to start
    if gen "$out/$name.safetensors" >"$out/$name.log" 2>&1 &&
       gen "$out/$name.png" >>"$out/$name.log" 2>&1; then ok=1; break; fi
    grep -q UNAVAILABLE "$out/$name.log" || break
    sleep 2
  done
  [ $ok = 1 ] || { echo "$name: generate failed"; tail -3 "$out/$name.log" "$out/$name.denoise.log"; }
  kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null
  port=$((port + 20))
}
run one ""
for l in "${layouts[@]}"; do run "${l//[=,]/_}" "$l"; done
python3 - "$out" "${layouts[@]}" <<'PY'
import sys, struct, json, math, array, zlib
out, layouts = sys.argv[1], sys.argv[2:]
def latents(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; e = json.loads(b[8:8 + n])['latents']
    a = array.array('f'); a.frombytes(b[8 + n + e['data_offsets'][0]:8 + n + e['data_offsets'][1]]); return a
def pixels(p):  # 8-bit RGB PNG written by diffmesh (filter bytes per row)
    b = open(p, 'rb').read(); i = 8; w = h = 0; data = b''
    while i < len(b):
        n = struct.unpack('>I', b[i:i+4])[0]; t = b[i+4:i+8]; c = b[i+8:i+8+n]; i += 12 + n
        if t == b'IHDR': w, h = struct.unpack('>II', c[:8])
        if t == b'IDAT': data += c
    raw = zlib.decompress(data); stride = w * 3; rows = []; prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]; line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - 3] if x >= 3 else 0; up = prev[x]; c = prev[x - 3] if x >= 3 else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + up) & 255
            elif f == 3: line[x] = (line[x] + (a + up) // 2) & 255
            elif f == 4:
                p = a + up - c; pa, pb, pc = abs(p - a), abs(p - up), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else up if pb <= pc else c)) & 255
        rows.append(line); prev = line
    return b''.join(rows)
base_l, base_p = latents(f'{out}/one.safetensors'), pixels(f'{out}/one.png')
for l in layouts:
    name = l.replace('=', '_').replace(',', '_')
    try:
        x, p = latents(f'{out}/{name}.safetensors'), pixels(f'{out}/{name}.png')
    except Exception as e:
        print(f'{l:40s} missing ({e})'); continue
    rel = math.sqrt(sum((u - v) ** 2 for u, v in zip(x, base_l))) / math.sqrt(sum(v * v for v in base_l))
    mse = sum((u - v) ** 2 for u, v in zip(p, base_p)) / len(p)
    psnr = float('inf') if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    print(f'{l:40s} latents rel err {rel:.2e}  PSNR {psnr:.1f} dB')
PY
