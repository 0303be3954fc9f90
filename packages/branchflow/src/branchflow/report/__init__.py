"""The pull-request report: metrics, params and stages compared with the base and the champion
(`compare`), the gate's rules (`gate`), the plots, the report document (`document`) and its
standard-library renderer (`render`), which the trusted comment job runs alone. Kept free of
imports: `python -S -m branchflow.report.render` runs from a bare source checkout."""
