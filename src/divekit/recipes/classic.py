"""Recipes for the linear, MLP and LeNet chapters on Fashion-MNIST, and the embedded demo."""

import dataclasses

from divekit.recipes import Recipe, add_recipe
from divekit.recipes import training_run as _run

add_recipe(Recipe(
    "digits-lenet", "7.6 LeNet (embedded data)",
    "The first run: LeNet with batch norm on scikit-learn's digits, no network needed",
    _run("lenet-bn", "digits", 64, max_epochs=12, lr=0.3, momentum=0.9, schedule="cosine"),
    target="test accuracy >= 0.95 in under a minute on a 2-core CPU",
))
add_recipe(Recipe(
    "linear-regression-synthetic", "3.5 Concise Linear Regression",
    "Linear regression on y = Xw + b + noise with minibatch SGD",
    _run("linear-regression", "synthetic-regression", 10, max_epochs=3, lr=0.03),
    book="final train loss 0.000103 / 0.000093; |w error| ~ 1e-4",
    target="|w - w_true| < 0.01, |b - b_true| < 0.01",
))
add_recipe(Recipe(
    "softmax-fashion-mnist", "4.5 Concise Softmax Regression",
    "Softmax regression on Fashion-MNIST, SGD lr 0.1, 10 epochs",
    _run("softmax-regression", "fashion-mnist", 256, max_epochs=10, lr=0.1),
    book="test acc 0.828-0.836", target="test acc >= 0.82",
))
add_recipe(Recipe(
    "mlp-fashion-mnist", "5.2 Implementation of Multilayer Perceptrons",
    "784-256-10 ReLU MLP on Fashion-MNIST, SGD lr 0.1, 10 epochs",
    _run("mlp", "fashion-mnist", 256, max_epochs=10, lr=0.1),
    book="test acc 0.823-0.838", target="test acc >= 0.82",
))
add_recipe(Recipe(
    "mlp-dropout-fashion-mnist", "5.6 Dropout",
    "784-256-256-10 MLP with dropout 0.2 / 0.5 on Fashion-MNIST, SGD lr 0.5, 10 epochs",
    _run("mlp-dropout", "fashion-mnist", 256, max_epochs=10, lr=0.5),
    book="test acc 0.836-0.857", target="test acc >= 0.83",
))
add_recipe(Recipe(
    "lenet-fashion-mnist", "7.6 Convolutional Neural Networks (LeNet)",
    "The course's LeNet (sigmoid, average pooling, Xavier init), SGD lr 0.9, batch 256, 10 epochs",
    _run("lenet", "fashion-mnist", 256, max_epochs=10, lr=0.9),
    book="test acc 0.779 (zh 2.0.0) / 0.789 (en 0.17.5)", target="test acc >= 0.76",
))
add_recipe(Recipe(
    "lenet-bn-fashion-mnist", "8.5 Batch Normalization",
    "LeNet with batch norm, SGD lr 1.0, batch 256, 10 epochs",
    _run("lenet-bn", "fashion-mnist", 256, max_epochs=10, lr=1.0),
    book="test acc 0.708 (zh 2.0.0) / 0.836 (en 0.17.5); 0.868 with lr 0.1, batch 128 (en 1.0.3)",
    target="test acc >= 0.80",
))
add_recipe(Recipe(
    "fashion-mnist-fast", "8.5 Batch Normalization (modern small CNN)",
    "small-cnn (conv-pool-BN-ReLU x3), one-cycle SGD + Nesterov, precision, memory format and "
    "compiling measured (amp auto): >= 0.91 in < 60 s",
    _run("small-cnn", "fashion-mnist", 256, data_options={"normalize": True}, max_epochs=5,
         lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle",
         amp="auto", channels_last="auto", compile="auto"),
    target="test acc >= 0.91 within 30 s of training on a 2-core CPU",
))
add_recipe(Recipe(
    "fashion-mnist-2min", "8.5 Batch Normalization (modern small CNN, speed-run tricks)",
    "small-cnn twice as wide (32-64-128), mirror augmentation and mirror test-time "
    "augmentation, one-cycle SGD + Nesterov, 12 epochs, amp auto: >= 0.93 in 2 minutes",
    dataclasses.replace(
        _run("small-cnn", "fashion-mnist", 256, model_options={"widths": [32, 64, 128]},
             data_options={"normalize": True}, max_epochs=12, lr=0.2, momentum=0.9,
             nesterov=True, weight_decay=5e-4, schedule="onecycle", amp="auto",
             channels_last="auto", compile="auto"),
        augment="flip", task_options={"flip_test": True}),
    target="test acc >= 0.93 within 2 minutes of training on a 2-core CPU",
))
