"""Pruning methods, registered by name; the CLI lists and runs them through `get_method`.

Usage (caller):
    method = get_method("lamp")
    result = method.prune(model, ratio, ctx, **options)  # model is copied, never modified
    ctx.finetune(result.model, epochs)                    # masks stay attached: pruned weights stay zero
    make_permanent(result.model)                          # plain `weight` tensors with zeros
One file per method; importing this package registers all of them.
"""

from . import (  # noqa: F401  (imported to register the methods)
    fm_norm,
    global_l1,
    gmp,
    han,
    hybrid,
    lamp,
    layer_l1,
    li_filters,
    random_channels,
    random_masks,
    thinet,
)
from .base import (
    PruneContext,
    PruneResult,
    PruningMethod,
    get_method,
    known_methods,
    register_method,
    validate_ratio,
)
from .channels import channel_ratio_for_param_reduction, channel_scope, remove_channels
from .iterative import RoundPlan, iterative_prune  # noqa: F401  (public: iterative rounds for any method)
from .layers import channels_per_layer, prunable_layers
from .masks import count_nonzero_params, global_sparsity, make_permanent, reattach_masks, sparsity_report

__all__ = [
    "PruneContext",
    "PruneResult",
    "PruningMethod",
    "channel_ratio_for_param_reduction",
    "channel_scope",
    "channels_per_layer",
    "count_nonzero_params",
    "get_method",
    "global_sparsity",
    "known_methods",
    "make_permanent",
    "prunable_layers",
    "reattach_masks",
    "register_method",
    "remove_channels",
    "sparsity_report",
    "validate_ratio",
]
