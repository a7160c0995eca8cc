import pytest
import torch

from fairat.engine.augment import HARD_AUGMENTATIONS, augment_hard, autoaugment, cutmix, random_crop_flip


@pytest.fixture
def images():
    return torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def targets():
    return torch.nn.functional.one_hot(torch.arange(32) % 10, 10).float()


def test_crop_flip_keeps_shape_range_and_content(images):
    out = random_crop_flip(images, 4, True, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    same = random_crop_flip(images, 0, False, torch.Generator().manual_seed(0))
    assert torch.equal(same, images)
    # A crop never invents values: every output pixel is an input pixel or zero padding.
    values = set(images.flatten().tolist()) | {0.0}
    assert set(out[0].flatten().tolist()) <= values


@pytest.mark.parametrize("name", sorted(HARD_AUGMENTATIONS))
def test_each_hard_augmentation_keeps_shape_range_and_target_mass(name, images, targets):
    x, y = HARD_AUGMENTATIONS[name](images, targets, torch.Generator().manual_seed(1), 1.0)
    assert x.shape == images.shape and y.shape == targets.shape
    assert x.min() >= 0 and x.max() <= 1
    assert torch.allclose(y.sum(1), torch.ones(32), atol=1e-5)


def test_strong_augmentations_change_images(images, targets):
    x, _ = autoaugment(images, targets, torch.Generator().manual_seed(2), 1.0)
    assert (x - images).abs().mean() > 0.01


def test_cutmix_keeps_at_least_half_of_the_original_label(images, targets):
    _, y = cutmix(images, targets, torch.Generator().manual_seed(3), 1.0)
    assert (y.max(1).values >= 0.5 - 1e-6).all()


def test_augment_hard_is_repeatable_and_rejects_unknown_names(images, targets):
    names = ("autoaugment", "cutout", "cutmix")
    a = augment_hard(images, targets, names, torch.Generator().manual_seed(5))
    b = augment_hard(images, targets, names, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_hard(images, targets, ("rotate90",), torch.Generator())


def test_zero_strength_cutout_and_mixup_are_identity(images, targets):
    for name in ("cutout", "mixup"):
        x, y = HARD_AUGMENTATIONS[name](images, targets, torch.Generator().manual_seed(0), 0.0)
        assert torch.allclose(x, images) and torch.allclose(y, targets)
