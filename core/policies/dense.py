"""Dense attention: every past token is read. The reference every method is measured against."""

from dataclasses import dataclass

from core.policies.base import Policy


@dataclass(eq=False)
class DensePolicy(Policy):
    name = "dense"
    description = "Full attention over the whole KV cache (no sparsity)."

    @property
    def is_dense(self) -> bool:
        return True
