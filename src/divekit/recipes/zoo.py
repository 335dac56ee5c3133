"""Recipes for the modern CNNs of chapter 8 (sections 8.1-8.7) at the book's scale.

The book trains each model for 10 epochs of plain SGD on Fashion-MNIST resized to 224 x 224
(AlexNet, VGG, NiN) or 96 x 96 (GoogLeNet, ResNet, DenseNet), with ``train_ch6``'s Xavier
initialisation, which the course's models here use too. These runs are meant for a GPU: one
epoch of AlexNet at 224 is 60,000 images at about 1 GMAC each.

Resizing happens per batch, on the device the batch is on (the ``resize`` option of
:func:`divekit.load_data`): the dataset stays 28 x 28 in memory (188 MB), where 60,000 images
stored at 224 x 224 would take 12 GB.
"""

from __future__ import annotations

from divekit.recipes import Recipe, add_recipe, training_run


def book_run(model: str, size: int, batch_size: int, lr: float) -> dict:
    """The book's chapter-8 setting: Fashion-MNIST at ``size``, 10 epochs of SGD."""
    return training_run(model, "fashion-mnist", batch_size, data_options={"resize": size},
                        max_epochs=10, lr=lr)


add_recipe(Recipe(
    "alexnet-fashion-mnist", "8.1 Deep Convolutional Neural Networks (AlexNet)",
    "The course's AlexNet on Fashion-MNIST resized to 224, SGD lr 0.01, batch 128, 10 epochs",
    book_run("alexnet", 224, 128, lr=0.01),
    book="test acc 0.883 (zh 2.0.0) / 0.882 (en 0.17.5); 0.830 with the same settings "
         "(en 1.0.3)",
    target="test acc >= 0.85 (GPU)",
))
add_recipe(Recipe(
    "vgg-fashion-mnist", "8.2 Networks Using Blocks (VGG)",
    "VGG-11 with a quarter of the channels at 224, SGD lr 0.05, batch 128, 10 epochs",
    book_run("vgg11-narrow", 224, 128, lr=0.05),
    book="test acc 0.920 (zh 2.0.0) / 0.922 (en 0.17.5); 0.896 with lr 0.01 (en 1.0.3)",
    target="test acc >= 0.89 (GPU)",
))
add_recipe(Recipe(
    "nin-fashion-mnist", "8.3 Network in Network (NiN)",
    "NiN at 224, SGD lr 0.1, batch 128, 10 epochs",
    book_run("nin", 224, 128, lr=0.1),
    book="test acc 0.790 (zh 2.0.0) / 0.785 (en 0.17.5); 0.865 with lr 0.05 (en 1.0.3)",
    target="test acc >= 0.75 (GPU)",
))
add_recipe(Recipe(
    "googlenet-fashion-mnist", "8.4 Multi-Branch Networks (GoogLeNet)",
    "GoogLeNet at 96, SGD lr 0.1, batch 128, 10 epochs",
    book_run("googlenet", 96, 128, lr=0.1),
    book="test acc 0.886 (zh 2.0.0) / 0.883 (en 0.17.5); 0.802 with lr 0.01 (en 1.0.3)",
    target="test acc >= 0.85 (GPU)",
))
add_recipe(Recipe(
    "resnet18-fashion-mnist", "8.6 Residual Networks (ResNet) and ResNeXt",
    "The course's ResNet-18 at 96, SGD lr 0.05, batch 256, 10 epochs",
    book_run("resnet18-d2l", 96, 256, lr=0.05),
    book="test acc 0.893 (zh 2.0.0) / 0.918 (en 0.17.5); 0.903 with lr 0.01, batch 128 "
         "(en 1.0.3)",
    target="test acc >= 0.88 (GPU)",
))
add_recipe(Recipe(
    "densenet-fashion-mnist", "8.7 Densely Connected Networks (DenseNet)",
    "The course's DenseNet (4 blocks of 4 layers, growth 32) at 96, SGD lr 0.1, batch 256, "
    "10 epochs",
    book_run("densenet-d2l", 96, 256, lr=0.1),
    book="test acc 0.885 (zh 2.0.0) / 0.821 (en 0.17.5); 0.893 with lr 0.01, batch 128 "
         "(en 1.0.3)",
    target="test acc >= 0.82 (GPU)",
))


def cpu_run(model: str, epochs: int) -> dict:
    """Native 28x28 Fashion-MNIST, standardised: one-cycle SGD with Nesterov momentum; the
    precision, memory format and compiling measured on the machine (amp auto)."""
    return training_run(model, "fashion-mnist", 256, data_options={"normalize": True},
                        max_epochs=epochs, lr=0.2, momentum=0.9, nesterov=True,
                        weight_decay=5e-4, schedule="onecycle", amp="auto",
                        channels_last="auto", compile="auto")


add_recipe(Recipe(
    "resnet-cpu-fashion-mnist", "8.6 Residual Networks (ResNet) and ResNeXt (CPU-sized)",
    "resnet-cpu (16-32-64, one basic block per stage) at 28x28, one-cycle SGD, 8 epochs",
    cpu_run("resnet-cpu", 8),
    target="test acc >= 0.92 within 10 minutes of training on a 2-core CPU",
))
add_recipe(Recipe(
    "densenet-cpu-fashion-mnist", "8.7 Densely Connected Networks (DenseNet) (CPU-sized)",
    "densenet-cpu (3 blocks of 2 layers, growth 12) at 28x28, one-cycle SGD, 5 epochs",
    cpu_run("densenet-cpu", 5),
    target="test acc >= 0.91 within 10 minutes of training on a 2-core CPU",
))
