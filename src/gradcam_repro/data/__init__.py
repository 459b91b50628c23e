"""Stage 1, data: datasets as in-memory uint8 tensors (`images`, `cifar10`, `shapes`), the registry that
names them (`registry`), the one artefact type (`artefact`) and the planted shortcut (`bias`)."""
