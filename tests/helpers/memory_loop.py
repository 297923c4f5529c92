"""Per-sample loop memory written from the reference doc (1.2 step 8): the oracle for tests/test_memory*.py.

Deliberately naive: Python loops over samples and clusters, one dot product at a time, the way the
reference ``cm.py`` does it. It shares no code with ``hhcl.memory``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class LoopMemory:
    def __init__(
        self,
        rows: Tensor,
        *,
        mode: str,
        num_clusters: int,
        temp: float = 0.05,
        momentum: float = 0.1,
        hard_weight: float = 0.5,
        smooth: float = 0.0,
        num_instances: int = 16,
        loss_form: str = "reference",
    ) -> None:
        self.M = rows.detach().clone().float()
        self.mode, self.C, self.temp, self.m = mode, num_clusters, temp, momentum
        self.hw, self.smooth, self.P, self.loss_form = hard_weight, smooth, num_instances, loss_form

    def _ce(self, logit: Tensor, t: int) -> Tensor:
        """CE of one sample's logits; with smoothing, the reference's top-k / uniform target."""
        logp = logit - torch.logsumexp(logit, dim=0)
        if self.smooth <= 0:
            return -logp[t]
        n = logit.shape[0]
        k = n // 50
        if k > 1:
            target = torch.zeros(n)
            target[t] = 0.9
            for j in torch.argsort(logp.detach(), descending=True)[:k].tolist():
                target[j] += 0.1 / k
        else:
            target = torch.full((n,), 0.1 / n)
            target[t] += 0.9
        return -(target * logp).sum()

    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        C, tau, hw = self.C, self.temp, self.hw
        terms_a, terms_b = [], []
        for i in range(f.shape[0]):
            t = int(y[i])
            logit = f[i] @ self.M.t()
            if self.mode in ("CM", "CMhard"):
                terms_a.append(self._ce(logit / tau, t))
            elif self.mode == "CMhybrid":
                terms_a.append(self._ce(logit[:C] / tau, t))
                terms_b.append(self._ce(logit[C:] / tau, t))
            else:
                pos = neg = logit[C : 2 * C]
                for k in range(2, self.P + 1):
                    slot = logit[k * C : (k + 1) * C]
                    pos, neg = torch.minimum(pos, slot), torch.maximum(neg, slot)
                hard = torch.cat([neg[:t], pos[t : t + 1], neg[t + 1 :]])
                terms_a.append(self._ce(logit[:C] / tau, t))
                terms_b.append(self._ce(hard / tau, t))
        a = torch.stack(terms_a).mean()
        if self.mode in ("CM", "CMhard"):
            return a
        b = torch.stack(terms_b).mean()
        if self.mode == "CMhybrid" and self.loss_form == "reference":
            return hw * (a + (1 - hw) * b)
        return hw * a + (1 - hw) * b

    def _blend(self, row: int, x: Tensor) -> None:
        self.M[row] = self.M[row] * self.m + (1 - self.m) * x
        self.M[row] /= self.M[row].norm()

    @torch.no_grad()
    def update(self, f: Tensor, y: Tensor) -> None:
        f = f.detach().float()
        if self.mode == "CM":
            for x, c in zip(f, y.tolist(), strict=True):
                self._blend(c, x)
            return
        groups: dict[int, list[Tensor]] = {}
        for x, c in zip(f, y.tolist(), strict=True):
            groups.setdefault(c, []).append(x)
        for c, xs in groups.items():
            if self.mode in ("CMhard", "CMhybrid"):
                sims = [x.unsqueeze(0).mm(self.M[c].unsqueeze(0).t())[0][0].cpu().numpy() for x in xs]
                self._blend(c, xs[int(np.argmin(np.array(sims)))])
            if self.mode == "CMhybrid":
                self._blend(c + self.C, torch.stack(xs).mean(0))
            if self.mode == "CMhybrid_v2":
                for k, x in enumerate(xs, start=1):
                    self.M[c + k * self.C] = x
                self._blend(c, torch.stack(xs).mean(0))
