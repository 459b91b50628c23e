"""Stage 6, pipeline: the side effects. Experiment specs and their folders (`spec`, `experiment`), the
commands (`run`, `compare`, `user_images`), atomic files, readers and the run lock (`store`)."""
