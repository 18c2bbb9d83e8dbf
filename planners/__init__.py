"""Design strategies (random, Sobol; BoTorch and gradient design later) and synthesis routes.

A strategy knows nothing of Ray: it maps what has been measured to what to try next.
"""
