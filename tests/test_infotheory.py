import math

import numpy as np
import pytest
import torch
from scipy import stats

from distreach.infotheory import entropy, kl, log_of, max_entropy
from distreach.units import from_unit, to_unit


def random_dists(n, v, seed, zeros=False):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(v, 0.3), size=n)
    if zeros:
        p[:, : v // 3] = 0
        p /= p.sum(1, keepdims=True)
    return p


@pytest.mark.parametrize("zeros", [False, True])
def test_entropy_and_kl_match_scipy(zeros):
    p = random_dists(5, 50, 0, zeros)
    q = random_dists(5, 50, 1)
    tp = torch.tensor(p, dtype=torch.float64)
    tq = torch.tensor(q, dtype=torch.float64)
    np.testing.assert_allclose(entropy(tp.log()).numpy(), stats.entropy(p, axis=1), rtol=1e-10)
    np.testing.assert_allclose(kl(tp, tq.log()).numpy(), stats.entropy(p, q, axis=1), rtol=1e-10)

    # log p given by the caller (a descent computes it once): the same values
    np.testing.assert_allclose(kl(tp, tq.log(), log_of(tp)).numpy(), stats.entropy(p, q, axis=1), rtol=1e-10)


def test_kl_in_fp32_is_torchs_kl_div_with_the_same_gradient():
    """The descents' loss: torch's kl_div summed over the vocabulary up to rounding, and the
    same gradient to log q bit for bit (-p), zero-probability targets included."""
    p = torch.tensor(random_dists(4, 3000, 4, zeros=True), dtype=torch.float32)
    logits = torch.randn(4, 3000, generator=torch.Generator().manual_seed(0)) * 4
    grads = []
    for loss_of in (lambda lq: kl(p, lq, log_of(p)), lambda lq: torch.nn.functional.kl_div(lq, p, reduction="none").sum(-1)):
        logq = torch.log_softmax(logits, -1).requires_grad_()
        loss = loss_of(logq)
        (loss * torch.arange(1.0, 5.0)).sum().backward()
        grads.append((loss.detach(), logq.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
    assert torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("scale", [1e-1, 3e-2])
def test_a_small_kl_over_a_large_vocabulary_keeps_its_precision_in_fp32(scale):
    """q near p over 262k tokens (entropy about 12 nats, KL 5e-3 and 5e-4 nats): the fp32 KL within 1e-4 of its value
    (computed in float64), not the rounding of two sums of about 12 nats each."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 262_144, generator=g, dtype=torch.float64) * 0.5
    logp64 = torch.log_softmax(logits, -1)
    logq64 = torch.log_softmax(logits + scale * torch.randn(4, 262_144, generator=g, dtype=torch.float64), -1)
    exact = (logp64.exp() * (logp64 - logq64)).sum(-1)
    p, logq = logp64.exp().float(), logq64.float()
    got = kl(p, logq, log_of(p)).double()
    assert (exact > 0).all() and ((got - exact).abs() / exact).max() < 1e-4
    # a zero probability where q is 0 too (log q = -inf: padding rows) contributes 0
    p0, logq0 = torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[math.log(0.5), math.log(0.5), -math.inf]])
    assert kl(p0, logq0).item() == 0.0
    # mixed dtypes compute in the wider one, a caller's log p included
    torch.testing.assert_close(kl(logp64.exp(), logq), kl(logp64.exp(), logq.double()))
    assert kl(p, logq, logp64).dtype == torch.float64


def test_kl_of_identical_is_zero_and_positive_otherwise():
    p = torch.tensor(random_dists(3, 20, 2))
    assert torch.allclose(kl(p, p.log()), torch.zeros(3, dtype=p.dtype), atol=1e-12)
    q = torch.tensor(random_dists(3, 20, 3))
    assert (kl(p, q.log()) > 0).all()


def test_units_round_trip():
    assert to_unit(math.log(2), "bits") == pytest.approx(1.0)
    assert from_unit(1.0, "bits") == pytest.approx(math.log(2))
    assert max_entropy(1024, "bits") == pytest.approx(10.0)
    assert to_unit(1.5, "nats") == 1.5
    with pytest.raises(ValueError, match="entropy unit"):
        to_unit(1.0, "bans")


def test_entropy_of_finite_log_probabilities_is_the_same_forward_and_backward():
    """The descents' entropy (finite=True) against the general one on the log_softmax of finite
    logits, peaked ones included (probabilities that underflow to 0 beside finite
    log-probabilities): the same bits, values and gradients; with a -inf entry only the
    general one is finite."""
    z = torch.randn(4, 3000, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    z[1] *= 60  # most probabilities 0.0 in float32, every log-probability finite
    grads = []
    for finite in (False, True):
        zz = z.clone().requires_grad_(True)
        h = entropy(torch.log_softmax(zz, -1), finite=finite)
        ((h - 2.0) ** 2).sum().backward()
        grads.append((h.detach(), zz.grad))
    assert (torch.log_softmax(z, -1)[1].exp() == 0).sum() > 1000
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    with_zero = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    assert entropy(with_zero).item() == pytest.approx(math.log(2)) and entropy(with_zero, finite=True).isnan().all()


class _VocabOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten operators that produce a tensor of ``numel`` elements (a pass over [n, |V|])."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(func.overloadpacket.__name__)
        return out


def test_kl_is_the_sum_of_its_terms_and_its_gradient_makes_no_negation_over_the_vocabulary():
    """kl's value is sum p (log p - log q) bit for bit (written as minus the sum of p (log q -
    log p): a negation is exact); in the backward pass its gradient reaches log q as one product
    -p g per entry, with no separate negation of a [n, |V|] tensor."""
    p = torch.tensor(random_dists(4, 3000, 5, zeros=True), dtype=torch.float32)
    logp = log_of(p)
    logq = torch.log_softmax(torch.randn(4, 3000, generator=torch.Generator().manual_seed(1)) * 3, -1).requires_grad_()
    bits = lambda t: t.detach().view(torch.int32)  # noqa: E731 (bit for bit: -0.0 differs from 0.0)
    for q in (logq, logp.detach().clone()):  # the KL of a q that is p is +0
        assert torch.equal(bits(kl(p, q, logp)), bits(torch.linalg.vecdot(p, logp - q)))
        assert torch.equal(bits(kl(p, q)), bits(torch.linalg.vecdot(p, torch.where(p > 0, logp - q, 0.0))))
    assert torch.equal(bits(kl(p, logp, logp)), bits(torch.zeros(4)))
    w = torch.arange(1.0, 5.0)
    for given in (logp, None):  # log p from the caller (the descents), or computed here
        logq.grad = None
        loss = (kl(p, logq, given) * w).sum()
        with _VocabOps(p.numel()) as seen:
            loss.backward()
        assert "neg" not in seen.ops and seen.ops.count("mul") == 1, seen.ops
        assert torch.equal(logq.grad, p * -w[:, None])
