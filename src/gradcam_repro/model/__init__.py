"""Stage 2, model: the CIFAR ResNet-18 and its checkpoint contract (`resnet`), and training (`train`)."""
