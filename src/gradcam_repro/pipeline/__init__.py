"""Stage 6, pipeline: the side effects. Experiment specs (`spec`), the folders results live in (`folders`),
training one spec (`experiment`), what commands print (`progress`), the Ray engine (`engine`, `parallel`) and
the commands (`run`, `compare`, `explain_files`, `audit`, `repair`, `study`, `view`)."""
