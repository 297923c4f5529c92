"""Per-sample loop O2CAP memory written from the authors' code (github:Terminator8758/O2CAP): the oracle for
tests/test_camera_memory.py.

Mirrors ``train.py`` (proxy labels, ``proxy_label_dict``, ``proxy_cam_dict``, proxy centres) and
``reid/models/o2cap.py`` (``CameraAwareMemory.forward`` and its three losses, ``ExemplarMemory``'s per-sample
momentum update) line by line, with Python loops over cameras and samples. It shares no code with
``hhcl.camera_memory``. Where the authors' code cannot run, the oracle does what hhcl names as its difference:
the intra loss reads the sample's camera (theirs indexes a 0-d tensor); cameras without proxies are skipped in
the online loss; with fewer than ``bg_knn + posK`` proxies the online target covers the proxies there are.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class LoopO2CAP:
    def __init__(
        self,
        features: Tensor,
        pseudo_labels: Tensor,
        all_img_cams: Tensor,
        *,
        temp: float = 0.07,
        momentum: float = 0.2,
        intra: float = 0.0,
        offline: float = 1.0,
        online: float = 1.0,
        bg_knn: int = 50,
        pos_k: int = 3,
        balance_w: float = 0.15,
    ) -> None:
        self.temp, self.momentum, self.bg_knn, self.posK, self.balance_w = temp, momentum, bg_knn, pos_k, balance_w
        self.w_intra, self.w_offline, self.w_online = intra, offline, online
        pseudo = pseudo_labels.numpy()
        cams = all_img_cams.numpy()
        # train.py: proxy labels, cluster by cluster, cameras in np.unique order
        proxy_labels = -1 * np.ones(pseudo.shape, pseudo.dtype)
        cnt = 0
        for i in range(0, int(pseudo.max() + 1)):
            inds = np.where(pseudo == i)[0]
            local_cams = cams[inds]
            for cc in np.unique(local_cams):
                pc_inds = np.where(local_cams == cc)[0]
                proxy_labels[inds[pc_inds]] = cnt
                cnt += 1
        self.all_pseudo_label = torch.from_numpy(pseudo).long()
        self.all_proxy_label = torch.from_numpy(proxy_labels).long()
        self.all_img_cams = all_img_cams.long()
        self.unique_cameras = torch.unique(self.all_img_cams)
        self.proxy_label_dict = {
            c: torch.unique(self.all_proxy_label[self.all_pseudo_label == c])
            for c in range(int(self.all_pseudo_label.max() + 1))
        }
        self.proxy_cam_dict = {}
        for cc in self.unique_cameras:
            inds = torch.unique(self.all_proxy_label[(self.all_img_cams == cc) & (self.all_proxy_label >= 0)])
            if len(inds):  # hhcl's difference 3: a camera without proxies is skipped
                self.proxy_cam_dict[int(cc)] = inds
        centres = torch.zeros(cnt, features.shape[1])
        for lbl in range(cnt):
            ind = torch.nonzero(self.all_proxy_label == lbl).squeeze(-1)
            centres[lbl, :] = features[ind].mean(0)
        self.global_memory = F.normalize(centres.detach(), dim=1)

    def loss(self, features: Tensor, index_targets: Tensor, cams: Tensor) -> tuple[Tensor, dict[str, float]]:
        """CameraAwareMemory.forward: summed over the batch's cameras, each a mean over its samples."""
        pseudo_y = self.all_pseudo_label[index_targets]
        proxy_targets = self.all_proxy_label[index_targets]
        score = features.mm(self.global_memory.t())
        inputs = score / self.temp
        intra_loss, offline_loss, online_loss = 0, 0, 0
        for cc in torch.unique(cams):
            inds = torch.nonzero(cams == cc).squeeze(-1)
            percam_inputs = inputs[inds]
            percam_y = pseudo_y[inds]
            pc_prx_target = proxy_targets[inds]
            if self.w_intra > 0:
                intra_loss += self.get_intra_loss_all_cams(percam_inputs, pc_prx_target, cc)
            if self.w_offline > 0:
                offline_loss += self.get_proxy_associate_loss(percam_inputs, percam_y)
            if self.w_online > 0:
                temp_score = score[inds].detach().clone()
                online_loss += self.get_proxy_cam_wise_nn_enhance_loss(temp_score, percam_inputs, pc_prx_target)
        loss = self.w_intra * intra_loss + self.w_offline * offline_loss + self.w_online * online_loss
        parts = {"loss_intra": intra_loss, "loss_offline": offline_loss, "loss_online": online_loss}
        return loss, {k: float(v.detach()) for k, v in parts.items() if not isinstance(v, int)}

    def get_intra_loss_all_cams(self, inputs: Tensor, target_proxy: Tensor, cam: Tensor) -> Tensor:
        loss = 0
        for i in range(len(inputs)):
            intra_prxs = self.proxy_cam_dict[int(cam)]  # the authors index cams[i] of this scalar
            sel_input = inputs[i, intra_prxs]
            sel_target = torch.zeros((len(sel_input)), dtype=inputs.dtype)
            sel_target[intra_prxs == target_proxy[i]] = 1.0
            loss += -1.0 * (F.log_softmax(sel_input.unsqueeze(0), dim=1) * sel_target.unsqueeze(0)).sum()
        return loss / len(inputs)

    def get_proxy_associate_loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        temp_inputs = inputs.detach().clone()
        loss = 0
        for i in range(len(inputs)):
            pos_ind = self.proxy_label_dict[int(targets[i])]
            temp_inputs[i, pos_ind] = 10000.0
            sel_ind = torch.sort(temp_inputs[i])[1][-self.bg_knn - len(pos_ind):]
            sel_input = inputs[i, sel_ind]
            sel_target = torch.zeros((len(sel_input)), dtype=sel_input.dtype)
            sel_target[-len(pos_ind):] = 1.0 / len(pos_ind)
            loss += -1.0 * (F.log_softmax(sel_input.unsqueeze(0), dim=1) * sel_target.unsqueeze(0)).sum()
        return loss / len(inputs)

    def get_proxy_cam_wise_nn_enhance_loss(self, temp_score: Tensor, inputs: Tensor, proxy_targets: Tensor) -> Tensor:
        temp_memory = self.global_memory.detach().clone()
        n_sel = min(self.bg_knn + self.posK, temp_memory.shape[0])  # hhcl's difference 2 (theirs: bg_knn + posK)
        n_pos = min(self.posK, n_sel)
        soft_target = torch.zeros(n_sel, dtype=torch.float)
        soft_target[-n_pos:] = 1.0 / n_pos
        loss = 0
        for i in range(len(inputs)):
            lbl = proxy_targets[i]
            sims = self.balance_w * temp_score[i] + (1 - self.balance_w) * torch.matmul(
                temp_memory[lbl], temp_memory.t()
            )
            all_cam_tops = []
            for cc in self.unique_cameras:
                if int(cc) not in self.proxy_cam_dict:
                    continue
                proxy_inds = self.proxy_cam_dict[int(cc)]
                max_ind = sims[proxy_inds].argmax()
                all_cam_tops.append(proxy_inds[max_ind])
            all_cam_tops = torch.tensor(all_cam_tops)
            sel_ind = torch.argsort(sims[all_cam_tops])[-self.posK:]
            sims[all_cam_tops[sel_ind]] = 10000
            top_inds = torch.sort(sims)[1][-n_sel:]
            sel_input = inputs[i, top_inds]
            loss += -1.0 * (F.log_softmax(sel_input.unsqueeze(0), dim=1) * soft_target.unsqueeze(0)).sum()
        return loss / len(inputs)

    def update(self, features: Tensor, index_targets: Tensor) -> None:
        """ExemplarMemory.backward's momentum update, one sample at a time in batch order."""
        for x, y in zip(features.detach(), self.all_proxy_label[index_targets], strict=True):
            self.global_memory[y] = self.momentum * self.global_memory[y] + (1.0 - self.momentum) * x
            self.global_memory[y] /= self.global_memory[y].norm()
