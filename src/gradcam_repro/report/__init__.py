"""Stage 5, report: how numbers read (`format`), figures (`figures`, `run_figures`, `audit_report`,
`study_report`), markdown (`markdown`, `repair_table`) and REPORT.html (`html`): pure functions of the
measured results."""
