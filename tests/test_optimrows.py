import pytest
import torch

from distreach.optimrows import keep_rows


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
def test_kept_rows_follow_the_full_batch(kind):
    """Rows dropped mid-way leave the others on the trajectory they have in the full batch:
    moments sliced, step count and settings kept."""
    start = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    keep = torch.tensor([True, False, True, True])
    p, ref = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt, ref_opt = kind([p], lr=0.1, weight_decay=0.01), kind([ref], lr=0.1, weight_decay=0.01)
    for step in range(6):
        for param, o in ((p, opt), (ref, ref_opt)):
            (param**3).sum().backward()
            o.step()
            o.zero_grad()
        if step == 2:
            p, opt = keep_rows(opt, p, keep)
    assert type(opt) is kind and opt.defaults["weight_decay"] == 0.01
    assert torch.equal(p.detach(), ref.detach()[keep])
