import colorsys

import numpy as np
import pytest
import torch

import divekit.data.scenes as scenes
from divekit.data.collate import detection_collate
from divekit.data.detection import banana_detection
from divekit.data.registry import load_data
from divekit.errors import DivekitError


def naive_box(mask):
    """Tight continuous box of a boolean (H, W) mask, from its pixel list."""
    rows, cols = [], []
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j]:
                rows.append(i)
                cols.append(j)
    return [min(cols), min(rows), max(cols) + 1, max(rows) + 1]


@pytest.fixture(scope="module")
def small_scenes():
    return scenes.generate_scenes(40, size=48, seed=5, max_objects=6)


def test_hsv_to_rgb_matches_colorsys():
    hsv = torch.rand(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.tensor([colorsys.hsv_to_rgb(*row) for row in hsv.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(scenes.hsv_to_rgb(hsv), expected, atol=1e-12, rtol=0)


def test_mask_boxes_match_a_loop():
    masks = torch.rand(6, 9, 11, generator=torch.Generator().manual_seed(1)) > 0.93
    masks[0] = False
    boxes = scenes.mask_boxes(masks)
    assert boxes[0].tolist() == [0, 0, 0, 0]
    for mask, box in zip(masks[1:], boxes[1:], strict=True):
        assert box.tolist() == naive_box(mask)


def test_instance_boxes_match_a_loop():
    instances = torch.randint(0, 4, (3, 10, 12), generator=torch.Generator().manual_seed(2))
    instances[1][instances[1] == 2] = 0  # instance 2 absent from image 1
    boxes = scenes._instance_boxes(instances.to(torch.uint8), 3)
    for i in range(3):
        for k in range(3):
            mask = instances[i] == k + 1
            expected = naive_box(mask) if mask.any() else [0, 0, 0, 0]
            assert boxes[i, k].tolist() == expected


def test_bananas_are_seeded_and_boxed():
    images, targets = scenes.generate_bananas(12, size=64, seed=3)
    again, again_targets = scenes.generate_bananas(12, size=64, seed=3)
    other, _ = scenes.generate_bananas(12, size=64, seed=4)
    assert images.shape == (12, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.equal(images, again) and not torch.equal(images, other)
    for target, same in zip(targets, again_targets, strict=True):
        assert torch.equal(target["boxes"], same["boxes"])
        assert target["boxes"].shape == (1, 4) and target["labels"].tolist() == [0]
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        # Fully inside the image, and 5-55% of it across (the banana's length is 14-34%).
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        assert 3 <= max(x2 - x1, y2 - y1) <= 0.55 * 64


def test_banana_box_is_tight_around_its_yellow_mask():
    images, targets = scenes.generate_bananas(6, size=96, seed=0)
    # The same first chunk, drawn again, with the banana's mask.
    gen = torch.Generator().manual_seed(scenes._chunk_seed(0, 0))
    drawn, masks = scenes._draw_bananas(gen, 6, 96)
    assert torch.equal(scenes._to_uint8(drawn), images)
    for image, mask, target in zip(images, masks, targets, strict=True):
        assert target["boxes"][0].tolist() == naive_box(mask)
        pixels = (image.double() / 255).reshape(3, -1).T[mask.flatten()]
        hues = sorted(colorsys.rgb_to_hsv(*p)[0] for p in pixels.tolist())
        assert 0.08 < hues[len(hues) // 2] < 0.2  # mostly yellow


def test_scenes_are_seeded(small_scenes):
    images, targets = small_scenes
    again, again_targets = scenes.generate_scenes(40, size=48, seed=5, max_objects=6)
    assert torch.equal(images, again)
    for a, b in zip(targets, again_targets, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in ("boxes", "labels", "masks"))
    assert not torch.equal(images, scenes.generate_scenes(40, size=48, seed=6)[0])


def test_scene_masks_boxes_and_classes(small_scenes):
    images, targets = small_scenes
    counts = [len(t["labels"]) for t in targets]
    assert min(counts) >= 0 and max(counts) <= 6 and sum(counts) > 40
    assert set(torch.cat([t["labels"] for t in targets]).tolist()) == set(range(6))
    for target in targets:
        masks, boxes = target["masks"], target["boxes"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(boxes), 48, 48)
        assert target["labels"].dtype == torch.long and boxes.dtype == torch.float32
        # Visible parts: disjoint, non-empty, boxed tightly, inside the image.
        assert masks.sum(0).max() <= 1
        for mask, box in zip(masks, boxes, strict=True):
            assert mask.any() and box.tolist() == naive_box(mask.bool())
        assert ((boxes >= 0) & (boxes <= 48)).all()


def test_hidden_objects_are_left_out():
    # Rendered with full masks, every kept object shows at least MIN_VISIBLE of itself.
    gen = torch.Generator().manual_seed(0)
    _, instances, targets = scenes._draw_scenes(gen, 30, 40, 6)
    assert instances.max() <= 6
    for instance_map, target in zip(instances, targets, strict=True):
        ranks = set(instance_map.unique().tolist()) - {0}
        assert ranks == set(range(1, len(target["labels"]) + 1))


def test_semantic_maps_agree_with_instance_masks(small_scenes):
    _, targets = small_scenes
    maps = scenes.semantic_maps(targets, 48)
    assert maps.shape == (40, 48, 48) and maps.dtype == torch.uint8
    for semantic, target in zip(maps, targets, strict=True):
        expected = np.zeros((48, 48), dtype=np.int64)
        for mask, label in zip(target["masks"].tolist(), target["labels"].tolist(),
                               strict=True):
            for i in range(48):
                for j in range(48):
                    if mask[i][j]:
                        expected[i, j] = label + 1
        assert np.array_equal(semantic.numpy(), expected)
        assert 255 not in semantic


def test_generator_arguments_are_checked():
    with pytest.raises(DivekitError, match="number of images"):
        scenes.generate_bananas(-1)
    with pytest.raises(DivekitError, match="size"):
        scenes.generate_scenes(2, size=0)
    with pytest.raises(DivekitError, match="max_objects"):
        scenes.generate_scenes(2, size=32, max_objects=-1)
    assert scenes.generate_scenes(0, size=32)[0].shape == (0, 3, 32, 32)
    empty, targets = scenes.generate_scenes(3, size=32, max_objects=0)
    assert all(len(t["boxes"]) == 0 and t["masks"].shape == (0, 32, 32) for t in targets)


def test_banana_round_trip_through_the_book_layout(tmp_path):
    folder = scenes.write_banana_detection(tmp_path / "banana-detection", num_train=5,
                                           num_val=3, seed=2, size=64)
    header = (folder / "bananas_train" / "label.csv").read_text().splitlines()[0]
    assert header == "img_name,label,xmin,ymin,xmax,ymax"
    assert (folder / "bananas_val" / "images" / "2.png").is_file()
    data = banana_detection(data_dir=str(tmp_path), image_size=64)
    images, targets = scenes.generate_bananas(5, 64, 2)
    assert torch.equal(data.train.images, images)
    for read, made in zip(data.train.targets, targets, strict=True):
        assert torch.equal(read["boxes"], made["boxes"]) and read["labels"].tolist() == [0]
    val_images, _ = scenes.generate_bananas(3, 64, scenes._val_seed(2))
    assert torch.equal(data.test.images, val_images)


def test_bananas_dataset_serves_detection_batches():
    data = load_data("bananas", batch_size=4, num_train=10, num_val=6, image_size=64,
                     data_seed=1)
    assert data.task == "detection" and data.num_classes == 1 and data.class_names == ["banana"]
    assert data.input_shape == (3, 64, 64) and len(data.train) == 10 and len(data.test) == 6
    images, targets = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and len(targets) == 4
    # A batch read through __getitems__ equals the items read one by one.
    batch = data.train.__getitems__([3, 0, 7])
    for (image, target), i in zip(batch, [3, 0, 7], strict=True):
        one_image, one_target = data.train[i]
        assert torch.equal(image, one_image)
        assert torch.equal(target["boxes"], one_target["boxes"])
    torch.testing.assert_close(data.train[2][0], data.train.images[2].float() / 255)


def test_scenes_dataset_with_masks_and_held_out_split():
    data = load_data("scenes", batch_size=3, num_train=12, num_test=5, image_size=32,
                     max_objects=4, val_size=3)
    assert data.num_classes == 6 and list(data.class_names) == list(scenes.SCENE_CLASSES)
    assert len(data.train) == 9 and len(data.val) == 3 and len(data.test) == 5
    images, targets = next(iter(data.val_dataloader()))
    assert images.shape == (3, 3, 32, 32)
    for target in targets:
        assert target["masks"].shape == (len(target["labels"]), 32, 32)
    # Items are copies: editing a target does not change the data.
    image, target = data.test[0]
    target["boxes"] += 1
    assert not torch.equal(data.test[0][1]["boxes"], target["boxes"])
    assert detection_collate([data.test[0], data.test[1]])[0].shape == (2, 3, 32, 32)


def test_dataset_options_are_checked():
    with pytest.raises(DivekitError, match="num_train"):
        load_data("bananas", num_train=0)
    with pytest.raises(DivekitError, match="image_size"):
        load_data("scenes", image_size=-4)
