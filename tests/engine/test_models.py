import pytest
import torch

from fairat.engine.checkpoint import load_checkpoint, load_model, model_file_payload, save_checkpoint
from fairat.config import ModelConfig
from fairat.engine.models import ModelSpec, build_model, max_pool_2x2

class Evil:
    """An arbitrary pickled object: loading it would run code, so weights_only must refuse it."""


CIFAR = ModelSpec(3, 10, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


@pytest.mark.parametrize("name, width, depth", [
    ("small_cnn", 8, None), ("preact_resnet18", 4, None), ("wrn", 1, 10)])
def test_architectures_map_pixels_to_logits(name, width, depth):
    model = build_model(name, CIFAR, width, depth).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)


def test_normalization_lives_inside_the_model():
    model = build_model("small_cnn", CIFAR, 8)
    assert torch.allclose(model.normalize(torch.full((1, 3, 1, 1), 0.49))[0, 0], torch.zeros(1, 1))
    assert "normalize.mean" in model.state_dict()


def test_bad_architecture_names_and_depths():
    with pytest.raises(ValueError, match="model.name"):
        build_model("resnet50", CIFAR)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wrn", CIFAR, 1, 27)


def test_model_file_round_trip_is_weights_only(tmp_path):
    spec = ModelSpec(1, 10, 8, (0.3,), (0.3,))
    model = build_model("small_cnn", spec, 8).eval()
    payload = model_file_payload(model.state_dict(), ModelConfig("small_cnn", 8), spec,
                                 tuple("0123456789"), 3, {"train": {}})
    save_checkpoint(payload, tmp_path / "model.pt")
    loaded, meta = load_model(tmp_path / "model.pt", torch.device("cpu"))
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    assert meta["epoch"] == 3 and meta["class_names"] == list("0123456789")


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "bad.pt", torch.device("cpu"))
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fairat model file"):
        load_model(tmp_path / "other.pt", torch.device("cpu"))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot load checkpoint") as refused:
        load_checkpoint(tmp_path / "evil.pt", torch.device("cpu"))
    assert "weights_only" not in str(refused.value) and "Evil" in str(refused.value)


def test_attack_view_matches_the_eval_model_and_its_input_gradients():
    torch.manual_seed(0)
    model = build_model("small_cnn", CIFAR, 8)
    x = torch.rand(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    model.train()
    for _ in range(3):  # move BatchNorm running statistics away from their initial values
        model(torch.rand(16, 3, 32, 32))
    model.eval()
    view = model.attack_view()
    assert view is not model
    assert torch.allclose(view(x), model(x), atol=1e-5)
    grads = []
    for net in (model, view):
        delta = torch.zeros_like(x, requires_grad=True)
        loss = torch.nn.functional.cross_entropy(net(x + delta), y)
        grads.append(torch.autograd.grad(loss, delta)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    # Architectures with BatchNorm before convolutions have no cheaper view.
    preact = build_model("preact_resnet18", CIFAR, 4)
    assert preact.attack_view() is preact


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 5, 7, 9), (1, 2, 2, 3)])
def test_fast_max_pool_is_max_pool2d_exactly(shape):
    """The gradient-free path must give the very numbers of max_pool2d (a maximum does not round),
    and where a gradient flows the tie rule (first maximum takes it) must be torch's own."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(shape)).round()  # many ties, as on a digit's flat background
    expected = torch.nn.functional.max_pool2d(x, 2)
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), expected)
    with torch.inference_mode():
        assert torch.equal(max_pool_2x2(x), expected)
    assert torch.equal(max_pool_2x2(x), expected)  # no grad required: the fast path too
    xg = x.clone().requires_grad_()
    upstream = torch.randn_like(expected)
    ours, = torch.autograd.grad(max_pool_2x2(xg), xg, upstream)
    xr = x.clone().requires_grad_()
    torchs, = torch.autograd.grad(torch.nn.functional.max_pool2d(xr, 2), xr, upstream)
    assert torch.equal(ours, torchs)


def test_attack_view_folds_synchronized_batchnorm_too():
    model = build_model("small_cnn", CIFAR, 8)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(synced.attack_view()(x), model.eval()(x), atol=1e-5)
