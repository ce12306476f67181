"""The fast paths of scoring and training give the values of the plain autograd ones."""

import pytest
import torch

from mulde.network import EnergyMLP, GeluBackward, fused_linear_gelu_available
from mulde.score_matching import (
    dsm_loss,
    dsm_loss_backward,
    explicit_training_supported,
    multiscale_energies,
)

LEVELS = torch.linspace(1e-3, 1.0, 16)


def make_net(n_features, seed=0, **options):
    net = EnergyMLP(n_features, (64, 48), **options)
    net.reset_parameters(torch.Generator().manual_seed(seed))
    return net.eval()


def plain_energies_and_norms(net, x, levels):
    """f and ||sigma grad_x f||^2 with every level's rows repeated: the plain maths."""
    n, d = x.shape
    n_levels = levels.shape[0]
    x_rep = x.repeat_interleave(n_levels, dim=0).requires_grad_(True)
    sigma_rep = levels.repeat(n)
    energies = net(x_rep, sigma_rep)
    (grad,) = torch.autograd.grad(energies.sum(), x_rep)
    norms = (sigma_rep.unsqueeze(1) * grad).square().sum(dim=1)
    return energies.detach().reshape(n, n_levels), norms.reshape(n, n_levels)


def plain_dsm_loss(net, x, sigma, weight, beta, seed):
    """The loss of dsm_loss through autograd's double backward."""
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    x_noisy = (x + sigma.unsqueeze(1) * eps).requires_grad_(True)
    energy = net(x_noisy, sigma)
    (grad,) = torch.autograd.grad(energy.sum(), x_noisy, create_graph=True)
    residual = (sigma.unsqueeze(1) * grad - eps).square().sum(dim=1)
    per_sample = weight / sigma.square() * residual + beta * net(x, sigma).square()
    return per_sample.mean()


@pytest.mark.parametrize("n_features", [3, 100])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"activation": "silu"},
        {"activation": "softplus"},
        {"layer_norm": True, "dropout": 0.1},
    ],
)
def test_multiscale_energies_match_plain(n_features, options):
    net = make_net(n_features, **options)
    x = torch.randn(9, n_features, generator=torch.Generator().manual_seed(1))
    expected_energies, expected_norms = plain_energies_and_norms(net, x, LEVELS)

    energies, none = multiscale_energies(net, x, LEVELS)
    assert none is None
    assert torch.allclose(energies, expected_energies, atol=1e-5, rtol=1e-5)

    energies, norms = multiscale_energies(net, x, LEVELS, score_norms=True)
    assert torch.allclose(energies, expected_energies, atol=1e-5, rtol=1e-5)
    assert torch.allclose(norms, expected_norms, atol=1e-7, rtol=1e-4)


def test_explicit_gradient_support_follows_modules():
    assert make_net(4).supports_explicit_gradient
    assert not make_net(4, layer_norm=True).supports_explicit_gradient
    with_dropout = make_net(4, dropout=0.2)
    assert with_dropout.supports_explicit_gradient  # dropout is off in eval mode
    assert not with_dropout.train().supports_explicit_gradient


def test_explicit_input_gradient_matches_autograd():
    net = make_net(7, activation="gelu")
    x = torch.randn(11, 7, generator=torch.Generator().manual_seed(2))
    sigma = torch.full((11,), 0.3)
    pre_activation = net.feature_projection(x) + net.sigma_projection(sigma)
    energy, delta = net.energy_and_gradient_from_first_layer(pre_activation)
    grad = net.project_input_gradient(delta)

    inputs = x.clone().requires_grad_(True)
    expected_energy = net(inputs, sigma)
    (expected_grad,) = torch.autograd.grad(expected_energy.sum(), inputs)
    assert torch.allclose(energy, expected_energy, atol=1e-6)
    assert torch.allclose(grad, expected_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "silu", "softplus"])
@pytest.mark.parametrize("n_features", [2, 50])
def test_dsm_loss_and_weight_gradients_match_autograd(activation, n_features):
    net = make_net(n_features, activation=activation).train()
    data = torch.Generator().manual_seed(3)
    x = torch.randn(32, n_features, generator=data)
    sigma = torch.exp(torch.empty(32).uniform_(-6.9, 0.0, generator=data))
    weight = sigma.square()

    parts = dsm_loss(net, x, sigma, weight, 0.1, torch.Generator().manual_seed(4))
    fast_grads = torch.autograd.grad(parts.total, list(net.parameters()))
    expected = plain_dsm_loss(net, x, sigma, weight, 0.1, seed=4)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))

    assert torch.allclose(parts.total, expected, rtol=1e-5)
    assert torch.allclose(parts.per_sample.mean(), parts.total)
    for fast, slow in zip(fast_grads, expected_grads, strict=True):
        assert torch.allclose(fast, slow, atol=1e-6, rtol=1e-4)


def test_dsm_loss_autograd_branch_with_layer_norm():
    net = make_net(5, layer_norm=True).train()
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(5))
    sigma = torch.full((16,), 0.1)
    parts = dsm_loss(
        net, x, sigma, sigma.square(), 0.1, torch.Generator().manual_seed(6)
    )
    expected = plain_dsm_loss(net, x, sigma, sigma.square(), 0.1, seed=6)
    assert torch.allclose(parts.total, expected, rtol=1e-6)


def test_bfloat16_autocast_fast_paths_close_to_float32():
    # bfloat16 keeps 8 bits of mantissa, so agreement is to about 1e-2 relative.
    net = make_net(6)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(7))
    reference, reference_norms = multiscale_energies(net, x, LEVELS, score_norms=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        energies, norms = multiscale_energies(net, x, LEVELS, score_norms=True)
    assert energies.dtype == torch.float32
    assert torch.allclose(energies, reference, atol=0.05, rtol=0.05)
    assert torch.allclose(norms, reference_norms, atol=1e-4, rtol=0.1)

    net.train()
    sigma = torch.full((5,), 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = dsm_loss(net, x, sigma, sigma.square(), 0.1, None)
    assert torch.isfinite(parts.total)
    parts.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_gelu_backward_derivatives_match_aten():
    data = torch.Generator().manual_seed(8)
    grad = torch.randn(6, 5, dtype=torch.float64, generator=data).requires_grad_()
    z = (3 * torch.randn(6, 5, dtype=torch.float64, generator=data)).requires_grad_()
    assert torch.autograd.gradcheck(GeluBackward.apply, (grad, z))

    output_grad = torch.randn(6, 5, dtype=torch.float64, generator=data)
    ours = torch.autograd.grad(GeluBackward.apply(grad, z), (grad, z), output_grad)
    aten = torch.autograd.grad(
        torch.ops.aten.gelu_backward(grad, z), (grad, z), output_grad
    )
    assert torch.allclose(ours[0], aten[0], rtol=1e-12)
    assert torch.allclose(ours[1], aten[1], rtol=1e-12, atol=1e-15)


def test_bfloat16_inference_weights_follow_updates():
    net = make_net(4)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before, _ = multiscale_energies(net, x, LEVELS)
    linear = net.layers[-1]
    cached_weight, _ = net.inference_weights(linear, torch.bfloat16)
    assert cached_weight.dtype == torch.bfloat16
    assert net.inference_weights(linear, torch.bfloat16)[0] is cached_weight

    with torch.no_grad():
        linear.bias.add_(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after, _ = multiscale_energies(net, x, LEVELS)
    # bfloat16 rounds the energies near 1 to steps of 2**-7.
    assert torch.allclose(after - before, torch.ones_like(before), atol=0.02)
    assert net.inference_weights(linear, torch.bfloat16)[1].item() == pytest.approx(
        linear.bias.item(), abs=0.01
    )


@pytest.mark.skipif(
    not fused_linear_gelu_available(torch.device("cpu")),
    reason="oneDNN linear with GELU is not available in this torch build",
)
def test_fused_linear_gelu_matches_separate_ops():
    net = make_net(3)
    hidden = torch.randn(40, 64, generator=torch.Generator().manual_seed(10))
    linear, activation = net.layers[2], net.layers[3]
    expected = activation(linear(hidden))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = net.inference_linear(linear, hidden, activation)
    assert fused.dtype == torch.bfloat16
    assert torch.allclose(fused.float(), expected, atol=0.03, rtol=0.02)


@pytest.mark.parametrize(
    "module",
    ["detector_speed", "end_to_end", "features_speed", "flow_gap", "precision_auc"],
)
def test_benchmark_modules_import(module):
    # The benchmarks run outside the test suite; importing them here catches
    # names they take from mulde that no longer exist.
    import importlib

    importlib.import_module(f"benchmarks.{module}")


def test_score_pairs_per_pass_capped_on_cpu():
    from mulde.detector import score_pairs_per_pass

    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    assert score_pairs_per_pass(16384, (4096, 4096), cpu) == 2048
    assert score_pairs_per_pass(16384, (512, 512), cpu) == 16384
    assert score_pairs_per_pass(1000, (4096, 4096), cpu) == 1000
    assert score_pairs_per_pass(16384, (4096, 4096), cuda) == 16384


def test_reuse_freed_memory_on_glibc():
    import platform

    from mulde.allocator import reuse_freed_memory

    applied = reuse_freed_memory()

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied
    else:
        assert not applied


def test_bfloat16_weight_gradients_follow_autograd():
    net = make_net(6).train()
    data = torch.Generator().manual_seed(8)
    x = torch.randn(64, 6, generator=data)
    sigma = torch.exp(torch.empty(64).uniform_(-4.0, 0.0, generator=data))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        noise = torch.Generator().manual_seed(0)
        parts = dsm_loss(net, x, sigma, sigma.square(), 0.1, noise)
    fast_grads = torch.autograd.grad(parts.total, list(net.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain_dsm_loss(net, x, sigma, sigma.square(), 0.1, seed=0)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))

    for fast, slow in zip(fast_grads, expected_grads, strict=True):
        assert fast.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(
            fast.flatten(), slow.flatten(), dim=0
        )
        assert cosine > 0.99


def grads_of(net):
    return [parameter.grad.clone() for parameter in net.parameters()]


@pytest.mark.parametrize("activation", ["gelu", "silu", "softplus"])
@pytest.mark.parametrize("hidden_sizes", [(8,), (8, 6), (8, 6, 5)])
@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_written_out_backward_matches_double_backward(
    activation, hidden_sizes, beta, dtype
):
    # float64, so that any slip in the hand-written chain rule shows far above
    # rounding; float32, because some CPU kernels differ by dtype.
    net = EnergyMLP(3, hidden_sizes, activation=activation).to(dtype).train()
    net.reset_parameters(torch.Generator().manual_seed(0))
    data = torch.Generator().manual_seed(3)
    x = torch.randn(10, 3, generator=data, dtype=dtype)
    sigma = torch.exp(torch.empty(10, dtype=dtype).uniform_(-6.9, 0.0))
    weight = sigma.square() * torch.rand(10, generator=data, dtype=dtype)
    rel, atol = (1e-12, 1e-13) if dtype == torch.float64 else (1e-5, 1e-6)
    assert explicit_training_supported(net)

    expected = plain_dsm_loss(net, x, sigma, weight, beta, seed=4)
    expected_grads = torch.autograd.grad(expected, list(net.parameters()))
    parts = dsm_loss_backward(
        net, x, sigma, weight, beta, torch.Generator().manual_seed(4)
    )

    assert parts.total.item() == pytest.approx(expected.item(), rel=rel)
    assert parts.total.item() == pytest.approx(
        parts.score_matching.item() + parts.regulariser.item(), rel=rel
    )
    for ours, theirs in zip(grads_of(net), expected_grads, strict=True):
        assert torch.allclose(ours, theirs, rtol=100 * rel, atol=atol)


def test_written_out_backward_accumulates_and_falls_back():
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((12,), 0.2)
    net = make_net(4).train()
    dsm_loss_backward(net, x, sigma, sigma.square(), 0.1, None)
    # With the same noise again, the gradients add to .grad as in loss.backward().
    generator = torch.Generator()
    net.zero_grad(set_to_none=True)
    dsm_loss_backward(net, x, sigma, sigma.square(), 0.1, generator.manual_seed(0))
    single = grads_of(net)
    dsm_loss_backward(net, x, sigma, sigma.square(), 0.1, generator.manual_seed(0))
    for total, part in zip(grads_of(net), single, strict=True):
        assert torch.allclose(total, 2 * part, rtol=1e-5, atol=1e-7)

    # LayerNorm takes autograd's backward over dsm_loss, with the same result.
    normed = make_net(4, layer_norm=True).train()
    assert not explicit_training_supported(normed)
    parts = dsm_loss_backward(
        normed, x, sigma, sigma.square(), 0.1, torch.Generator().manual_seed(2)
    )
    assert not parts.total.requires_grad
    expected = plain_dsm_loss(normed, x, sigma, sigma.square(), 0.1, seed=2)
    expected_grads = torch.autograd.grad(expected, list(normed.parameters()))
    for ours, theirs in zip(grads_of(normed), expected_grads, strict=True):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_written_out_backward_in_bfloat16_follows_float32():
    data = torch.Generator().manual_seed(8)
    x = torch.randn(64, 6, generator=data)
    sigma = torch.exp(torch.empty(64).uniform_(-4.0, 0.0, generator=data))
    net = make_net(6).train()
    dsm_loss_backward(
        net, x, sigma, sigma.square(), 0.1, torch.Generator().manual_seed(0)
    )
    reference = grads_of(net)
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = dsm_loss_backward(
            net, x, sigma, sigma.square(), 0.1, torch.Generator().manual_seed(0)
        )
    assert parts.total.dtype == torch.float32
    for low, full in zip(grads_of(net), reference, strict=True):
        assert low.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(
            low.flatten(), full.flatten(), dim=0
        )
        assert cosine > 0.99


def test_written_out_backward_trains_like_autograd():
    # Fused Adam reads .grad with the parameter's layout, so a gradient that is
    # a strided view updates the wrong entries without any error.
    from mulde.detector import make_adam
    from mulde.score_matching import autograd_dsm_loss_backward

    data = torch.Generator().manual_seed(5)
    x = torch.randn(16, 3, generator=data, dtype=torch.float64)
    sigma = torch.exp(torch.empty(16, dtype=torch.float64).uniform_(-4.0, 0.0))
    trained = []
    for step_loss in (dsm_loss_backward, autograd_dsm_loss_backward):
        net = EnergyMLP(3, (8, 6)).double().train()
        net.reset_parameters(torch.Generator().manual_seed(0))
        optimiser = make_adam(net.parameters(), 1e-2)
        noise = torch.Generator().manual_seed(1)
        for _ in range(5):
            optimiser.zero_grad(set_to_none=True)
            step_loss(net, x, sigma, sigma.square(), 0.1, noise)
            assert all(p.grad.is_contiguous() for p in net.parameters())
            optimiser.step()
        trained.append(list(net.parameters()))
    for ours, theirs in zip(*trained, strict=True):
        # Adam divides by the root of the squared gradients, which enlarges
        # rounding on entries whose gradient is near 0, hence the atol.
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_training_backward_chosen_by_width():
    from mulde.score_matching import (
        WRITTEN_OUT_MIN_WIDTH,
        autograd_dsm_loss_backward,
        select_backward,
    )

    wide = (WRITTEN_OUT_MIN_WIDTH, 8)
    assert select_backward(EnergyMLP(3, wide)) is dsm_loss_backward
    assert select_backward(EnergyMLP(3, (64, 48))) is autograd_dsm_loss_backward
    normed = EnergyMLP(3, wide, layer_norm=True)
    assert select_backward(normed) is autograd_dsm_loss_backward
