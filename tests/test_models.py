"""Tests for ticketlab.models: architectures, parameter counts, seeded initialisation, registry errors."""

import math

import pytest
import torch
from torch import nn

from ticketlab.errors import UserError
from ticketlab.models import INITS, MODELS, build, initialize, output_name, prunable_names

MNIST, MNIST1D, CIFAR = (1, 28, 28), (40,), (3, 32, 32)
IMAGE_MODELS = [n for n in MODELS if n.startswith(("conv", "resnet", "vgg"))]
FLAT_MODELS = ["lenet_300_100", "mlp", "mnist1d_mlp"]
CONTRACT_MODELS = ("lenet_300_100", "mlp", "mnist1d_mlp", "mnist1d_cnn", "conv2", "conv4", "conv6", "resnet20",
                   "vgg16_bn")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the test machines are shared 2-core boxes; one thread avoids OpenMP spin contention spikes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_contract_names_are_registered():
    assert MODELS[: len(CONTRACT_MODELS)] == CONTRACT_MODELS
    assert INITS == ("kaiming_normal", "kaiming_uniform", "glorot_normal", "glorot_uniform")
    assert {"resnet56", "resnet110"} <= set(MODELS)


# --- parameter counts: published figures (OpenLTH / Frankle & Carbin 2019) and arithmetic from the spec ---

@pytest.mark.parametrize("name, shape, count", [
    ("lenet_300_100", MNIST, 266_610),          # published
    ("resnet20", CIFAR, 272_474),               # published (OpenLTH)
    ("vgg16_bn", CIFAR, 14_728_266),            # published (OpenLTH)
    ("resnet56", CIFAR, 855_770),               # 0.85M, He et al. 2016
    ("conv2", CIFAR, 4_301_642),                # 4.3M in Frankle & Carbin 2019
    ("conv4", CIFAR, 2_425_930),                # 2.4M in Frankle & Carbin 2019
    ("conv6", CIFAR, 2_262_602),
    ("mnist1d_mlp", MNIST1D, 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),
    ("mnist1d_cnn", MNIST1D, (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (25 * 5 * 10 + 10)),
])
def test_parameter_count(name, shape, count):
    assert n_params(build(name, shape, 10, seed=0)) == count


def test_lenet_layer_shapes():
    shapes = [tuple(p.shape) for p in build("lenet_300_100", MNIST, 10, seed=0).parameters()]
    assert shapes == [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]


def test_mlp_widths():
    model = build("mlp", MNIST1D, 7, seed=0, widths=(50, 20, 5))
    shapes = [tuple(model.get_parameter(n).shape) for n in prunable_names(model)]
    assert shapes == [(50, 40), (20, 50), (5, 20), (7, 5)]
    assert n_params(build("mlp", MNIST, 10, seed=0)) == 266_610  # default widths (300, 100)
    logistic = build("mlp", MNIST1D, 10, seed=0, widths=())
    assert prunable_names(logistic) == ["fc.weight"]
    wide = build("mnist1d_mlp", MNIST1D, 10, seed=0, widths=(500, 500))  # the MNIST-1D lottery MLP
    assert n_params(wide) == 40 * 500 + 500 + 500 * 500 + 500 + 5010


def test_resnet_structure_follows_openlth():
    model = build("resnet20", CIFAR, 10, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert len(convs) == 1 + 18 + 2  # stem, 9 blocks x 2, two 1x1 shortcuts
    assert [tuple(c.weight.shape) for c in convs if c.kernel_size == (1, 1)] == [(32, 16, 1, 1), (64, 32, 1, 1)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 21
    assert tuple(model.get_parameter(output_name(model)).shape) == (10, 64)


# --- forward shapes ---

def _forward_cases():
    for name in CONTRACT_MODELS:
        shapes = [MNIST, MNIST1D, CIFAR] if name in FLAT_MODELS else [MNIST, CIFAR] if name in IMAGE_MODELS else []
        if name == "mnist1d_cnn":
            shapes = [MNIST1D, (1, 40)]
        assert shapes, f"no input shapes known for {name}"
        yield from ((name, shape) for shape in shapes)
    yield from ((name, CIFAR) for name in MODELS if name not in CONTRACT_MODELS)  # extra depths: CIFAR only


@pytest.mark.parametrize("name, shape", list(_forward_cases()))
def test_forward_shapes(name, shape):
    model = build(name, shape, 7, seed=0)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, shape", [
    ("mnist1d_cnn", CIFAR), ("mnist1d_cnn", (2, 40)), ("conv2", MNIST1D), ("resnet20", MNIST1D),
    ("vgg16_bn", MNIST1D), ("vgg16_bn", (3, 8, 8)), ("conv6", (3, 4, 32)), ("mnist1d_cnn", (1,)),
])
def test_unsupported_input_shape_is_a_user_error(name, shape):
    with pytest.raises(UserError):
        build(name, shape, 10, seed=0)


def test_other_conv_input_sizes():
    assert build("conv6", (5, 8, 12), 3, seed=0)(torch.randn(2, 5, 8, 12)).shape == (2, 3)
    assert build("resnet20", (2, 17, 9), 4, seed=0)(torch.randn(2, 2, 17, 9)).shape == (2, 4)
    assert build("mnist1d_cnn", (72,), 10, seed=0)(torch.randn(2, 72)).shape == (2, 10)


# --- seeded initialisation ---

@pytest.mark.parametrize("name, shape", [("lenet_300_100", MNIST), ("mnist1d_cnn", MNIST1D), ("conv2", CIFAR),
                                         ("resnet20", CIFAR)])
@pytest.mark.parametrize("init", INITS)
def test_same_seed_same_weights_other_seed_different(name, shape, init):
    a = build(name, shape, 10, seed=3, init=init)
    assert_same_state(a, build(name, shape, 10, seed=3, init=init))
    b = build(name, shape, 10, seed=4, init=init)
    for key in prunable_names(a):
        assert not torch.equal(a.get_parameter(key), b.get_parameter(key)), key


def test_inits_differ_from_each_other():
    weights = [build("mnist1d_mlp", MNIST1D, 10, seed=0, init=i).fc.weight for i in INITS]
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            assert not torch.equal(weights[i], weights[j])


def test_layers_draw_independently():
    # every layer consumes its own draws from the generator: no two layers start with the same values
    model = build("conv4", CIFAR, 10, seed=0)
    firsts = [model.get_parameter(n).flatten()[:8] for n in prunable_names(model)]
    for i in range(len(firsts)):
        for j in range(i + 1, len(firsts)):
            assert not torch.allclose(firsts[i] / firsts[i].norm(), firsts[j] / firsts[j].norm())


@pytest.mark.parametrize("name, shape", [("lenet_300_100", MNIST), ("resnet20", CIFAR), ("mnist1d_cnn", MNIST1D)])
def test_build_leaves_global_rng_alone(name, shape):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    build(name, shape, 10, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    initialize(build(name, shape, 10, seed=0), seed=5, init="glorot_uniform")
    assert torch.equal(torch.get_rng_state(), state)


def test_build_does_not_depend_on_global_rng():
    torch.manual_seed(0)
    a = build("conv2", CIFAR, 10, seed=9)
    torch.manual_seed(1)
    torch.rand(17)
    assert_same_state(a, build("conv2", CIFAR, 10, seed=9))


@pytest.mark.parametrize("init, normal, fan", [
    ("kaiming_normal", True, lambda i, o: i / 2),
    ("kaiming_uniform", False, lambda i, o: i / 2),
    ("glorot_normal", True, lambda i, o: (i + o) / 2),
    ("glorot_uniform", False, lambda i, o: (i + o) / 2),
])
@pytest.mark.parametrize("name, shape, layer, fan_in, fan_out", [
    ("lenet_300_100", MNIST, "hidden.0.weight", 784, 300),           # 235,200 weights
    ("conv4", CIFAR, "convs.3.weight", 128 * 9, 128 * 9),             # 147,456 weights
    ("mnist1d_mlp", MNIST1D, "hidden.0.weight", 40, 100),             # fan_in != fan_out, small
])
def test_init_statistics(init, normal, fan, name, shape, layer, fan_in, fan_out):
    model = build(name, shape, 10, seed=11, init=init)
    w = model.get_parameter(layer).detach().double()
    expected_std = math.sqrt(1 / fan(fan_in, fan_out))
    tol = 0.02 if w.numel() > 100_000 else 0.1
    assert abs(w.mean().item()) < 5 * expected_std / math.sqrt(w.numel())
    assert w.std().item() == pytest.approx(expected_std, rel=tol)
    bound = math.sqrt(3) * expected_std  # the uniform's half-width for this std
    if normal:
        assert w.abs().max().item() > 1.5 * bound  # a normal's tails reach far past it
    else:
        assert w.abs().max().item() <= bound * (1 + 1e-6)
        assert w.abs().max().item() > 0.95 * bound


@pytest.mark.parametrize("name, shape", [("conv6", CIFAR), ("vgg16_bn", CIFAR), ("resnet20", CIFAR)])
def test_biases_zero_batchnorm_identity(name, shape):
    model = build(name, shape, 10, seed=0)
    seen_bias = seen_bn = False
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            seen_bias = True
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
        if isinstance(module, nn.BatchNorm2d):
            seen_bn = True
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean))
            assert torch.equal(module.running_var, torch.ones_like(module.running_var))
            assert module.num_batches_tracked.item() == 0
    assert seen_bias
    assert seen_bn == (name != "conv6")


@pytest.mark.parametrize("name, shape", [("resnet20", CIFAR), ("mnist1d_cnn", MNIST1D), ("lenet_300_100", MNIST)])
@pytest.mark.parametrize("init", ["kaiming_normal", "glorot_uniform"])
def test_initialize_reproduces_build(name, shape, init):
    model = build(name, shape, 10, seed=1)
    # move weights, biases and BN statistics away from their initial values
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    loss = model(torch.randn(4, *shape)).square().mean()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), build(name, shape, 10, seed=1).parameters()))
    initialize(model, seed=7, init=init)
    assert_same_state(model, build(name, shape, 10, seed=7, init=init))


# --- prunable parameters and output layer ---

@pytest.mark.parametrize("name, shape", [(n, MNIST1D if n == "mnist1d_cnn" else CIFAR) for n in MODELS])
def test_prunable_names_are_exactly_linear_and_conv_weights(name, shape):
    model = build(name, shape, 10, seed=0)
    params = dict(model.named_parameters())
    expected = []
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            expected.append(f"{module_name}.weight")
    names = prunable_names(model)
    assert names == expected  # module order
    assert all(n in params and params[n].dim() >= 2 for n in names)
    assert all(params[n].dim() == 1 for n in set(params) - set(names))  # biases and BN are left out
    assert output_name(model) == "fc.weight" == names[-1]
    assert params[output_name(model)].shape[0] == 10


def test_prunable_and_output_names_on_handwritten_model():
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2), nn.Flatten(), nn.Linear(4, 3), nn.ReLU(),
                          nn.Linear(3, 2), nn.LayerNorm(2))
    assert prunable_names(model) == ["0.weight", "3.weight", "5.weight"]
    assert output_name(model) == "5.weight"
    with pytest.raises(UserError):
        output_name(nn.Sequential(nn.Conv2d(1, 1, 1)))


# --- bad input ---

def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError) as info:
        build("resnet50", CIFAR, 10, seed=0)
    message = str(info.value)
    assert "'resnet50'" in message
    assert all(name in message for name in MODELS)


def test_unknown_init_lists_valid_names():
    for call in (lambda: build("mlp", MNIST1D, 10, seed=0, init="orthogonal"),
                 lambda: initialize(build("mlp", MNIST1D, 10, seed=0), seed=0, init="orthogonal")):
        with pytest.raises(UserError) as info:
            call()
        assert "'orthogonal'" in str(info.value)
        assert all(init in str(info.value) for init in INITS)


@pytest.mark.parametrize("kwargs", [
    dict(name="lenet_300_100", widths=(300, 100)), dict(name="resnet20", widths=(16,)),
    dict(name="mnist1d_cnn", widths=(25,)), dict(name="mlp", widths=(0, 10)), dict(name="mlp", widths=(-3,)),
    dict(name="mnist1d_mlp", widths=(10.5,)), dict(name="mlp", widths=(True,)), dict(name="mlp", widths=5),
])
def test_bad_widths(kwargs):
    shape = MNIST1D if kwargs["name"].startswith(("mnist1d", "mlp")) else CIFAR
    with pytest.raises(UserError):
        build(kwargs["name"], shape, 10, seed=0, widths=kwargs["widths"])


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(num_classes=2.0), dict(input_shape=()),
                                    dict(input_shape=(0, 40)), dict(seed=1.5), dict(seed="1")])
def test_bad_arguments(kwargs):
    args = dict(name="mlp", input_shape=MNIST1D, num_classes=10, seed=0) | kwargs
    with pytest.raises(UserError):
        build(args.pop("name"), args.pop("input_shape"), args.pop("num_classes"), **args)


# --- K copies at once with torch.func (the stacked-tickets engine) ---

@pytest.mark.parametrize("name, shape", [("mnist1d_mlp", MNIST1D), ("mnist1d_cnn", MNIST1D), ("resnet20", CIFAR)])
def test_vmap_over_stacked_copies_matches_each_copy(name, shape):
    models = [build(name, shape, 10, seed=s).eval() for s in range(3)]
    params, buffers = torch.func.stack_module_state(models)
    base = build(name, shape, 10, seed=0).eval().to("meta")
    x = torch.randn(4, *shape)

    def run(p, b):
        return torch.func.functional_call(base, (p, b), (x,))

    stacked = torch.vmap(run)(params, buffers)
    for k, model in enumerate(models):
        torch.testing.assert_close(stacked[k], model(x))
