"""Reference sigmas of Lightricks' LTX2Scheduler.execute (ltx_core/components/schedulers.py).

Run with Debian's torch (/usr/bin/python3) and the ltx-core sources of Lightricks/LTX-2 (commit
400fd31) on PYTHONPATH:
  LTX_CORE_SRC=<checkout>/packages/ltx-core/src /usr/bin/python3 make_official_sigmas.py > official_sigmas.json
The module imports scipy for another scheduler; a placeholder stands in when scipy is missing
(execute does not use it).
"""
import json
import os
import sys
import types

sys.path.insert(0, os.environ["LTX_CORE_SRC"])
try:
    import scipy  # noqa: F401
except ImportError:
    placeholder = types.ModuleType("scipy")
    placeholder.stats = types.ModuleType("scipy.stats")
    sys.modules["scipy"] = placeholder
    sys.modules["scipy.stats"] = placeholder.stats

import torch  # noqa: E402
from ltx_core.components.schedulers import LTX2Scheduler  # noqa: E402

torch.set_num_threads(1)
cases = []
for steps in (2, 3, 8, 30, 40):
    for tokens in (None, 72, 1024, 6144, 24576):
        for stretch in (True, False):
            latent = None if tokens is None else torch.zeros(1, 1, tokens, 1)
            sigmas = LTX2Scheduler().execute(steps=steps, latent=latent, stretch=stretch)
            cases.append({
                "steps": steps,
                "tokens": tokens,
                "stretch": stretch,
                "sigmas": [float(s) for s in sigmas.tolist()],
            })
json.dump({"source": "Lightricks/LTX-2 400fd31 ltx_core.components.schedulers.LTX2Scheduler.execute "
                     "(defaults max_shift 2.05, base_shift 0.95, terminal 0.1), torch " + torch.__version__,
           "cases": cases}, sys.stdout, indent=1)
