"""Stage 2, model: the CIFAR ResNet-18 and its checkpoint contract (`resnet`), training (`train`) and
repair's training parts (`finetune`: RRR fine-tuning, last-layer refit)."""
