"""A deep ensemble: a few small MLPs with Gaussian heads, trained together, full batch.

Each member maps inputs to a mean and a log-variance per output and is trained on a bootstrap
resample of the data with the Gaussian negative log-likelihood. The ensemble's prediction is the
mixture's mean and standard deviation: member spread (epistemic) plus mean predicted noise
(aleatoric). Members are stored as batched weight tensors, so all of them train and predict in
one pass of batched matrix products. Predictions are differentiable in the inputs.
"""

from __future__ import annotations

import hashlib
import math

import torch

__all__ = ["DeepEnsemble", "default_device"]


def default_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DeepEnsemble:
    """`n_members` SiLU MLPs with Gaussian NLL heads on bootstrap resamples; deterministic from `seed`.

    fit(X [n, d], Y [n, m]) standardizes Y (and, internally, X); predict(X [..., d]) returns mean and
    std [..., m] in Y's units, differentiable in X.
    """

    def __init__(self, n_members: int = 5, hidden: tuple[int, ...] = (64, 64), epochs: int = 300,
                 lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0, device: str | None = None):
        self.n_members = int(n_members)
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.device = default_device(device)
        self.dtype = torch.float32
        self.version = "unfitted"
        self._weights: list[torch.Tensor] = []
        self._biases: list[torch.Tensor] = []

    # --- the batched network ------------------------------------------------------------------
    def _init_params(self, d: int, m: int, gen: torch.Generator) -> None:
        sizes = [d, *self.hidden, 2 * m]
        self._weights, self._biases = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(self.n_members, fan_in, fan_out, generator=gen, dtype=self.dtype) * 2 - 1) * bound
            b = (torch.rand(self.n_members, 1, fan_out, generator=gen, dtype=self.dtype) * 2 - 1) * bound
            self._weights.append(w.to(self.device).requires_grad_(True))
            self._biases.append(b.to(self.device).requires_grad_(True))

    def _forward(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Z [E, n, d] standardized inputs -> mean, log-variance [E, n, m] in standardized units."""
        h = Z
        last = len(self._weights) - 1
        for i, (w, b) in enumerate(zip(self._weights, self._biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.nn.functional.silu(h)
        mean, raw = h.chunk(2, dim=-1)
        logvar = raw.clamp(-10.0, 4.0)
        return mean, logvar

    # --- public API ---------------------------------------------------------------------------
    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> "DeepEnsemble":
        X = torch.as_tensor(X, dtype=self.dtype, device=self.device)
        Y = torch.as_tensor(Y, dtype=self.dtype, device=self.device)
        if X.ndim == 1:
            X = X[:, None]
        if Y.ndim == 1:
            Y = Y[:, None]
        n, d = X.shape
        m = Y.shape[1]
        self._x_mean = X.mean(0)
        self._x_std = X.std(0, unbiased=False).clamp_min(1e-6) if n > 1 else torch.ones(d, device=self.device)
        self._y_mean = Y.mean(0)
        self._y_std = Y.std(0, unbiased=False).clamp_min(1e-9) if n > 1 else torch.ones(m, device=self.device)
        Zx = (X - self._x_mean) / self._x_std
        Zy = (Y - self._y_mean) / self._y_std

        gen = torch.Generator().manual_seed(self.seed)
        self._init_params(d, m, gen)
        # bootstrap resamples as per-member counts, so every member still sees all points once in a tensor
        idx = torch.randint(0, n, (self.n_members, n), generator=gen)
        counts = torch.zeros(self.n_members, n, dtype=self.dtype)
        counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=self.dtype))
        if n < 8:  # a bootstrap of a handful of points drops too much; weight all, jitter the rest
            counts = 1.0 + 0.5 * (counts - 1.0)
        weights = (counts / counts.sum(1, keepdim=True)).to(self.device)[..., None]  # [E, n, 1]

        Zx_e = Zx.expand(self.n_members, n, d)
        params = [*self._weights, *self._biases]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad(set_to_none=True)
            mean, logvar = self._forward(Zx_e)
            nll = 0.5 * (logvar + (Zy - mean) ** 2 * torch.exp(-logvar))
            loss = (weights * nll).sum() / m
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)

        digest = hashlib.sha1()
        digest.update(X.detach().cpu().numpy().tobytes())
        digest.update(Y.detach().cpu().numpy().tobytes())
        digest.update(repr((self.n_members, self.hidden, self.epochs, self.lr, self.weight_decay,
                            self.seed)).encode())
        self.version = digest.hexdigest()[:12]
        return self

    def predict(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._weights:
            raise RuntimeError("DeepEnsemble.predict called before fit")
        X = torch.as_tensor(X, device=self.device)
        out_dtype = X.dtype if X.is_floating_point() else self.dtype
        X = X.to(self.dtype)
        lead = X.shape[:-1]
        Z = ((X - self._x_mean) / self._x_std).reshape(1, -1, X.shape[-1]).expand(self.n_members, -1, -1)
        mean, logvar = self._forward(Z)  # [E, N, m]
        mu = mean.mean(0)
        var = mean.var(0, unbiased=False) + torch.exp(logvar).mean(0)
        std = var.clamp_min(1e-12).sqrt()
        mu = mu * self._y_std + self._y_mean
        std = std * self._y_std
        m = mu.shape[-1]
        return mu.reshape(*lead, m).to(out_dtype), std.reshape(*lead, m).to(out_dtype)
