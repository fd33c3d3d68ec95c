"""Reference outputs of Pillow's Image.resize for image_resample_test (condition_image_test.cc).

Run with Debian 12's python3 and python3-pil (Pillow 9.4.0):
    /usr/bin/python3 make_pil_resize_ref.py > pil_resize_ref.json
A deterministic RGB image (a linear congruential generator, so no numpy is needed) is resized
with the filters the GLM-Image processors use, to sizes that shrink, grow, and do both at once.
"""
import json

import PIL
from PIL import Image

W, H = 37, 23
state = 12345
pixels = []
for _ in range(W * H * 3):
    state = (state * 1103515245 + 12345) % (1 << 31)
    pixels.append(state >> 23)
src = Image.frombytes("RGB", (W, H), bytes(pixels))
cases = []
for name, flt in (("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS), ("bilinear", Image.BILINEAR)):
    for ow, oh in ((16, 11), (50, 40), (13, 29), (37, 7)):
        out = src.resize((ow, oh), flt)
        cases.append({"filter": name, "pil_filter": int(flt), "width": ow, "height": oh,
                      "pixels": list(out.tobytes())})
print(json.dumps({"pillow": PIL.__version__, "width": W, "height": H, "pixels": pixels,
                  "cases": cases}))
