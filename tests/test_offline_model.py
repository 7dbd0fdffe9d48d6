"""Contrastive loss and embedding networks of the offline stage."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from toxrt.offline.loss import D_NEG, D_POS, contrastive_loss, pair_distances  # noqa: E402
from toxrt.offline.model import build_model, count_parameters  # noqa: E402

# torchvision's resnet18: 11,689,512 parameters (3 input channels, 1000 classes).
# conv1 with 1 channel: - 64 * 7 * 7 * (3 - 1) = -6,272; fc 512 -> 8: -(512 * 992 + 992) = -508,896.
RESNET18_1CH_8OUT = 11_689_512 - 64 * 7 * 7 * 2 - (512 * 1000 + 1000) + (512 * 8 + 8)


def test_resnet18_parameter_count_matches_standard_with_two_changes():
    assert RESNET18_1CH_8OUT == 11_174_344
    model = build_model("resnet18")
    assert count_parameters(model) == RESNET18_1CH_8OUT
    assert tuple(model.conv1.weight.shape) == (64, 1, 7, 7)
    assert tuple(model.fc.weight.shape) == (8, 512)


@pytest.mark.parametrize("network,size", [("resnet18", 32), ("small", 16), ("small", 24)])
def test_networks_embed_grey_images_in_8_dimensions(network, size):
    torch.manual_seed(0)
    model = build_model(network).eval()
    with torch.no_grad():
        z = model(torch.rand(3, 1, size, size))
    assert z.shape == (3, 8) and torch.isfinite(z).all()
    assert count_parameters(build_model("small")) < 200_000


def test_loss_is_zero_exactly_where_the_paper_says():
    d = torch.tensor([0.0, 0.5, 1.0, 1.0001, 3.0, 9.0, 9.999, 10.0, 12.0], dtype=torch.float64)
    positive = contrastive_loss(d, torch.zeros_like(d, dtype=torch.bool))
    negative = contrastive_loss(d, torch.ones_like(d, dtype=torch.bool))
    # positives cost nothing up to D_pos, negatives nothing from D_neg on
    np.testing.assert_array_equal((positive == 0).numpy(), (d <= D_POS).numpy())
    np.testing.assert_array_equal((negative == 0).numpy(), (d >= D_NEG).numpy())
    # squared hinge elsewhere
    np.testing.assert_allclose(positive.numpy(), np.maximum(d.numpy() - 1.0, 0) ** 2)
    np.testing.assert_allclose(negative.numpy(), np.maximum(10.0 - d.numpy(), 0) ** 2)
    assert D_POS == 1.0 and D_NEG == 10.0


def test_distance_gradient_is_finite_for_identical_embeddings():
    a = torch.zeros(2, 8, requires_grad=True)
    b = torch.zeros(2, 8)
    d = pair_distances(a, b)
    loss = contrastive_loss(d, torch.tensor([False, True])).sum()
    loss.backward()
    assert torch.isfinite(a.grad).all()
    np.testing.assert_allclose(pair_distances(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)).numpy(), [5.0])


def test_one_gradient_step_pulls_positives_and_pushes_negatives():
    torch.manual_seed(0)
    model = build_model("small")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(8, 1, 16, 16)
    negative = torch.tensor([False, False, True, True])

    def distances():
        z = model(x)
        return pair_distances(z[:4], z[4:])

    before = distances().detach()
    for _ in range(5):
        loss = contrastive_loss(distances(), negative).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = distances().detach()
    assert after[2:].mean() > before[2:].mean()
