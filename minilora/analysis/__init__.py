"""Analysis of trained adapters: what the LoRA paper's §7 measures (Hu et al., 2021).

  subspace.py   φ, the normalized subspace similarity of Eq. 4 (and its random floor), and the
                amplification factor ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F of §7.3 / Table 7

Host-side NumPy in float64: the inputs (NumPy or CuPy arrays) are copied to the host once.
"""
from .subspace import (Amplification, amplification, phi, phi_grid, phi_random_expected,
                       phi_random_grid, project, random_orthonormal, right_singular_vectors)

__all__ = ["Amplification", "amplification", "phi", "phi_grid", "phi_random_expected",
           "phi_random_grid", "project", "random_orthonormal", "right_singular_vectors"]
