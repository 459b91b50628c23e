"""Stage 5, report: figures (`figures`, `run_figures`) and markdown (`markdown`), pure functions of the
measured results."""
