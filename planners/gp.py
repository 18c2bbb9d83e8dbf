"""A Gaussian process with the DeepEnsemble's interface, for the gradient designer on few points.

One SingleTaskGP per output (BoTorch; the Matérn kernel of the Bayesian designer), fitted by
marginal likelihood. `predict` returns mean and sd, differentiable in the inputs, so the gradient
designer can descend it as it descends an ensemble. With a handful of measurements in several
dimensions a GP interpolates where a small ensemble of MLPs overshoots.
"""

from __future__ import annotations

import hashlib

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

from athanor.planners.surrogates import matern_kernel


class GaussianProcess:
    """fit(X [n, d], Y [n, m]) -> self; predict(X [..., d]) -> mean, sd [..., m]; double precision."""

    dtype = torch.float64

    def __init__(self, seed: int = 0, **_options):
        self.seed = int(seed)
        self.version = "unfitted"
        self._models: list[SingleTaskGP] = []

    def fit(self, X: torch.Tensor, Y: torch.Tensor) -> "GaussianProcess":
        X, Y = torch.as_tensor(X, dtype=self.dtype), torch.as_tensor(Y, dtype=self.dtype)
        Y = Y[:, None] if Y.ndim == 1 else Y
        torch.manual_seed(self.seed)  # the fit's random restarts
        self._models = []
        for j in range(Y.shape[1]):
            model = SingleTaskGP(X, Y[:, j:j + 1], covar_module=matern_kernel(X.shape[-1]),
                                 outcome_transform=Standardize(m=1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            self._models.append(model.eval())
        digest = hashlib.sha1(X.numpy().tobytes() + Y.numpy().tobytes() + repr(self.seed).encode())
        self.version = "gp-" + digest.hexdigest()[:12]
        return self

    def predict(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._models:
            raise RuntimeError("GaussianProcess.predict called before fit")
        X = torch.as_tensor(X)
        out_dtype, lead = X.dtype, X.shape[:-1]
        flat = X.reshape(-1, X.shape[-1]).to(self.dtype)
        means, sds = [], []
        for model in self._models:
            posterior = model.posterior(flat)
            means.append(posterior.mean[..., 0])
            sds.append(posterior.variance[..., 0].clamp_min(1e-12).sqrt())
        mean, sd = torch.stack(means, -1), torch.stack(sds, -1)
        return mean.reshape(*lead, -1).to(out_dtype), sd.reshape(*lead, -1).to(out_dtype)
