"""A slow reference of VPN's Algorithm 2, written from the paper's equations.

For each test image x_j, each class hypothesis c and each draw d, one at a time:
    x' = x_j + coeff * c / (C - 1)                      (the label input, Sec. 3.3)
    sigma = |g(x')|                                     (the generator's std, Eq. 16, mean 0)
    eps = sigma * z                                     (reparameterisation)
    s_c += softmax(f(x_j + eps))[c] / n                 (Algorithm 2's score)
prediction argmax_c s_c; a leak when argmax f(x_j + eps) == c. Only the generator's network and
the base model are taken from the code under test (as plain modules); the label input, the std,
the noise, the scores, the argmax and the tallies are recomputed here in Python loops.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def algorithm2(net: torch.nn.Module, base: torch.nn.Module, x: torch.Tensor, num_classes: int,
               label_coeff: float, z: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """z[d] holds the standard normals of draw d for every (hypothesis c, image j) at row
    c * N + j (the layout the fast path draws them in, so both can share them)."""
    n_img, draws = len(x), len(z)
    score = torch.zeros(n_img, num_classes)
    leak = torch.zeros(n_img)
    sigma_mean = torch.zeros(n_img)
    for j in range(n_img):
        for c in range(num_classes):
            for d in range(draws):
                xj = x[j:j + 1]
                shifted = xj + label_coeff * c / (num_classes - 1)
                sigma = torch.abs(net(shifted)).view(xj.shape)
                eps = sigma * z[d][c * n_img + j:c * n_img + j + 1]
                probs = torch.softmax(base(xj + eps), dim=1)[0]
                score[j, c] += probs[c] / draws
                leak[j] += float(int(torch.argmax(probs)) == c) / (draws * num_classes)
                sigma_mean[j] += float(sigma.mean()) / (draws * num_classes)
    return {"score": score, "leak": leak, "sigma_mean": sigma_mean, "prediction": score.argmax(1)}
