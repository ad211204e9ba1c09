"""An attempt for benchmarks/coco_yesno.py: new residual heads over the frozen towers, trained per fold on two
objectives at once (the issue's "transfer image-text alignment" route):

    captions (Flickr8k dev + COCO-mini): symmetric InfoNCE, an image's other captions count as positives
    yes/no training rows:                 BCE on a * cos(image, key phrase) + b

    image = normalize(ConSE(image) + Linear(dropout(sqrt(pooled 1280))))   text = normalize(t + Linear(dropout(t)))

Both heads start at zero, i.e. at the `lite` (ConSE) space. Without the caption objective the same heads score
below the z-score method (the yes/no rows alone are too few); with it they reach about the shipped accuracy.
"""

from __future__ import annotations

import numpy as np


def train_and_score(data: dict, caps: dict, gi: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
                    steps: int = 400, lam: float = 1.0, seed: int = 0) -> np.ndarray:
    """p(yes) for rows ``te`` after training on rows ``tr`` plus all caption pairs. ``data``: image_pooled,
    image_conse, k_raw (per QA image / row); ``caps``: pooled, conse (per caption image), text, image (per caption)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def sq(a):
        return torch.from_numpy(np.sqrt(np.maximum(a, 0)).astype(np.float32))

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image = nn.Sequential(nn.Dropout(0.3), nn.Linear(1280, 384))
            self.text = nn.Sequential(nn.Dropout(0.3), nn.Linear(384, 384))
            for layer in (self.image[1], self.text[1]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            self.scale, self.a, self.b = (nn.Parameter(torch.tensor(v)) for v in (30.0, 10.0, 0.0))

        def img(self, pooled, conse):
            return F.normalize(conse + self.image(pooled), dim=-1)

        def txt(self, t):
            return F.normalize(t + self.text(t), dim=-1)

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cap_p, cap_c = sq(caps["pooled"]), torch.from_numpy(caps["conse"].astype(np.float32))
    cap_t, cap_i = torch.from_numpy(caps["text"].astype(np.float32)), torch.from_numpy(caps["image"])
    qa_p, qa_c = sq(data["image_pooled"]), torch.from_numpy(data["image_conse"].astype(np.float32))
    key, yt, rows_img = torch.from_numpy(data["k_raw"].astype(np.float32)), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(gi)
    train_rows = torch.from_numpy(np.asarray(tr))
    model = Heads()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    for _ in range(steps):
        model.train()
        b = torch.randint(0, len(cap_t), (256,), generator=g)
        ii = cap_i[b]
        logits = model.scale * model.img(cap_p[ii], cap_c[ii]) @ model.txt(cap_t[b]).T
        same = (ii[:, None] == ii[None, :]).float()
        loss = -((logits.log_softmax(1) * same / same.sum(1, keepdim=True)).sum(1).mean()
                 + (logits.log_softmax(0) * same / same.sum(0, keepdim=True)).sum(0).mean()) / 2
        r = train_rows[torch.randint(0, len(train_rows), (256,), generator=g)]
        s = (model.img(qa_p[rows_img[r]], qa_c[rows_img[r]]) * model.txt(key[r])).sum(-1)
        loss = loss + lam * F.binary_cross_entropy_with_logits(model.a * s + model.b, yt[r])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        r = torch.from_numpy(np.asarray(te))
        s = (model.img(qa_p[rows_img[r]], qa_c[rows_img[r]]) * model.txt(key[r])).sum(-1)
        return torch.sigmoid(model.a * s + model.b).numpy()
