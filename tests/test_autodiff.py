"""``twice_differentiable``: the same values and first gradients as the fast backward
passes, and a second derivative (what gradient-inversion attacks need)."""

import pytest
import torch
from torch import nn

from binface.nn import PReLU, twice_differentiable
from binface.nn.layers import BinaryConv2d
from binface.nn.quantizers import ApproxSign, DoReFa, EdeSign, RSign, SteSign, SwishSign

LAYERS = {
    "ste": lambda: SteSign(1.0),
    "ste_clip_half": lambda: SteSign(0.5),
    "approx": ApproxSign,
    "swish": lambda: SwishSign(5.0),
    "ede": lambda: EdeSign(0.7),
    "dorefa1": lambda: DoReFa(1, "weights"),
    "rsign": lambda: RSign(4),
    "prelu": lambda: PReLU(4),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_same_values_and_gradients(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.3, 0.3)
    x = torch.randn(2, 4, 5, 5) * 1.5
    g = torch.randn(2, 4, 5, 5)
    out = {}
    for twice in (False, True):
        xi = x.clone().requires_grad_(True)
        if twice:
            with twice_differentiable():
                y = layer(xi)
        else:
            y = layer(xi)
        grads = torch.autograd.grad(y, [xi, *layer.parameters()], g)
        out[twice] = (y.detach(), grads)
    assert torch.equal(out[False][0], out[True][0])
    for a, b in zip(out[False][1], out[True][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)  # formulas round apart


def test_a_binary_network_differentiates_its_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), PReLU(8),
                        BinaryConv2d(8, 8, 3, input_quantizer=SteSign(),
                                     kernel_quantizer=SteSign()),
                        nn.Flatten(), nn.Linear(8 * 12 * 12, 4))
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    with pytest.raises(RuntimeError):  # the fast backward passes are not differentiable
        gw = torch.autograd.grad(net(x).square().sum(), list(net.parameters()),
                                 create_graph=True)
        torch.autograd.grad(sum(g.square().sum() for g in gw), x)
    with twice_differentiable():
        gw = torch.autograd.grad(net(x).square().sum(), list(net.parameters()),
                                 create_graph=True)
        (gx,) = torch.autograd.grad(sum(g.square().sum() for g in gw), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
