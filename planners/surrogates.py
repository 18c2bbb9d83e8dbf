"""The Bayesian designer's surrogate portfolio, and how a campaign's own data chooses among it.

A recipe is a GP kernel with its prior, whether the outputs are warped, and whether composition
fractions are. No one recipe wins on every dataset (benchmarks/README.md, the suite): a rough Matérn
kernel suits some pools, BoTorch's smooth RBF default others; warping a skewed output helps some and
misleads others; warping fractions found P3HT's optimum sooner but kept the OPV blends' designer
away from the simplex's edges, where their best blends lie.

So the designer fits each recipe its options leave open and keeps the one whose leave-one-out
predictions explain the measurements best: the sum over measured points of log p(y_i | the others),
in measured units (the warp's Jacobian included), so warped and unwarped recipes compete on one
scale. The LOO densities of an exact GP come in closed form from one Cholesky factor (Rasmussen &
Williams 2006, §5.4.2). By default only fraction warping is left open, on pools of fractions:
opening the kernel and the output warp too lost on three of four process pools of the suite's
development half.

Choosing costs a fit per recipe, so it is done at checkpoints of the number of measurements
(geometric, every ~25 %) and the choice is kept between them; fits between checkpoints start from the
checkpoint's hyperparameters, which halves their cost (the Kumaraswamy input warp converges slowly
from the identity). Both depend only on the measurements up to the checkpoint, so a designer rebuilt
after a crash proposes as the one it replaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Warp
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior, LogNormalPrior

KERNELS = ("matern", "rbf")


@dataclass(frozen=True)
class Recipe:
    kernel: str  # one of KERNELS
    warp_outputs: bool  # Yeo-Johnson on the outputs (OutputWarp)
    warp_inputs: bool = False  # Kumaraswamy on composition fractions (composition_warp)

    @property
    def name(self) -> str:
        return self.kernel + ("+outwarp" if self.warp_outputs else "") + ("+inwarp" if self.warp_inputs else "")


def matern_kernel(dim: int) -> ScaleKernel:
    """Matérn-5/2 ARD kernel with a dimension-scaled Gamma lengthscale prior (the mode of BoTorch's
    dimension-scaled prior, lighter tails); on the Liang 2021 pools it found the top rows sooner
    than BoTorch's RBF default (benchmarks/README.md)."""
    concentration = 3.0
    rate = (concentration - 1) / math.exp(math.sqrt(2) - 3) / math.sqrt(dim)
    prior = GammaPrior(concentration, rate)
    base = MaternKernel(nu=2.5, ard_num_dims=dim, lengthscale_prior=prior,
                        lengthscale_constraint=GreaterThan(2.5e-2, transform=None, initial_value=prior.mode))
    return ScaleKernel(base)


def covar_module(kernel: str, dim: int):
    if kernel == "matern":
        return matern_kernel(dim)
    if kernel == "rbf":  # BoTorch's own default (Hvarfner et al. 2024): RBF, LogNormal prior scaled by sqrt(d)
        return get_covar_module_with_dim_scaled_prior(ard_num_dims=dim)
    raise ValueError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)}")


def composition_warp(dim: int, fraction_dims: Sequence[int]) -> Warp | None:
    """Kumaraswamy input warping of composition fractions (Snoek et al. 2014).

    Properties of materials often change fastest near the simplex's edges (dilute dopants, a phase
    boundary near a pure end member); a learned warp lets a stationary kernel stretch those regions.
    Measured on the Liang 2021 pools (benchmarks/README.md): Perovskite EF 1.03 -> 1.40 and P3HT
    2.59 -> 2.85; on process-parameter pools (AgNP, CrossedBarrel) warping every input lost ground,
    so only fractions are warped.
    """
    if not fraction_dims:
        return None
    prior = LogNormalPrior(0.0, 0.75**0.5)  # BoTorch's tutorial default: centred on the identity
    return Warp(d=dim, indices=list(fraction_dims), concentration1_prior=prior, concentration0_prior=prior)


def fit_gp(X: torch.Tensor, y: torch.Tensor, kernel: str, fraction_dims: Sequence[int] = (),
           init: dict[str, torch.Tensor] | None = None) -> SingleTaskGP:
    """One output's GP, fitted by marginal likelihood; `y` is [n, 1] in the (warped) units modelled.
    `init`: hyperparameters to start from (`hyperparameters(model)` of an earlier fit)."""
    model = SingleTaskGP(X, y, covar_module=covar_module(kernel, X.shape[-1]),
                         input_transform=composition_warp(X.shape[-1], fraction_dims),
                         outcome_transform=Standardize(m=1))
    if init is not None:
        model.load_state_dict(init, strict=False)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


def hyperparameters(model: SingleTaskGP) -> dict[str, torch.Tensor]:
    """The fitted state to start a later fit from; the outcome transform is refitted to each data."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("outcome_transform")}


def loo_log_density(model: SingleTaskGP) -> np.ndarray:
    """log p(z_i | z_-i) per training point, in the units the model was given (before Standardize)."""
    model.train()
    try:
        with torch.no_grad():
            prior = model.likelihood(model(*model.train_inputs))
            K, resid = prior.covariance_matrix, model.train_targets - prior.mean
            K_inv = torch.cholesky_inverse(torch.linalg.cholesky(K))
            precision = K_inv.diagonal()
            loo_resid, loo_var = (K_inv @ resid) / precision, 1 / precision
            log_p = -0.5 * (loo_resid**2 / loo_var + loo_var.log() + math.log(2 * math.pi))
            log_p = log_p - model.outcome_transform.stdvs.log().squeeze()
    finally:
        model.eval()
    return log_p.numpy()


def checkpoint(n: int, first: int) -> int:
    """The last checkpoint at or below n: first, then ~25 % more measurements each time."""
    point = first
    while True:
        following = max(point + 1, math.ceil(point * 1.25))
        if following > n:
            return point
        point = following
