"""min and max whose derivative at a tie is 1/2 to each side (SPEC sections 3 and 6).

``torch.minimum`` sends the whole gradient to one side at a tie, so a loss built from it has a
non-zero gradient at its own minimum. These select the same values but split the gradient:
``d tie_min(a, b)/da`` is 1 where ``a < b``, 0 where ``a > b`` and 1/2 where ``a == b``. They are
plain ``torch.where`` expressions, so autograd, broadcasting and ``torch.compile`` need nothing
special.
"""

import torch


def tie_min(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum with the 1/2 tie convention for the gradient."""
    return torch.where(a < b, a, torch.where(b < a, b, 0.5 * a + 0.5 * b))


def tie_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum with the 1/2 tie convention for the gradient."""
    return torch.where(a > b, a, torch.where(b > a, b, 0.5 * a + 0.5 * b))
