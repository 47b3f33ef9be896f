"""Does CW-L2 under EOT fail on a sampled network because its objective is noisy? (cwfix)

Trains the quick preset's adversarial_sesnn networks (Baseline and SE-SNN, 784-1024-1024-256-10,
no adversarial training) for a few epochs on mnist5k at 28 px, one seed, and runs the CW-L2 test
setting (quick's cw_* fields: 5 binary-search steps, 10 draws, test_mode sample) on the first
`--images` test images with fresh draws per call (eot_fixed_draws=False) and with the same draws
on every call of the attack (True), each also under ART's CarliniL2Method with its binary-search
line `c_old = c_current` made a copy (`--patched`: what that aliasing costs). Prints, per run, the
clean accuracy, the attack's success rate and mean L2 and its seconds.

    python bench/sesnn_cw_fixed_draws.py --out bench/results/sesnn_cw_fixed_draws_cpu.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def patch_art() -> None:
    """CarliniL2Method with `c_old = c_current.copy()` (ART 1.20.1 carlini.py line 476 aliases)."""
    import inspect

    import art.attacks.evasion
    import art.attacks.evasion.carlini as carlini
    src = inspect.getsource(carlini)
    line = "\n                c_old = c_current\n"  # CarliniL2Method's; CarliniLInfMethod's is indented deeper
    assert src.count(line) == 1
    ns = {"__name__": "carlini_patched"}
    exec(compile(src.replace(line, "\n                c_old = c_current.copy()\n"), "carlini_patched", "exec"), ns)
    art.attacks.evasion.CarliniL2Method = ns["CarliniL2Method"]


def one(job):
    import torch
    torch.set_num_threads(1)
    from search_spaces.sesnn import CW_FIELDS, DEFENCE_NET
    from trainables import sesnn
    model, fixed, patched, epochs, images = job
    if patched:
        patch_art()
    fields = {k: v for k, v in DEFENCE_NET.items()} | CW_FIELDS["quick"]
    cfg, ecfg = sesnn.preset_configs("quick", fields | {"model": model, "epochs": epochs, "cw_images": images,
                                                        "eot_fixed_draws": fixed, "seed": 0})
    data = sesnn.load_data(cfg)
    res = sesnn.train(cfg, data)
    t0 = time.perf_counter()
    clean, cw = sesnn.evaluate(res.model, data, [{"attack": "none", "eps": 0.0}, {"attack": "cw_l2", "eps": 0.0}],
                               cfg, ecfg, eval_seed=0)
    return (f"{model:13s} fixed={fixed!s:5s} art_patched={patched!s:5s} clean_acc={clean['accuracy']:.3f} "
            f"cw_acc={cw['accuracy']:.3f} success={cw['attack_success_rate']:.3f} mean_l2={cw['mean_l2']:.3f} "
            f"attack_s={time.perf_counter() - t0:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    jobs = [("sesnn", False, False), ("sesnn", True, False), ("deterministic", True, False),
            ("sesnn", False, True), ("sesnn", True, True), ("deterministic", True, True)]
    head = (f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread per run; "
            f"{a.epochs} epochs, {a.images} images, quick CW fields, seed 0, eval_seed 0")
    lines = [head]
    print(head, flush=True)
    with ProcessPoolExecutor(a.workers) as pool:
        for line in pool.map(one, [j + (a.epochs, a.images) for j in jobs]):
            print(line, flush=True)
            lines.append(line)
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
