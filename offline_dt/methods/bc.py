"""Behaviour cloning on the Decision Transformer's network: the worked example of a method.

The same network, data, windows and budget as ``dt`` (``offline_dt.methods.dt``), with the
returns-to-go tokens replaced by zeros in training and in acting, so the policy cannot
condition on the return. Against ``dt`` this isolates the effect of return conditioning
(Chen et al. 2021, Section 5.3 compares DT with %BC in the same spirit).
"""

from __future__ import annotations

import torch
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods.base import Method, register
from offline_dt.methods.dt import DTPolicy, action_loss


@register
class BC(Method):
    """``dt`` with the returns-to-go zeroed: plain behaviour cloning of the action."""

    name = "bc"
    description = "the Decision Transformer network with returns-to-go zeroed"
    graph_safe = True
    conditions_on_return = False
    attentions = ("window", "band")

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return action_loss(net, batch, torch.zeros_like(batch.returns_to_go)), {}

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False) -> DTPolicy:
        return DTPolicy(net, normalizer, None, kv_cache=kv_cache)  # zeros as returns-to-go
