"""GNN design spaces (GraphGym): designs, spaces of designs, and compute-budget matching."""

from gnnjax.design.budget import match_dim_inner, param_count, proxy_dim_in, reference_budget
from gnnjax.design.design import (DESIGN_V1, DESIGN_V2, FIELDS, Design, fit_config, optim_config,
                                  validate_field)
from gnnjax.design.spaces import (AUTOTRANSFER, GRAPHGYM_ROUND1, GRAPHGYM_ROUND2, SPACES,
                                  DesignSpace, get_space, load_space)

__all__ = [
    "AUTOTRANSFER", "DESIGN_V1", "DESIGN_V2", "FIELDS", "GRAPHGYM_ROUND1", "GRAPHGYM_ROUND2",
    "SPACES", "Design", "DesignSpace", "fit_config", "get_space", "load_space",
    "match_dim_inner", "optim_config", "param_count", "proxy_dim_in", "reference_budget",
    "validate_field",
]
