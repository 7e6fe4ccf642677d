"""A linear probe as the head's starting point: fit the fresh classifier on frozen features first.

With few labels, a randomly initialised head's large early gradients distort the pretrained
features before the head is any good; fitting the head to convergence on the frozen features
first (multinomial logistic regression) and only then fine-tuning everything keeps them
(linear probing, then fine-tuning: Kumar et al., ICLR 2022).
"""

from __future__ import annotations

import logging

import torch

from nicheloop.blobs import BlobStore
from nicheloop.model import NicheModel
from training.data import Example
from training.evaluate import predict_all

log = logging.getLogger(__name__)


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, *, weight_decay: float) -> torch.nn.Linear:
    """Multinomial logistic regression with an L2 penalty, to convergence (L-BFGS)."""
    head = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def probe_head(
    model: NicheModel, blobs: BlobStore, examples: list[Example], *, weight_decay: float, batch_size: int = 64
) -> float:
    """Set ``model``'s classifier to a linear probe fitted on ``examples``; returns its training accuracy.

    Leaves the head as it is (and says so) when it is not a plain linear layer.
    """
    head = model.net.get_classifier()
    if not isinstance(head, torch.nn.Linear) or not examples:
        log.warning("no linear probe: the head is a %s", type(head).__name__)
        return float("nan")
    preds = predict_all(model, blobs, examples, batch_size=batch_size)
    x, y = torch.from_numpy(preds.embeddings).float(), torch.from_numpy(preds.y).long()
    probe = fit_linear(x, y, model.num_classes, weight_decay=weight_decay)
    with torch.no_grad():
        head.weight.copy_(probe.weight.to(head.weight.device))
        head.bias.copy_(probe.bias.to(head.bias.device))
        return float((probe(x).argmax(1) == y).float().mean())
