"""A slow reference of SE-SNN and its baselines, written from the papers' equations.

Every quantity is a Python loop over examples, units and classes in float64: the stochastic
layer (Eq. 1), the max-entropy regulariser's three aggregations (Eq. 5-7), Deep VIB's KL term,
Reed et al.'s bootstrap losses, Patrini et al.'s forward loss and anchor estimate of T (with
the percentile taken from a sorted list), and FGS along the expected gradient, by central
finite differences. The noise values are given, so the fast path can be fed the same ones.
"""

from __future__ import annotations

import math

import torch


def _linear(layer, h):
    """out[j] = sum_i W[j, i] h[i] + b[j], for one example h (a list)."""
    W, b = layer.weight.detach().double().tolist(), layer.bias.detach().double().tolist()
    return [sum(W[j][i] * h[i] for i in range(len(h))) + b[j] for j in range(len(W))]


def softplus(a: float) -> float:
    return math.log1p(math.exp(-abs(a))) + max(a, 0.0)


def forward(net, x: torch.Tensor, eps: dict[int, torch.Tensor] | None = None,
            code_relu: bool = True) -> tuple[torch.Tensor, dict]:
    """Logits of `net` (trainables.sesnn.SNN) on x, example by example. eps[k] (N, width) is the
    noise of the k-th stochastic layer; without it a stochastic layer passes mu. `code_relu=False`
    is Deep VIB as Alemi et al. write it: the next layer reads the code z itself, no ReLU. Returns
    the logits and, per stochastic layer, (mu, sigma) as (N, width) tensors."""
    from trainables.sesnn import ParallelLinear, StochasticLinear

    logits, stats = [], {}
    for b in range(x.shape[0]):
        h, k = x[b].reshape(-1).double().tolist(), 0
        for layer in net.hidden:
            if isinstance(layer, StochasticLinear):
                mu = _linear(layer.mu, h)
                sigma = [softplus(a) + layer.floor for a in _linear(layer.log_scale, h)]
                z = [mu[j] + (float(eps[k][b, j]) * sigma[j] if eps is not None else 0.0) for j in range(len(mu))]
                stats.setdefault(k, ([], []))
                stats[k][0].append(mu)
                stats[k][1].append(sigma)
                k += 1
                if not code_relu:
                    h = z
                    continue
            elif isinstance(layer, ParallelLinear):
                z = [u + v for u, v in zip(_linear(layer.main, h), _linear(layer.parallel, h))]
            else:
                z = _linear(layer, h)
            h = [max(v, 0.0) for v in z]
        logits.append(_linear(net.classifier, h))
    return (torch.tensor(logits, dtype=torch.float64),
            {k: (torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)) for k, (m, s) in stats.items()})


def omega(log_sigma: torch.Tensor, b: float, aggregation: str) -> float:
    """Eq. 5 (neuron: per unit, mean over samples), 6 (sample: per sample, mean over units) and 7
    (both), with the hinge (b - .)^+."""
    n, k = log_sigma.shape
    s = log_sigma.double().tolist()
    if aggregation == "neuron":
        return sum(max(b - sum(s[i][j] for i in range(n)) / n, 0.0) for j in range(k)) / k
    if aggregation == "sample":
        return sum(max(b - sum(s[i][j] for j in range(k)) / k, 0.0) for i in range(n)) / n
    return sum(max(b - s[i][j], 0.0) for i in range(n) for j in range(k)) / (n * k)


def omega_gradient(log_sigma: torch.Tensor, b: float, aggregation: str, step: float = 1e-6) -> torch.Tensor:
    """d Omega / d log sigma_ij by central finite differences of `omega`, entry by entry."""
    n, k = log_sigma.shape
    grad = torch.zeros(n, k, dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            up, down = log_sigma.double().clone(), log_sigma.double().clone()
            up[i, j] += step
            down[i, j] -= step
            grad[i, j] = (omega(up, b, aggregation) - omega(down, b, aggregation)) / (2 * step)
    return grad


def hinge_active(log_sigma: torch.Tensor, b: float, aggregation: str) -> tuple[int, int]:
    """(active, all) hinge terms of Eq. 5, 6 or 7: a term is active where b exceeds its mean."""
    n, k = log_sigma.shape
    s = log_sigma.double().tolist()
    if aggregation == "neuron":
        means = [sum(s[i][j] for i in range(n)) / n for j in range(k)]
    elif aggregation == "sample":
        means = [sum(s[i][j] for j in range(k)) / k for i in range(n)]
    else:
        means = [s[i][j] for i in range(n) for j in range(k)]
    return sum(b - m > 0 for m in means), len(means)


def vib_kl(mu: torch.Tensor, sigma: torch.Tensor) -> float:
    """mean over samples of sum over units of log(1/s) + (s^2 + m^2)/2 - 1/2 (Gaussian KL to N(0, 1))."""
    n, k = mu.shape
    return sum(-math.log(float(sigma[i, j])) + (float(sigma[i, j]) ** 2 + float(mu[i, j]) ** 2) / 2 - 0.5
               for i in range(n) for j in range(k)) / n


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _clip(p: float, eps: float = 1e-7) -> float:
    return min(max(p, eps), 1 - eps)


def bootstrap(logits: torch.Tensor, y: torch.Tensor, beta: float, hard: bool) -> float:
    """Reed et al.: -sum_k (beta t_k + (1 - beta) q_k) log q_k, q the softmax (soft) or the one-hot
    of its argmax (hard) in the target; mean over the batch."""
    total = 0.0
    for b in range(logits.shape[0]):
        q = [_clip(p) for p in _softmax(logits[b].double().tolist())]
        best = max(range(len(q)), key=lambda c: q[c])
        for c in range(len(q)):
            target = (1.0 if c == int(y[b]) else 0.0) * beta + (1 - beta) * ((1.0 if c == best else 0.0) if hard else q[c])
            total -= target * math.log(q[c])
    return total / logits.shape[0]


def forward_loss(logits: torch.Tensor, y: torch.Tensor, T: torch.Tensor) -> float:
    """Patrini et al.: -log sum_i p(i | x) T[i, y], p the clipped softmax; mean over the batch."""
    total = 0.0
    for b in range(logits.shape[0]):
        p = [_clip(v) for v in _softmax(logits[b].double().tolist())]
        total -= math.log(sum(p[i] * float(T[i, int(y[b])]) for i in range(len(p))))
    return total / logits.shape[0]


def percentile_higher(values: list[float], q: float) -> float:
    """The q-th percentile by numpy's 'higher' rule: sorted value at index ceil(q/100 * (n - 1))."""
    s = sorted(values)
    return s[math.ceil(q / 100 * (len(s) - 1) - 1e-12)]


def estimate_transition(probs: torch.Tensor, q: float) -> torch.Tensor:
    """T[i] = probs of the anchor of class i: the example with the largest p_i once values at or
    above the q-th percentile of p_i are discarded (q = 100: the largest p_i)."""
    n, c = probs.shape
    T = torch.zeros(c, c, dtype=torch.float64)
    for i in range(c):
        col = [float(probs[b, i]) for b in range(n)]
        cut = percentile_higher(col, q) if q < 100 else math.inf
        best, best_value = None, -1.0
        for b in range(n):
            v = col[b] if col[b] < cut else 0.0
            if v > best_value:
                best, best_value = b, v
        for j in range(c):
            T[i, j] = float(probs[best, j])
    return T


def eot_fgsm(net, x: torch.Tensor, y: torch.Tensor, eps_budget: float, draws: list[dict], h: float = 1e-5):
    """x + eps * sign(mean over draws of dCE/dx), the gradient of each draw (its noise given) by
    central finite differences of `forward`, input by input; clipped to [0, 1]."""
    flat = x.reshape(x.shape[0], -1).double()
    out = flat.clone()
    for b in range(x.shape[0]):
        for i in range(flat.shape[1]):
            g = 0.0
            for noise in draws:
                one = {k: v[b:b + 1] for k, v in noise.items()} if noise else None
                up, down = flat[b].clone(), flat[b].clone()
                up[i] += h
                down[i] -= h
                lu = forward(net, up.reshape(1, *x.shape[1:]), one)[0][0].tolist()
                ld = forward(net, down.reshape(1, *x.shape[1:]), one)[0][0].tolist()
                ce = [-math.log(_softmax(v)[int(y[b])]) for v in (lu, ld)]
                g += (ce[0] - ce[1]) / (2 * h)
            out[b, i] = min(max(float(flat[b, i]) + eps_budget * (1 if g > 0 else -1 if g < 0 else 0), 0.0), 1.0)
    return out.reshape(x.shape)
